"""End-to-end training: loss goes down, resume is bitwise, preemption, metrics, clear errors."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest

from jaxgpt import metrics as metrics_lib
from jaxgpt.run.loop import train
from jaxgpt.workdir import restore_params
from tests.helpers import losses, tiny_config

pytestmark = pytest.mark.slow  # trains or exports real runs; not in the fast subset

REPO = Path(__file__).resolve().parent.parent


def test_loss_goes_down_and_outputs_are_written(small_corpus, tmp_path):
    """A short run learns, and leaves metrics, TensorBoard events, plot, config and summary."""
    workdir = tmp_path / "run"
    summary = train(
        tiny_config(small_corpus, **{"train.steps": 60, "train.eval_every": 0}), workdir
    )
    records = metrics_lib.read_metrics(workdir)
    train_lines = [r for r in records if "loss" in r]
    keys = (
        "step",
        "loss",
        "lr",
        "grad_norm",
        "tokens_per_s",
        "step_time_s",
        "mfu",
        "input_wait_frac",
    )
    for key in keys:
        assert key in train_lines[0], key
    assert train_lines[0]["mfu"] is None  # CPU: no known peak
    first = np.mean([r["loss"] for r in train_lines[:5]])
    last = np.mean([r["loss"] for r in train_lines[-5:]])
    assert last < first - 0.5, (first, last)
    evals = [r for r in records if "eval_loss" in r]
    assert evals and evals[-1]["eval_ppl"] == pytest.approx(np.exp(evals[-1]["eval_loss"]), 1e-4)
    assert summary.steps == 60 and summary.eval_loss == evals[-1]["eval_loss"]
    for name in ("loss.png", "config.json", "tokenizer.model", "summary.json"):
        assert (workdir / name).is_file(), name
    assert list((workdir / "tensorboard").glob("events.out.tfevents.*"))
    config = json.loads((workdir / "config.json").read_text())
    assert config["model"]["vocab_size"] > 0  # the resolved vocabulary is recorded
    assert (workdir / "checkpoints" / "60").is_dir()


def test_resume_is_bitwise(small_corpus, tmp_path):
    """N steps == N/2 steps + restart + N/2 steps: identical losses and parameters."""
    full, split = tmp_path / "full", tmp_path / "split"
    train(tiny_config(small_corpus), full)
    first = train(tiny_config(small_corpus), split, stop_at=10)
    assert first.steps == 10 and (split / "checkpoints" / "10").is_dir()
    # Only on the ckpt.every=5 interval: no extra checkpoint at the run's first step.
    assert sorted(p.name for p in (split / "checkpoints").iterdir()) == ["10", "5"]
    resumed = train(tiny_config(small_corpus), split)
    assert resumed.start_step == 10 and resumed.steps == 20
    a, b = losses(full), losses(split)
    assert sorted(a) == sorted(b) == list(range(1, 21))
    assert all(a[s] == b[s] for s in a), {s: (a[s], b[s]) for s in a if a[s] != b[s]}
    assert resumed.eval_loss == train(tiny_config(small_corpus), full).eval_loss  # no-op rerun

    params = [restore_params(d, 20)[0] for d in (full, split)]

    same = jax.tree.map(lambda x, y: bool(np.array_equal(x, y)), *params)
    assert all(jax.tree.leaves(same))


def test_checkpoint_that_does_not_match_config_fails_clearly(small_corpus, tmp_path):
    train(tiny_config(small_corpus, **{"train.steps": 5}), tmp_path)
    bigger = tiny_config(small_corpus, **{"train.steps": 10, "model.n_embd": 64})
    with pytest.raises(ValueError, match="does not match the model config") as err:
        train(bigger, tmp_path)
    assert "params/h_0/attn/c_attn/kernel: checkpoint (32, 3, 2, 16), config (64, 3, 2, 32)" in str(
        err.value
    )


def test_epochs_derive_the_steps_and_the_schedule(small_corpus, tmp_path, capsys):
    """train.epochs=2 trains ceil(2 · windows / batch) steps, says so, and decays the learning
    rate over exactly those steps; a rerun finds the run finished."""
    workdir = tmp_path / "run"
    cfg = tiny_config(
        small_corpus, **{"train.epochs": 2, "train.eval_every": 0, "ckpt.every": 1000}
    )
    summary = train(cfg, workdir)
    meta = json.loads((workdir / "data" / "metadata.json").read_text())
    windows = (meta["splits"]["train"]["tokens"] - 1) // 32  # block_size 32
    steps = -(-2 * windows // 16)  # batch 16
    assert steps != 20 and summary.steps == steps  # not train.steps
    assert f"train.epochs=2: {steps:,} steps of 16 sequences" in capsys.readouterr().out
    last = [r for r in metrics_lib.read_metrics(workdir) if "lr" in r][-1]
    assert last["step"] == steps
    # make_schedule(opt, steps): the last step's learning rate is near min_lr, not mid-decay.
    assert last["lr"] == pytest.approx(cfg.opt.min_lr, rel=0.05)
    assert train(cfg, workdir).start_step == steps


def test_batch_not_divisible_by_data_parallel_size(small_corpus, tmp_path):
    with pytest.raises(ValueError, match="divisible by the data-parallel size 8"):
        train(tiny_config(small_corpus, **{"train.batch_size": 12}), tmp_path)


def test_missing_data_path_names_it(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"no/such/file\.txt"):
        train(tiny_config(Path("no/such/file.txt")), tmp_path)


def test_microbatches_in_training(small_corpus, tmp_path):
    """Gradient accumulation runs inside the loop (equivalence is tested in test_sharding)."""
    summary = train(
        tiny_config(
            small_corpus, **{"train.steps": 4, "train.batch_size": 32, "train.microbatches": 2}
        ),
        tmp_path,
    )
    assert summary.steps == 4 and np.isfinite(summary.final_loss)


def _run_cli(args: list[str], **kw) -> subprocess.Popen:
    env = {**os.environ, "XLA_FLAGS": "", "JAX_PLATFORMS": "cpu"}
    return subprocess.Popen(
        [sys.executable, "-m", "jaxgpt.train", *args],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        **kw,
    )


def _cli_args(corpus: Path, workdir: Path, steps: int) -> list[str]:
    return [
        "--config",
        "configs/tiny.py",
        "--workdir",
        str(workdir),
        f"--config.data.sources=text:{corpus}",
        "--config.data.tokenizer.model_type=char",
        "--config.data.tokenizer.vocab_size=0",
        "--config.model.n_layer=1",
        "--config.model.n_embd=32",
        "--config.model.block_size=32",
        f"--config.train.steps={steps}",
        "--config.train.log_every=1",
        "--config.train.eval_tokens=1024",
        "--config.ckpt.every=1000",
    ]


@pytest.mark.slow
@pytest.mark.e2e
def test_sigterm_saves_a_checkpoint_and_resume_continues(small_corpus, tmp_path):
    """SIGTERM mid-run checkpoints the current step and exits; rerunning resumes from it."""
    workdir = tmp_path / "run"
    proc = _run_cli(_cli_args(small_corpus, workdir, steps=100_000))
    deadline = time.time() + 240
    while time.time() < deadline and len(metrics_lib.read_metrics(workdir)) < 5:
        assert proc.poll() is None, proc.stdout.read()
        time.sleep(0.5)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 143, out
    assert "SIGTERM: saved checkpoint" in out
    saved = sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit())
    assert saved and saved[-1] >= 5
    resumed = _run_cli(_cli_args(small_corpus, workdir, steps=saved[-1] + 3))
    out, _ = resumed.communicate(timeout=240)
    assert resumed.returncode == 0, out
    assert "resumed from" in out and f"{saved[-1]} → {saved[-1] + 3}" in out
