"""Real multi-process CPU runs for the tests: 2 processes on loopback (gloo collectives), each
with its own device count, started as `python -m jaxgpt.train` with the coordinator in env."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np

from jaxgpt import metrics as metrics_lib

REPO = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def train_args(corpus: Path, workdir: Path | str, steps: int = 20, *extra: str) -> list[str]:
    """A tiny training command; the data dir sits beside a local workdir (a bucket workdir's
    runs give --config.data.path in `extra`)."""
    data = f"{Path(workdir).parent / 'data'}" if isinstance(workdir, Path) else f"{workdir}-data"
    return [
        sys.executable, "-m", "jaxgpt.train", "--config", "configs/tiny.py",
        "--workdir", str(workdir),
        f"--config.data.sources=text:{corpus}", f"--config.data.path={data}",
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


def losses(workdir: Path | str) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in metrics_lib.read_metrics(workdir) if "loss" in r}


def assert_same_losses(a: dict[int, float], b: dict[int, float], steps) -> None:
    got = np.array([b[s] for s in steps])
    want = np.array([a[s] for s in steps])
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)
