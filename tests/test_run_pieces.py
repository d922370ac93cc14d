"""The training loop's pieces on their own: meter, stop rules, evaluation loop, summary, setup
helpers. Fast: no training run, no subprocess."""

from __future__ import annotations

import dataclasses
import os
import signal
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxgpt.config import TrainConfig
from jaxgpt.model import GPT, GPTConfig
from jaxgpt.run import evaluation
from jaxgpt.run.meter import StepMeter
from jaxgpt.run.setup import batch_split_problem, eval_batch_size, steps_for
from jaxgpt.run.stopping import Preemption, StopRules
from jaxgpt.run.summary import Summary, format_summary
from jaxgpt.sharding import MeshConfig, make_mesh
from jaxgpt.state import make_scorer, make_trainer, next_token_loss


def _metrics(step: int) -> dict[str, jax.Array]:
    return {"loss": jnp.float32(10 - step), "lr": jnp.float32(1e-3), "grad_norm": jnp.float32(1)}


def test_meter_reads_each_logged_step_one_step_late():
    meter = StepMeter(tokens_per_step=100, flops_per_token=6.0, n_devices=2, peak_flops=1e3)
    assert meter.dispatched(1, _metrics(1), log=True) is None  # nothing pending yet
    time.sleep(0.02)
    step, values = meter.dispatched(2, _metrics(2), log=False)  # reads step 1 now
    assert step == 1 and float(values["loss"]) == 9.0
    # Two steps were dispatched in the window: its time is split between them.
    assert 0.005 < values["step_time_s"] < 1.0
    assert values["tokens_per_s"] == pytest.approx(100 / values["step_time_s"])
    assert values["mfu"] == pytest.approx(6.0 * values["tokens_per_s"] / (2 * 1e3))
    assert meter.dispatched(3, _metrics(3), log=True) is None  # step 2 was not logged
    step, values = meter.flush()  # the last logged step, untimed
    assert step == 3 and "step_time_s" not in values and meter.flush() is None
    assert len(meter.step_times) == 1


def test_meter_counts_input_wait_but_not_the_first_fetch():
    meter = StepMeter(100, 6.0, 1, None)

    def slow():
        while True:
            time.sleep(0.03)
            yield 1

    batches = slow()
    meter.next_batch(batches, count_wait=False)
    assert meter.total_wait == 0.0
    meter.next_batch(batches)
    meter.dispatched(1, _metrics(1), log=True)
    meter.next_batch(batches)
    _, values = meter.dispatched(2, _metrics(2), log=True)
    assert meter.total_wait >= 0.05 and values["input_wait_frac"] > 0.5
    assert values["mfu"] is None  # no known peak
    assert meter.next_batch(iter([])) is None


def test_meter_restart_starts_a_new_window():
    """An evaluation's time is no step's; the step pending across it is read untimed (its
    window was discarded), and the next read is timed from the restart."""
    meter = StepMeter(100, 6.0, 1, None)
    meter.dispatched(1, _metrics(1), log=True)
    time.sleep(0.05)  # e.g. an evaluation: not step time
    meter.restart()
    step, values = meter.dispatched(2, _metrics(2), log=True)
    assert step == 1 and "step_time_s" not in values and float(values["loss"]) == 9.0
    time.sleep(0.02)  # step 2's work
    step, values = meter.dispatched(3, _metrics(3), log=False)
    assert step == 2 and 0.005 < values["step_time_s"] < 0.04  # (0.02 s) / 2 steps
    assert meter.step_times == [values["step_time_s"]]
    meter.dispatched(4, _metrics(4), log=True)
    meter.restart()
    step, values = meter.read_now()  # before a checkpoint: untimed too
    assert step == 4 and "step_time_s" not in values


def test_sigterm_becomes_a_stop_reason_and_the_handler_is_restored():
    previous = signal.getsignal(signal.SIGTERM)
    with Preemption() as preemption:
        rules = StopRules(preemption, log_every=10, stop_at=7)
        assert rules.reason(3, at_end=False) is None
        assert rules.reason(7, at_end=False) == "stop_at"
        os.kill(os.getpid(), signal.SIGTERM)
        assert preemption.requested and rules.reason(8, at_end=False) == "SIGTERM"
    assert signal.getsignal(signal.SIGTERM) == previous


def test_batch_windows_pad_with_rows_that_count_nothing():
    windows = np.arange(5 * 4, dtype=np.int32).reshape(5, 4)
    batches = evaluation.batch_windows(windows, 4)
    assert batches.shape == (2, 4, 4)
    np.testing.assert_array_equal(batches.reshape(-1, 4)[:5], windows)
    assert (batches[1, 1:] == evaluation.PAD_TOKEN).all()
    assert evaluation.batch_windows(windows[:4], 2).shape == (2, 2, 4)


