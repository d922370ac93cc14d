"""The training loop: the story of a run, with the pieces it calls kept in their own modules."""

from __future__ import annotations

import contextlib
import dataclasses
import time
from pathlib import Path

import jax
import ml_collections
import numpy as np
from tqdm import tqdm

from jaxgpt import config as config_lib
from jaxgpt import metrics as metrics_lib
from jaxgpt import tracking
from jaxgpt.checkpoint import BestCheckpoint
from jaxgpt.config.run import WandbConfig
from jaxgpt.data.pipeline import device_batches
from jaxgpt.model import count_params, flops_per_token
from jaxgpt.run.evaluation import TaskEvals, TrainingEval
from jaxgpt.run.meter import StepMeter
from jaxgpt.run.nonfinite import NonFiniteError, NonFiniteGuard
from jaxgpt.run.setup import TrainingRun, eval_batch_size, setup_training
from jaxgpt.run.stopping import Preemption, StopRules
from jaxgpt.run.summary import Summary, format_summary


def train(
    config: ml_collections.ConfigDict, workdir: str | Path, stop_at: int | None = None
) -> Summary:
    """Prepare data if needed, build or resume the state, train, evaluate, checkpoint.

    Args:
        config: a config from configs/*.py (see configs/base.py).
        workdir: run directory; an existing checkpoint there is resumed.
        stop_at: stop after this step with a checkpoint, as a preemption would (the schedule
            still runs to the run's last step when resumed).
    """
    # A missing wandb package (train.wandb.project set) fails now, before any data or compute.
    wandb = config_lib.from_dict(WandbConfig, config.train.wandb.to_dict(), "train.wandb.")
    tracking.check_available(wandb)
    run = setup_training(config, workdir)
    tc, trainer, state, step = run.rc.train, run.trainer, run.state, run.start
    evals, writer = _training_eval(run)
    meter, progress = _meter(run), _Progress(run, writer, evals.sink)
    say, log = progress.say, progress.log
    end, result = _plan_start(run, evals, say)
    guard = NonFiniteGuard(tc, state, say)
    dropout_rng = jax.random.fold_in(jax.random.key(tc.seed), 1)
    # closing(): the input thread stops before the run goes on to close its other parts.
    inputs = contextlib.closing(device_batches(run.batches, step, end, run.to_global))
    try:
        with Preemption() as preemption, inputs as batches:
            rules = StopRules(preemption, tc.log_every, stop_at)
            while (batch := meter.next_batch(batches, count_wait=step > run.start)) is not None:
                state, metrics = trainer.step(state, batch, dropout_rng)
                step += 1
                progress.bar.update(1)
                at_end = step == run.steps
                log(read := meter.dispatched(step, metrics, step % tc.log_every == 0 or at_end))
                reason = guard.after_read(read, state)
                if not reason and ((tc.eval_every and step % tc.eval_every == 0) or at_end):
                    log(meter.read_now())  # timed now: the evaluation waits for the step anyway
                    result = _evaluate(evals, step, state.params, say)
                    meter.restart()
                early = "early" if evals.out_of_patience() else None
                reason = reason or rules.reason(step, at_end) or early
                reason = _checkpoint(run, (step, state), reason, at_end, (meter, progress, guard))
                if reason:
                    say(_stop_message(reason, step, evals))
                    break
            log(meter.flush())
    except BaseException:
        _abandon(run, evals, progress)
        raise
    progress.bar.close()
    summary = _finish(run, evals, progress, meter, (step, result), preemption.requested)
    if guard.message:
        latest = run.ckpt.latest_step()
        where = f"step {latest}" if latest is not None else "the start (no checkpoint yet)"
        raise NonFiniteError(f"{guard.message}\nRerunning the same command resumes from {where}.")
    return summary


def _abandon(run: TrainingRun, evals: TrainingEval, progress: _Progress) -> None:
    """Close what the run opened when it fails (a write error, an interrupt), keeping the
    first error: files are flushed and closed, an in-flight checkpoint finishes or is dropped."""
    progress.bar.close()
    closers = [progress.writer.close, run.ckpt.close]
    if evals.best is not None:
        closers.append(evals.best.close)
    if evals.sink is not None:
        closers.append(evals.sink.abandon)
    for close in closers:
        with contextlib.suppress(Exception):
            close()


def _checkpoint(run: TrainingRun, at: tuple, reason: str | None, at_end: bool, watch: tuple):
    """Save the state if due, and return the reason to stop (None: go on).

    A step's metrics line is written before its checkpoint: a kill between the two can then
    never leave a checkpoint whose step has no line. With train.on_nonfinite=stop, nothing
    after a skipped update is saved."""
    (step, state), (meter, progress, guard) = at, watch
    if reason == "nonfinite" or not run.ckpt.due(step, force=at_end or reason is not None):
        return reason
    progress.log(meter.read_now())
    if stop := guard.check(state):
        return stop
    progress.writer.sync()  # a bucket's metrics.jsonl holds every line up to the checkpoint
    run.ckpt.save(step, state, force=True)
    return reason


