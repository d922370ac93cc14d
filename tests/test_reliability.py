"""Long-run faults on the training side: non-finite steps, unreadable checkpoints, old
checkpoints, metrics that stay exactly-once across restarts (docs/reliability.md)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest

from jaxgpt import metrics as metrics_lib
from jaxgpt.checkpoint import Checkpointer, CheckpointWriteError, UnreadableCheckpointsError
from jaxgpt.model import GPT, GPTConfig
from jaxgpt.run.loop import train
from jaxgpt.run.nonfinite import NonFiniteError
from jaxgpt.state import TrainState, train_step
from jaxgpt.workdir import restore_params
from tests.conftest import REPO
from tests.helpers import losses, tiny_config

DIVERGE = {"opt.lr": 1e30, "opt.warmup_steps": 0}


def _tiny_state() -> tuple[GPT, optax.GradientTransformation, TrainState, jax.Array]:
    model = GPT(GPTConfig(vocab_size=16, block_size=8, n_layer=1, n_head=2, n_embd=16))
    tokens = jnp.arange(2 * 9, dtype=jnp.int32).reshape(2, 9) % 16
    params = nn.unbox(model.init(jax.random.key(0), tokens[:, :-1])["params"])
    tx = optax.adam(1e-2)
    return model, tx, TrainState.fresh(params, tx.init(params)), tokens


def _step(model, tx, state, tokens):
    return train_step(
        state,
        tokens,
        jax.random.key(1),
        model=model,
        tx=tx,
        schedule=lambda s: 1e-2,
        microbatches=1,
        dropout=False,
    )


def test_a_nonfinite_step_is_not_applied_and_is_counted():
    """A NaN loss leaves params and optimizer state bit for bit as they were, advances the
    step, and counts the skip; the next good step applies and ends the run of skips."""
    model, tx, state, tokens = _tiny_state()
    good, metrics = _step(model, tx, state, tokens)
    assert int(good.skipped) == 0 and bool(jnp.isfinite(metrics["loss"]))
    poisoned_params = jax.tree.map(lambda x: x, good.params)
    poisoned_params["wte"]["embedding"] = good.params["wte"]["embedding"].at[0, 0].set(jnp.nan)
    poisoned = good.replace(params=poisoned_params)
    after, metrics = _step(model, tx, poisoned, tokens)
    assert not bool(jnp.isfinite(metrics["loss"]))
    assert int(after.step) == 2 and int(after.skipped) == 1 and int(metrics["skipped"]) == 1
    assert int(after.skipped_in_row) == 1 and int(after.last_skipped) == 2
    same = jax.tree.map(
        lambda a, b: bool(np.array_equal(a, b, equal_nan=True)),
        (after.params, after.opt_state),
        (poisoned.params, poisoned.opt_state),
    )
    assert all(jax.tree.leaves(same))
    recovered, _ = _step(model, tx, after.replace(params=good.params), tokens)
    assert int(recovered.skipped) == 1 and int(recovered.skipped_in_row) == 0
    assert int(recovered.last_skipped) == 2 and int(recovered.step) == 3


def _checkpoint_steps(workdir: Path) -> list[int]:
    return sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit())


def _all_finite(workdir: Path, step: int) -> bool:
    params, _ = restore_params(workdir, step)
    return all(bool(np.isfinite(x).all()) for x in jax.tree.leaves(params))


def test_divergence_stops_the_run_and_keeps_the_good_checkpoints(small_corpus, tmp_path):
    """Default on_nonfinite=stop: a run that diverges at step 8 stops there with an error that
    names the step and the knobs; the checkpoint of step 5 stays the latest, and finite."""
    workdir = tmp_path / "run"
    train(tiny_config(small_corpus, **{"train.steps": 5}), workdir)
    cfg = tiny_config(small_corpus, **{"train.steps": 20, **DIVERGE})
    with pytest.raises(NonFiniteError, match=r"step \d+: the loss or gradient norm is NaN") as e:
        train(cfg, workdir)
    assert "opt.lr" in str(e.value) and "on_nonfinite=skip" in str(e.value)
    assert _checkpoint_steps(workdir) == [5] and _all_finite(workdir, 5)
    summary = json.loads((workdir / "summary.json").read_text())
    assert summary["steps"] < 20


def test_skip_policy_goes_on_then_stops_after_max_skipped(small_corpus, tmp_path):
    """on_nonfinite=skip: skipped updates never reach a checkpoint; max_skipped in a row
    ends the run with an error; every saved checkpoint is finite."""
    workdir = tmp_path / "run"
    cfg = tiny_config(
        small_corpus,
        **{"train.steps": 40, "train.on_nonfinite": "skip", "train.max_skipped": 4, **DIVERGE},
    )
    with pytest.raises(NonFiniteError, match="steps in a row had a NaN"):
        train(cfg, workdir)
    records = [r for r in metrics_lib.read_metrics(workdir) if "skipped" in r]
    assert records[-1]["skipped"] >= 4
    for step in _checkpoint_steps(workdir):
        assert _all_finite(workdir, step), step


def _corrupt(step_dir: Path) -> None:
    """Zero every OCDBT data file, keeping its length (what a crash before the data reached the
    disk leaves on file systems with delayed allocation).

    Every file, merged B-tree and per-process data alike: which arrays land in which file, and
    where in it, depends on the order the writes finished, so cutting files in half left the
    params readable in one CI run (their bytes all in the halves kept)."""
    data_files = [*step_dir.glob("*/d/*"), *step_dir.glob("*/ocdbt.process_*/d/*")]
    assert data_files, f"no OCDBT data files under {step_dir}"
    for data in data_files:
        data.write_bytes(bytes(data.stat().st_size))


def test_an_unreadable_checkpoint_falls_back_to_the_previous_one(small_corpus, tmp_path, capsys):
    """The latest checkpoint's data files cut in half: the run names it in one line, moves it aside,
    resumes from the one before, and the losses equal an uninterrupted run's."""
    workdir, reference = tmp_path / "run", tmp_path / "reference"
    train(tiny_config(small_corpus, **{"train.steps": 15}), reference)
    train(tiny_config(small_corpus, **{"train.steps": 15}), workdir, stop_at=10)
    _corrupt(workdir / "checkpoints" / "10")
    capsys.readouterr()
    summary = train(tiny_config(small_corpus, **{"train.steps": 15}), workdir)
    out = capsys.readouterr().out
    bad = [line for line in out.splitlines() if "cannot be read" in line]
    assert len(bad) == 1 and "checkpoints/10" in bad[0], out
    assert summary.start_step == 5 and "resumed from" in out
    assert (tmp_path / "run" / "checkpoints.unreadable" / "10").is_dir()
    assert _checkpoint_steps(workdir) == [5, 10, 15]
    a, b = losses(reference), losses(workdir)
    assert sorted(b) == list(range(1, 16)) and all(a[s] == b[s] for s in a)


