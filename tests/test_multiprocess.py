"""Real multi-process runs on CPU: 2 processes × 2 devices (gloo collectives, loopback
coordinator) equal 1 process × 4 devices; checkpoints restore onto other process counts and
meshes; a dead process stops the job."""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from jaxgpt import metrics as metrics_lib

REPO = Path(__file__).resolve().parent.parent
pytestmark = [pytest.mark.slow, pytest.mark.e2e]  # starts processes


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def train_args(corpus: Path, workdir: Path, steps: int = 20, *extra: str) -> list[str]:
    return [
        sys.executable, "-m", "jaxgpt.train", "--config", "configs/tiny.py",
        "--workdir", str(workdir),
        f"--config.data.sources=text:{corpus}", f"--config.data.path={workdir.parent / 'data'}",
        "--config.data.tokenizer.model_type=char", "--config.data.tokenizer.vocab_size=0",
        "--config.model.n_layer=2", "--config.model.n_head=2", "--config.model.n_embd=32",
        "--config.model.block_size=32", f"--config.train.steps={steps}",
        "--config.train.batch_size=8", "--config.train.log_every=1",
        "--config.train.eval_every=10", "--config.train.eval_tokens=1024",
        "--config.train.sample_tokens=4", "--config.opt.warmup_steps=2",
        "--config.opt.lr=3e-3", "--config.ckpt.every=10", "--config.ckpt.async_save=False",
        "--config.dist.heartbeat_timeout_s=10", *extra,
    ]  # fmt: skip


def start(args: list[str], devices: int, log: Path, process: tuple[int, int, int] | None = None):
    env = {
        **os.environ,
        "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}",
        "JAX_PLATFORMS": "cpu",
    }
    for key in ("JAXGPT_COORDINATOR", "JAXGPT_NUM_PROCESSES", "JAXGPT_PROCESS_ID"):
        env.pop(key, None)
    if process is not None:
        port, pid, count = process
        env.update(
            JAXGPT_COORDINATOR=f"127.0.0.1:{port}",
            JAXGPT_NUM_PROCESSES=str(count),
            JAXGPT_PROCESS_ID=str(pid),
        )
    return subprocess.Popen(args, cwd=REPO, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT)


def run(args: list[str], devices: int, log: Path, timeout: int = 400) -> None:
    proc = start(args, devices, log)
    assert proc.wait(timeout) == 0, log.read_text()[-3000:]


def run_two_processes(args: list[str], tmp: Path, timeout: int = 400) -> None:
    port = free_port()
    procs = [start(args, 2, tmp / f"proc{i}.log", (port, i, 2)) for i in range(2)]
    codes = [p.wait(timeout) for p in procs]
    assert codes == [0, 0], "\n".join((tmp / f"proc{i}.log").read_text()[-3000:] for i in range(2))


def losses(workdir: Path) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in metrics_lib.read_metrics(workdir) if "loss" in r}


def assert_same_losses(a: dict[int, float], b: dict[int, float], steps) -> None:
    got = np.array([b[s] for s in steps])
    want = np.array([a[s] for s in steps])
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)


def resume_copy(source: Path, target: Path, step: int) -> Path:
    """A copy of a workdir as it was at checkpoint `step` (later checkpoints removed)."""
    shutil.copytree(source, target)
    for ckpt in (target / "checkpoints").iterdir():
        if ckpt.name.isdigit() and int(ckpt.name) > step:
            shutil.rmtree(ckpt)
    return target


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """1 process × 4 devices, 20 steps, fsdp=4: the uninterrupted run everything is compared to."""
    tmp = tmp_path_factory.mktemp("mp")
    corpus = tmp / "corpus.txt"
    words = "the quick brown fox jumps over a lazy dog while wizards hex kings".split()
    corpus.write_text(
        "\n".join(" ".join(words[(i * 7 + j) % len(words)] for j in range(9)) for i in range(3000))
    )
    workdir = tmp / "ref"
    run(
        train_args(corpus, workdir, 20, "--config.mesh.data=1", "--config.mesh.fsdp=4"),
        4,
        tmp / "ref.log",
    )
    return tmp, corpus, workdir