def _training_eval(run: TrainingRun) -> tuple[TrainingEval, metrics_lib.MetricsWriter]:
    rc = run.rc
    tasks = None  # loaded first: a missing extra or a bad task name fails before anything opens
    if rc.train.eval_tasks:
        tasks = TaskEvals(run.trainer, run.data.tokenizer(), rc.train, eval_batch_size(rc.train))
    sink = None  # opened first: a W&B run that cannot start fails before metrics files open
    if run.is_main and rc.train.wandb.enabled:
        sink = tracking.WandbSink.open(rc.train.wandb, run.workdir, run.logged_through)
    writer = metrics_lib.MetricsWriter(run.workdir, enabled=run.is_main, start_step=run.start)
    best = None
    if rc.ckpt.keep_best or rc.train.early_stop_patience:
        best = BestCheckpoint(run.workdir, rc.ckpt.keep_best, run.start)
    rng = jax.random.key(rc.train.seed)
    evals = TrainingEval(
        run.trainer, run.val_local, rc.train, best, writer, run.data.tokenizer(), rng, sink, tasks
    )
    return evals, writer


def _meter(run: TrainingRun) -> StepMeter:
    n_params = count_params(run.trainer.state_shapes.params, exclude_positions=True)
    fpt = flops_per_token(run.trainer.model.config, n_params)
    peak = metrics_lib.peak_flops_per_device(override=run.rc.train.peak_flops)
    return StepMeter(run.tokens_per_step, fpt, jax.device_count(), peak)


class _Progress:
    """The progress bar, metrics.jsonl and W&B (when on): each read step's metrics go to all."""

    def __init__(
        self,
        run: TrainingRun,
        writer: metrics_lib.MetricsWriter,
        sink: tracking.WandbSink | None = None,
    ):
        self.writer, self.sink = writer, sink
        self.bar = tqdm(
            total=run.steps,
            initial=run.start,
            disable=not run.is_main,
            unit="step",
            dynamic_ncols=True,
        )
        self.say = self.bar.write if run.is_main else (lambda *a, **k: None)
        self.last_loss: float | None = None

    def log(self, read: tuple[int, dict] | None) -> None:
        if read is None:
            return
        step, values = read
        self.writer.write(step, values)
        if self.sink is not None:
            self.sink.write(step, values)
        self.last_loss = float(values["loss"])
        if "step_time_s" in values:  # a timed read (the final flush is not)
            self.bar.set_postfix(loss=f"{self.last_loss:.4f}", lr=f"{float(values['lr']):.2e}")


def _plan_start(run: TrainingRun, evals: TrainingEval, say) -> tuple[int, tuple]:
    """The step to train up to, and the (loss, ppl) known before the loop (or Nones)."""
    result = (None, None)
    if run.from_weights and run.start < run.steps:
        # Where fine-tuning starts from: the loss every later evaluation is compared against.
        run.say("before training:")
        result = _evaluate(evals, 0, run.state.params, say)
    end = run.steps
    if evals.out_of_patience():
        end = run.start
        say(f"this run stopped early at step {run.start}: evaluating only")
    elif run.start >= run.steps:
        say(f"already trained to step {run.start} of {run.steps}: evaluating only")
    if run.start >= end:
        result = evals.loss(run.state.params)
    return end, result


def _evaluate(evals: TrainingEval, step: int, params, say) -> tuple[float, float]:
    loss, ppl, report = evals(step, params)
    say(report)
    return loss, ppl


def _stop_message(reason: str, step: int, evals: TrainingEval) -> str:
    if reason == "nonfinite":
        return f"stopped at step {step}: non-finite loss or gradient (see the error below)"
    if reason != "early":
        return f"{reason}: saved checkpoint at step {step}, exiting"
    best_step, best_loss = evals.best.best
    return (
        f"early stopping at step {step}: no better validation loss in "
        f"{evals.cfg.early_stop_patience} evaluations (best {best_loss:.4f} at step {best_step})"
    )


def _finish(
    run: TrainingRun,
    evals: TrainingEval,
    progress: _Progress,
    meter: StepMeter,
    end: tuple[int, tuple],
    preempted: bool,
) -> Summary:
    """Close what the run opened, write summary.json and the loss plot, print the summary."""
    step, (eval_loss, eval_ppl) = end
    run.ckpt.close()
    progress.writer.close()
    best = evals.best.best if evals.best is not None else None
    times = meter.step_times
    summary = Summary(
        workdir=str(run.workdir),
        steps=step,
        start_step=run.start,
        tokens=(step - run.start) * run.tokens_per_step,
        seconds=round(time.perf_counter() - meter.started, 2),
        params=count_params(run.trainer.state_shapes.params),
        final_loss=progress.last_loss,
        eval_loss=eval_loss,
        eval_ppl=eval_ppl,
        median_step_ms=round(1000 * float(np.median(times)), 2) if times else None,
        input_wait_frac=round(meter.wait_frac(), 4),
        checkpoint=str(run.ckpt.directory / str(run.ckpt.latest_step())),
        preempted=preempted,
        best_step=best[0] if best else None,
        best_eval_loss=best[1] if best else None,
        stopped_early=evals.out_of_patience(),
    )
    if evals.best is not None:
        evals.best.close()
    if run.is_main:
        summary.write(run.workdir)
        plot = metrics_lib.plot_losses(run.workdir)
        print(format_summary(summary, plot))
        if evals.sink is not None:
            evals.sink.finish(plot, dataclasses.asdict(summary))
    return summary