def test_no_readable_checkpoint_fails_with_what_to_do(small_corpus, tmp_path):
    workdir = tmp_path / "run"
    train(tiny_config(small_corpus, **{"train.steps": 10}), workdir)
    for step in (5, 10):
        _corrupt(workdir / "checkpoints" / str(step))
    with pytest.raises(UnreadableCheckpointsError, match="none of the 2 checkpoint") as e:
        train(tiny_config(small_corpus, **{"train.steps": 15}), workdir)
    assert "step 10:" in str(e.value) and "step 5:" in str(e.value)
    assert "start this run over" in str(e.value)
    assert _checkpoint_steps(workdir) == [5, 10]  # nothing moved when nothing can be used


def test_a_checkpoint_without_skip_counters_still_restores(tmp_path):
    """Checkpoints written before the skip counters and checksums existed load, counters at 0;
    the params-only restore reads them too."""
    _, _, state, _ = _tiny_state()
    old = {"step": state.step + 7, "params": state.params, "opt_state": state.opt_state}
    # The layout jaxgpt wrote before: one item, no checksums, no counters.
    writer = ocp.CheckpointManager(
        tmp_path / "checkpoints", item_handlers=ocp.StandardCheckpointHandler()
    )
    writer.save(7, args=ocp.args.StandardSave(old), force=True)
    writer.wait_until_finished()
    writer.close()
    ckpt = Checkpointer(tmp_path, every=1, keep=2, async_save=False)
    abstract = jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), state
    )
    restored, step = ckpt.restore_latest(abstract)
    ckpt.close()
    assert step == 7 and int(restored.step) == 7 and int(restored.skipped) == 0
    same = jax.tree.map(lambda a, b: bool(np.array_equal(a, b)), restored.params, state.params)
    assert all(jax.tree.leaves(same))
    assert restore_params(tmp_path)[1] == 7


