"""Real multi-process runs on CPU: 2 processes × 2 devices (gloo collectives, loopback
coordinator) equal 1 process × 4 devices; checkpoints restore onto other process counts and
meshes; a dead process stops the job."""

from __future__ import annotations

import re
import shutil
import signal
import time
from pathlib import Path

import pytest

from tests.multiprocess_harness import (
    assert_same_losses,
    free_port,
    losses,
    run,
    run_two_processes,
    start,
    train_args,
)

pytestmark = [pytest.mark.slow, pytest.mark.e2e]  # starts processes


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