@pytest.fixture(scope="module")
def tiny_model():
    cfg = GPTConfig(vocab_size=32, block_size=8, n_layer=1, n_head=2, n_embd=16)
    model = GPT(cfg)
    params = model.init(jax.random.key(0), jnp.zeros((1, 8), jnp.int32))["params"]
    return model, params


def test_sharded_evaluation_loop_is_the_exact_mean(tiny_model):
    """loss_sums over padded batches on an 8-device mesh = the mean loss over the real windows,
    computed unsharded in one batch."""
    model, params = tiny_model
    rules = MeshConfig().rules
    scorer = make_scorer(model, make_mesh(MeshConfig()), rules)
    windows = np.random.default_rng(0).integers(0, 32, (13, 9)).astype(np.int32)
    batches = evaluation.batch_windows(windows, 8)  # 13 windows + 3 padding rows
    placed = jax.device_put(params, scorer.params_sharding)
    loss_sum, count = evaluation.loss_sums(scorer.eval, placed, batches, scorer.batch_sharding)
    assert count == 13 * 8
    expected = float(next_token_loss(params, model, jnp.asarray(windows), None))
    assert loss_sum / count == pytest.approx(expected, rel=1e-5)
    with pytest.raises(ValueError, match="nothing to evaluate"):
        evaluation.loss_sums(scorer.eval, placed, [], scorer.batch_sharding)


def test_training_eval_tracks_patience(tiny_model):
    model, _ = tiny_model
    mesh = make_mesh(MeshConfig())
    trainer = make_trainer(model, optax.sgd(0.1), optax.constant_schedule(0.1), mesh,
                           MeshConfig().rules)  # fmt: skip

    class Best:
        keep, directory, evals_since_best = False, Path("best"), 0

        def update(self, step, loss, params):
            self.evals_since_best += 1
            return False

    cfg = TrainConfig(steps=10, batch_size=8, early_stop_patience=2, sample_tokens=0)
    windows = evaluation.batch_windows(np.ones((8, 9), np.int32), 8)
    writes = []

    class Writer:
        def write(self, step, values):
            writes.append((step, values))

    evals = evaluation.TrainingEval(
        trainer, windows, cfg, Best(), Writer(), None, jax.random.key(0)
    )
    state = trainer.init(jax.random.key(1))
    for step in (1, 2):
        assert not evals.out_of_patience()
        loss, ppl, report = evals(step, state.params)
        assert report.startswith(f"step {step}: val loss {loss:.4f}")
        assert ppl == pytest.approx(np.exp(loss))
    assert evals.out_of_patience() and [s for s, _ in writes] == [1, 2]


def test_epochs_give_steps_and_batch_split_problems_name_the_keys():
    cfg = TrainConfig(steps=50, batch_size=16, microbatches=2)
    assert steps_for(cfg, 1000) == 50  # epochs=0: train.steps
    assert steps_for(dataclasses.replace(cfg, epochs=3), 1000) == 188  # ceil(3000 / 16)
    assert steps_for(dataclasses.replace(cfg, epochs=1), 5) == 1
    assert (
        eval_batch_size(cfg) == 8
        and eval_batch_size(dataclasses.replace(cfg, eval_batch_size=4)) == 4
    )
    assert batch_split_problem(cfg, 8, 8) is None
    problem = batch_split_problem(cfg, 8, 12)
    assert "eval batch is 12" in problem and "train.eval_batch_size" in problem
    assert "not divisible by the data-parallel size 3" in batch_split_problem(cfg, 3, 8)
    with pytest.raises(ValueError, match=r"train\.epochs"):
        TrainConfig(epochs=-1)


def test_summary_text():
    s = Summary("runs/x", 20, 10, 3200, 2.0, 1234, 1.5, 1.7, 5.47, 35.2, 0.012, "ck/20",
                best_step=15, best_eval_loss=1.6, stopped_early=True)  # fmt: skip
    text = format_summary(s, None)
    assert "steps        10 → 20" in text and "1,600/s" in text
    assert "35.2 ms median; 1.2% of the time waiting for input" in text
    assert "best         val loss 1.6000 at step 15" in text and "stopped early" in text
    preempted = format_summary(dataclasses.replace(s, preempted=True, eval_loss=None), None)
    assert "(stopped by SIGTERM)" in preempted and "val loss     n/a" in preempted