def test_two_processes_equal_one(reference):
    tmp, corpus, ref = reference
    workdir = tmp / "two"
    run_two_processes(
        train_args(corpus, workdir, 20, "--config.mesh.data=1", "--config.mesh.fsdp=4"), tmp
    )
    assert_same_losses(losses(ref), losses(workdir), range(1, 21))
    log0 = (tmp / "proc0.log").read_text()
    assert "on 4 cpu device(s)" in log0 and "summary" in log0
    assert "summary" not in (tmp / "proc1.log").read_text()  # human output from process 0 only
    assert (workdir / "checkpoints" / "20").is_dir()


def test_restore_into_one_device(reference):
    """The 4-device checkpoint at step 10 continues on 1 process × 1 device."""
    tmp, corpus, ref = reference
    workdir = resume_copy(ref, tmp / "one-device", 10)
    run(
        train_args(corpus, workdir, 20, "--config.mesh.data=1", "--config.mesh.fsdp=1"),
        1,
        tmp / "one.log",
    )
    assert "resumed from" in (tmp / "one.log").read_text()
    assert_same_losses(losses(ref), losses(workdir), range(11, 21))


def test_restore_onto_a_different_mesh(reference):
    """fsdp=4 → data=2 × tensor=2, same 4 devices: the same losses as the uninterrupted run."""
    tmp, corpus, ref = reference
    workdir = resume_copy(ref, tmp / "remesh", 10)
    args = train_args(
        corpus,
        workdir,
        20,
        "--config.mesh.data=2",
        "--config.mesh.fsdp=1",
        "--config.mesh.tensor=2",
    )
    run(args, 4, tmp / "remesh.log")
    assert_same_losses(losses(ref), losses(workdir), range(11, 21))


def test_config_mismatch_between_processes_fails(reference):
    tmp, corpus, _ = reference
    port = free_port()
    base = train_args(corpus, tmp / "mismatch", 5)
    procs = [
        start([*base, f"--config.opt.lr={lr}"], 2, tmp / f"mm{i}.log", (port, i, 2))
        for i, lr in enumerate((1e-3, 2e-3))
    ]
    codes = [p.wait(300) for p in procs]
    assert all(c != 0 for c in codes)
    assert "differs between processes" in (tmp / "mm0.log").read_text()


def test_a_dead_process_stops_the_other(reference):
    """Kill process 1 mid-run: process 0 exits non-zero within a bounded time, not hanging."""
    tmp, corpus, _ = reference
    port = free_port()
    workdir = tmp / "killed"
    args = train_args(corpus, workdir, 100_000)
    procs = [start(args, 2, tmp / f"kill{i}.log", (port, i, 2)) for i in range(2)]
    deadline = time.time() + 300
    while time.time() < deadline and len(losses(workdir)) < 3:
        assert procs[0].poll() is None, (tmp / "kill0.log").read_text()[-3000:]
        time.sleep(0.5)
    procs[1].send_signal(signal.SIGKILL)
    killed_at = time.time()
    try:
        code = procs[0].wait(timeout=120)
    finally:
        if procs[0].poll() is None:
            procs[0].kill()
    assert code != 0
    print(f"process 0 exited with {code} {time.time() - killed_at:.1f}s after process 1 died")


def test_divergence_stops_every_process_at_the_same_step(reference):
    """lr 1e30 makes the loss NaN within a few steps: both processes stop at the same step with
    the message and exit 1; no checkpoint is written (the first would be at step 10)."""
    tmp, corpus, _ = reference
    port = free_port()
    workdir = tmp / "diverged"
    args = train_args(corpus, workdir, 20, "--config.opt.lr=1e30", "--config.opt.warmup_steps=0")
    procs = [start(args, 2, tmp / f"nan{i}.log", (port, i, 2)) for i in range(2)]
    codes = [p.wait(300) for p in procs]
    logs = [(tmp / f"nan{i}.log").read_text() for i in range(2)]
    assert codes == [1, 1], "\n".join(log[-3000:] for log in logs)
    stops = [re.search(r"error: step (\d+): the loss or gradient norm is NaN", log) for log in logs]
    assert all(stops), "\n".join(log[-3000:] for log in logs)
    assert stops[0].group(1) == stops[1].group(1)
    assert not [p for p in (workdir / "checkpoints").iterdir() if p.name.isdigit()]