def test_rerun_after_a_kill_before_the_first_checkpoint_logs_each_step_once(small_corpus, tmp_path):
    """Lines of a run killed before its first checkpoint (and a torn last line) are dropped
    when the rerun starts over; TensorBoard shows each step once too."""
    workdir = tmp_path / "run"
    workdir.mkdir()
    lines = [json.dumps({"step": s, "loss": 9.0}) for s in range(1, 4)]
    (workdir / "metrics.jsonl").write_text("\n".join(lines) + '\n{"step": 4, "lo')
    train(tiny_config(small_corpus, **{"train.steps": 10}), workdir)
    steps = [r["step"] for r in metrics_lib.read_metrics(workdir) if "loss" in r]
    assert steps == list(range(1, 11))
    assert all(r.get("loss") != 9.0 for r in metrics_lib.read_metrics(workdir))


def test_a_resumed_run_logs_each_step_once_in_metrics_and_tensorboard(small_corpus, tmp_path):
    """Steps 6-8 were logged, then the run resumes from step 5 (checkpoint 8 gone): the
    redone steps replace the old lines, and TensorBoard purges its old events for them."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    workdir = tmp_path / "run"
    train(tiny_config(small_corpus, **{"train.steps": 8}), workdir)
    shutil.rmtree(workdir / "checkpoints" / "8")
    train(tiny_config(small_corpus, **{"train.steps": 10}), workdir)
    logged = [r["step"] for r in metrics_lib.read_metrics(workdir) if "loss" in r]
    assert logged == list(range(1, 11))
    acc = EventAccumulator(str(workdir / "tensorboard"))
    acc.Reload()
    steps = [e.step for e in acc.Scalars("loss")]
    assert steps == list(range(1, 11)), steps


def _disk_bytes(directory: Path) -> int:
    """Space the files under `directory` take on disk (whole blocks, as tmpfs counts them)."""
    return sum(p.stat().st_blocks * 512 for p in directory.rglob("*") if p.is_file())


@pytest.fixture
def small_disk(tmp_path):
    """A 16 MB tmpfs: a real full disk for Orbax's and our own writes (needs root)."""
    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(disk)],
        capture_output=True,
        text=True,
    )
    if mounted.returncode:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {mounted.stderr.strip()}")
    yield disk
    subprocess.run(["umount", "-l", str(disk)], check=False)


def test_a_full_disk_fails_clearly_and_a_rerun_after_freeing_space_resumes(
    small_corpus, tmp_path, small_disk
):
    """The workdir's disk fills up at the second checkpoint: the run fails with one message
    that says the committed checkpoints are intact and what to do; they restore; after space is
    freed the same command resumes and logs the same losses as a run that never failed."""
    settings = {"train.steps": 20, "ckpt.keep": 1, "data.path": str(tmp_path / "data")}
    reference = tmp_path / "reference"
    train(tiny_config(small_corpus, **settings), reference)
    workdir = small_disk / "run"
    train(tiny_config(small_corpus, **settings), workdir, stop_at=5)
    # Then fill the disk but for half a checkpoint, measured now rather than predicted (sizes
    # vary with compression and Orbax's background deletes): the small writes before the next
    # checkpoint fit, the checkpoint does not.
    checkpoint = _disk_bytes(workdir / "checkpoints" / "5")
    filler = small_disk / "filler"
    filler.write_bytes(bytes(shutil.disk_usage(small_disk).free - checkpoint // 2))
    with pytest.raises((CheckpointWriteError, OSError)) as e:
        train(tiny_config(small_corpus, **settings), workdir)
    message = str(e.value)
    assert "No space left on device" in message and "rerun the same command" in message
    committed = _checkpoint_steps(workdir)
    assert committed == [5], message
    assert _all_finite(workdir, 5)
    filler.unlink()
    summary = train(tiny_config(small_corpus, **settings), workdir)
    assert summary.start_step == 5 and summary.steps == 20
    a, b = losses(reference), losses(workdir)
    logged = [r["step"] for r in metrics_lib.read_metrics(workdir) if "loss" in r]
    assert logged == list(range(1, 21)) and all(a[s] == b[s] for s in a)


def test_readers_fall_back_from_unreadable_params_without_moving_them(small_corpus, tmp_path):
    """generate, evaluate, export, serve and init_from=workdir: read params through
    restore_params: an unreadable best/ or latest checkpoint is named and the next one used;
    a step asked for by number is not replaced; when none can be read, the error lists them."""
    workdir = tmp_path / "run"
    cfg = tiny_config(small_corpus, **{"train.steps": 10, "ckpt.keep_best": True})
    train(cfg, workdir)
    assert restore_params(workdir)[1] == 10  # best (step 10, the last eval) first
    _corrupt(workdir / "best" / "10")
    _corrupt(workdir / "checkpoints" / "10")
    warnings: list[str] = []
    _, step = restore_params(workdir, warn=warnings.append)
    assert step == 5 and len(warnings) == 2
    assert "best/10 cannot be read" in warnings[0] and "checkpoints/10" in warnings[1]
    assert (workdir / "checkpoints" / "10").is_dir()  # readers never move files
    with pytest.raises(Exception, match="params"):
        restore_params(workdir, 10)  # asked for by number: no silent substitute
    # On the command line that is the two lines naming them, nothing more: neither the reports
    # of the reads Orbax abandoned ("Event loop is closed", dozens) nor its warnings.
    done = subprocess.run(
        [sys.executable, "-m", "jaxgpt.generate", "--workdir", str(workdir), "--max_tokens", "4"],
        cwd=REPO, env={**os.environ, "XLA_FLAGS": "", "JAX_PLATFORMS": "cpu"},
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0 and done.stdout, done.stderr
    said = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(said) == 2 and all("cannot be read" in line for line in said), done.stderr
    _corrupt(workdir / "checkpoints" / "5")
    with pytest.raises(UnreadableCheckpointsError, match="none of the 3 checkpoint"):
        restore_params(workdir, warn=warnings.append)


def test_a_rerun_that_redoes_the_best_eval_replaces_its_params(small_corpus, tmp_path):
    """Stopped after step 10's eval saved best/10 but before checkpoint 10 was committed (here:
    removed): the rerun resumes from 5, redoes the eval at 10 and saves best/10 again, the same
    params bit for bit (it used to fail with StepAlreadyExistsError)."""
    workdir = tmp_path / "run"
    settings = {"train.steps": 10, "ckpt.keep_best": True}
    train(tiny_config(small_corpus, **settings), workdir)
    first, step = restore_params(workdir)
    assert step == 10
    shutil.rmtree(workdir / "checkpoints" / "10")
    summary = train(tiny_config(small_corpus, **settings), workdir)
    assert summary.start_step == 5
    again, step = restore_params(workdir)
    kept = sorted(p.name for p in (workdir / "best").iterdir())
    assert step == 10 and kept == ["10", "best.json"]
    assert jax.tree.all(jax.tree.map(np.array_equal, first, again))


def _flip(step_dir: Path) -> None:
    """Invert four elements' bits in every params array of a checkpoint: chunks that still
    parse, holding other numbers (what a bad disk leaves; TensorStore alone does not notice).

    The chunks are rewritten through TensorStore rather than by XOR-ing bytes of the data files:
    those are zstd-compressed, and whether a flipped byte there decodes to other numbers or
    fails to decompress depends on how the (machine-dependent) values compressed."""
    import tensorstore as ts

    base = (step_dir / "default").resolve().as_uri() + "/"
    store = ts.KvStore.open({"driver": "ocdbt", "base": base}).result()
    names = [
        key.decode().removesuffix("/.zarray")
        for key in store.list().result()
        if key.startswith(b"params.") and key.endswith(b"/.zarray")
    ]
    assert names, f"no params arrays in {step_dir}"
    for name in names:
        spec = {"driver": "zarr", "kvstore": {"driver": "ocdbt", "base": base, "path": name + "/"}}
        array = ts.open(spec).result()
        values = array.read().result()
        words = values.reshape(-1).view(np.uint32 if values.itemsize == 4 else np.uint16).copy()
        middle = words.size // 2
        words[middle : middle + 4] = ~words[middle : middle + 4]
        array.write(words.view(values.dtype).reshape(values.shape)).result()


def test_flipped_bytes_are_caught_by_the_checksums(small_corpus, tmp_path, capsys):
    workdir = tmp_path / "run"
    train(tiny_config(small_corpus, **{"train.steps": 15}), workdir, stop_at=10)
    _flip(workdir / "checkpoints" / "10")
    warnings: list[str] = []
    assert restore_params(workdir, warn=warnings.append)[1] == 5
    assert "differ from what was saved" in warnings[0], warnings
    capsys.readouterr()
    summary = train(tiny_config(small_corpus, **{"train.steps": 15}), workdir)
    out = capsys.readouterr().out
    assert summary.start_step == 5 and "differ from what was saved" in out, out
