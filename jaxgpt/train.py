"""Train a GPT: `python -m jaxgpt.train --config configs/tiny.py --workdir runs/tiny`.

Re-running the same command on the same workdir resumes from the latest checkpoint.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import signal
import sys
import time
from pathlib import Path
from typing import Any

import jax
import ml_collections
import numpy as np
from tqdm import tqdm

from jaxgpt import config as config_lib
from jaxgpt import cpu_devices, distributed, host_memory
from jaxgpt import init_from as init_from_lib
from jaxgpt import metrics as metrics_lib
from jaxgpt import sharding as sharding_lib
from jaxgpt.checkpoint import BestCheckpoint, Checkpointer
from jaxgpt.data import sft
from jaxgpt.data.build import prepare_dataset
from jaxgpt.data.pipeline import TrainBatches, eval_windows, prefetch, tf_batches
from jaxgpt.model import GPT, count_params, flops_per_token
from jaxgpt.optimizer import make_optimizer, make_schedule
from jaxgpt.sample import generate
from jaxgpt.state import Trainer, make_trainer


@dataclasses.dataclass
class Summary:
    """What a run did; printed at the end and written to WORKDIR/summary.json."""

    workdir: str
    steps: int
    start_step: int
    tokens: int
    seconds: float
    params: int
    final_loss: float | None
    eval_loss: float | None
    eval_ppl: float | None
    median_step_ms: float | None
    input_wait_frac: float
    checkpoint: str
    preempted: bool = False
    best_step: int | None = None
    best_eval_loss: float | None = None
    stopped_early: bool = False


class _Preemption:
    """Turns SIGTERM into a flag the loop checks, so it can checkpoint before exiting."""

    def __init__(self):
        self.requested = False
        self._previous = None

    def __enter__(self):
        try:
            self._previous = signal.signal(signal.SIGTERM, self._handle)
        except ValueError:  # not the main thread: leave signals alone
            self._previous = None
        return self

    def _handle(self, signum, frame):
        self.requested = True

    def __exit__(self, *exc):
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)


def evaluate(trainer: Trainer, params: Any, windows: np.ndarray) -> float:
    """Mean loss per target over fixed validation windows [N, B, T+1]."""
    sums = [
        trainer.eval(params, sharding_lib.global_batch(batch, trainer.batch_sharding))
        for batch in windows
    ]
    loss_sum, count = np.sum(jax.device_get(sums), axis=0)
    return float(loss_sum / count)


def _local_rows(batch: np.ndarray) -> np.ndarray:
    n = jax.process_count()
    rows = len(batch) // n
    return batch[jax.process_index() * rows : (jax.process_index() + 1) * rows]


def _truncate_metrics(workdir: Path, after_step: int) -> None:
    """Drop metric lines past the checkpoint we resume from: those steps will be redone."""
    path = workdir / "metrics.jsonl"
    if path.is_file():
        keep = [r for r in metrics_lib.read_metrics(workdir) if r["step"] <= after_step]
        path.write_text("".join(json.dumps(r) + "\n" for r in keep))


def _check_batch_divisible(rc: config_lib.RunConfig, n_batch: int, eval_batch: int) -> None:
    micro = rc.train.micro_batch_size
    if micro % n_batch or eval_batch % n_batch:
        raise ValueError(
            f"train.batch_size={rc.train.batch_size} over train.microbatches="
            f"{rc.train.microbatches} gives {micro} sequences per microbatch (eval batch "
            f"{eval_batch}), which must be divisible by the data-parallel size {n_batch} "
            "(mesh data × fsdp); change train.batch_size or the mesh"
        )


def _write_workdir_files(workdir: Path, config: ml_collections.ConfigDict, gpt_cfg, data) -> None:
    resolved = json.loads(config_lib.to_json(config))
    resolved["model"]["vocab_size"] = gpt_cfg.vocab_size
    (workdir / "config.json").write_text(json.dumps(resolved, indent=2, sort_keys=True))
    shutil.copyfile(data.tokenizer_path, workdir / data.tokenizer_file)


def _batches(rc: config_lib.RunConfig, data, seq_len: int, eval_batch: int, say):
    """Training batches and fixed validation batches: token windows, or SFT examples."""
    where = (jax.process_index(), jax.process_count())
    if data.format == "sft":
        examples = sft.load_examples(data, "train")
        too_long = int(np.sum(examples.lengths() > seq_len + 1))
        if too_long:
            say(
                f"sft: {too_long:,} of {len(examples):,} training examples are longer than "
                f"block_size+1 = {seq_len + 1} tokens and lose the start of their prompt"
            )
        batches = sft.SFTBatches(
            examples, data.eot_id, rc.train.batch_size, seq_len, rc.train.seed, *where
        )
        val_examples = sft.load_examples(data, "val")
        val = sft.eval_rows(val_examples, data.eot_id, seq_len, rc.train.eval_tokens, eval_batch)
        return batches, val
    batches = TrainBatches(
        data.tokens("train"), rc.train.batch_size, seq_len, rc.train.seed, *where
    )
    return batches, eval_windows(data.tokens("val"), seq_len, rc.train.eval_tokens, eval_batch)


def train(
    config: ml_collections.ConfigDict, workdir: str | Path, stop_at: int | None = None
) -> Summary:
    """Prepare data if needed, build or resume the state, train, evaluate, checkpoint.

    Args:
        config: a config from configs/*.py (see configs/base.py).
        workdir: run directory; an existing checkpoint there is resumed.
        stop_at: stop after this step with a checkpoint, as a preemption would (the schedule
            still runs to train.steps when resumed).
    """
    source = None
    init_notes: list[str] = []
    if config.init_from:
        # The weights decide the model's shape and tokenizer: fold them into (a copy of) the
        # config first, so config.json, the data dir and every check see the real model.
        config = config.copy_and_resolve_references()
        source = init_from_lib.resolve(config.init_from)
        init_notes = init_from_lib.apply_to_config(config, source)
    rc = config_lib.run_config(config)
    host_memory.keep_freed_memory()
    eval_batch = rc.train.eval_batch_size or rc.train.micro_batch_size
    cpu_note = None
    if distributed.init_arguments(rc.dist) is None:  # one process: may split the CPU host
        cpu_note = cpu_devices.configure(
            rc.mesh.cpu_devices, rc.mesh, (rc.train.micro_batch_size, eval_batch)
        )
    distributed.initialize(rc.dist)  # before anything asks JAX about devices
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    is_main = jax.process_index() == 0
    say = print if is_main else (lambda *a, **k: None)
    if cpu_note and jax.default_backend() == "cpu":
        say(cpu_note)
    distributed.check_same_everywhere("config", config_lib.to_json(config))

    # Process 0 builds the data dir; the others then find it current (shared storage) or build
    # the identical one (local storage): building is deterministic.
    data_dir = rc.data.path or workdir / "data"
    if is_main:
        data = prepare_dataset(rc.data, data_dir)
    distributed.barrier("data prepared")
    if not is_main:
        data = prepare_dataset(rc.data, data_dir, verbose=False)
    gpt_cfg = config_lib.model_config(rc.model, data.vocab_size)
    mesh = sharding_lib.make_mesh(rc.mesh)
    n_batch = sharding_lib.batch_axis_size(mesh, rc.mesh.rules)
    _check_batch_divisible(rc, n_batch, eval_batch)
    if is_main:
        _write_workdir_files(workdir, config, gpt_cfg, data)

    model = GPT(gpt_cfg)
    schedule = make_schedule(rc.opt, rc.train.steps)
    tx = make_optimizer(rc.opt, rc.train.steps)
    trainer = make_trainer(model, tx, schedule, mesh, rc.mesh.rules, rc.train.microbatches)
    ckpt = Checkpointer(workdir, rc.ckpt.every, rc.ckpt.keep, rc.ckpt.async_save)
    root_rng = jax.random.key(rc.train.seed)
    start = ckpt.latest_step()
    if start is None and source is not None:
        for note in init_notes:
            say(f"init_from: {note}")
        params = init_from_lib.load_params(source, gpt_cfg)
        init_from_lib.check_shapes(params, trainer.state_shapes.params, source)
        state, start = init_from_lib.initial_state(trainer, tx, params), 0
        del params
        say(f"initialized from {source.spec}")
    elif start is None:
        state, start = trainer.init(jax.random.fold_in(root_rng, 0)), 0
    else:
        state = ckpt.restore(trainer.abstract_state(), start)
        if is_main:
            _truncate_metrics(workdir, start)
        say(f"resumed from {ckpt.directory / str(start)}")

    n_params = count_params(state.params)
    fpt = flops_per_token(gpt_cfg, count_params(state.params, exclude_positions=True))
    peak = metrics_lib.peak_flops_per_device(override=rc.train.peak_flops)
    tokens_per_step = rc.train.batch_size * gpt_cfg.block_size
    say(
        f"model: {n_params:,} params ({gpt_cfg.n_layer} layers, {gpt_cfg.n_head} heads, width "
        f"{gpt_cfg.n_embd}, context {gpt_cfg.block_size}, vocab {gpt_cfg.vocab_size}); mesh "
        f"{dict(mesh.shape)} on {jax.device_count()} {jax.devices()[0].platform} device(s)"
    )
    batches, val = _batches(rc, data, gpt_cfg.block_size, eval_batch, say)
    val_local = np.stack([_local_rows(b) for b in val])
    tokenizer = data.tokenizer()
    writer = metrics_lib.MetricsWriter(workdir, enabled=is_main)
    patience = rc.train.early_stop_patience
    best = (
        BestCheckpoint(workdir, rc.ckpt.keep_best, start) if rc.ckpt.keep_best or patience else None
    )
    dropout_rng = jax.random.fold_in(root_rng, 1)

    def to_global(local_batch: np.ndarray) -> jax.Array:
        return sharding_lib.global_batch(local_batch, trainer.batch_sharding)

    def run_eval(step: int) -> tuple[float, float]:
        loss = evaluate(trainer, state.params, val_local)
        ppl = float(np.exp(min(loss, 50.0)))
        writer.write(step, {"eval_loss": loss, "eval_ppl": ppl})
        line = f"step {step}: val loss {loss:.4f}, perplexity {ppl:.2f}"
        if rc.train.sample_tokens:  # every process: the params are spread over all of them
            prompt = tokenizer.encode(rc.train.sample_prompt) if rc.train.sample_prompt else []
            ids = generate(
                model,
                state.params,
                prompt or [tokenizer.eot_id],
                rc.train.sample_tokens,
                jax.random.fold_in(root_rng, 2 + step),
                temperature=0.8,
                top_k=50,
                vocab_limit=tokenizer.vocab_size,
            )
            line += f"\n  sample: {rc.train.sample_prompt + tokenizer.decode(ids)!r}"
        if best is not None and best.update(step, loss, state.params) and rc.ckpt.keep_best:
            line += f"\n  new best: saved params to {best.directory}"
        say_bar(line)
        return loss, ppl

    bar = tqdm(
        total=rc.train.steps, initial=start, disable=not is_main, unit="step", dynamic_ncols=True
    )
    say_bar = bar.write if is_main else (lambda *a, **k: None)
    step_times: list[float] = []
    last_loss = eval_loss = eval_ppl = None
    pending: tuple[int, dict] | None = None
    window_start, window_steps, window_wait = time.perf_counter(), 0, 0.0
    total_wait = 0.0
    started = time.perf_counter()
    step = start
    stopped_early = False
    if start == 0 and source is not None and start < rc.train.steps:
        # Where fine-tuning starts from: the loss every later evaluation is compared against.
        say("before training:")
        run_eval(0)
    end = rc.train.steps
    if best is not None and 0 < patience <= best.evals_since_best:
        stopped_early, end = True, start
        bar.write(f"this run stopped early at step {start}: evaluating only")
    elif start >= rc.train.steps:
        bar.write(
            f"already trained to step {start} (train.steps={rc.train.steps}): evaluating only"
        )
    if start >= end:
        eval_loss = evaluate(trainer, state.params, val_local)
        eval_ppl = float(np.exp(min(eval_loss, 50.0)))
    with _Preemption() as preemption:
        batch_iter = prefetch(to_global, tf_batches(batches, start, end))
        while True:
            # Time spent blocked here is time the device could have been busy: the input share.
            t0 = time.perf_counter()
            batch = next(batch_iter, None)
            if batch is None:
                break
            if step > start:  # the first fetch is pipeline start-up, before any device work
                waited = time.perf_counter() - t0
                window_wait += waited
                total_wait += waited
            state, step_metrics = trainer.step(state, batch, dropout_rng)
            step += 1
            window_steps += 1
            bar.update(1)
            # Read the previous step's metrics only now, after this step is dispatched, so the
            # device never waits for the host.
            if pending is not None:
                now = time.perf_counter()
                seconds = (now - window_start) / window_steps
                input_wait_frac = window_wait / max(now - window_start, 1e-9)
                window_start, window_steps, window_wait = now, 0, 0.0
                values = jax.device_get(pending[1])
                tokens_per_s = tokens_per_step / seconds
                values.update(
                    step_time_s=seconds,
                    tokens_per_s=tokens_per_s,
                    mfu=metrics_lib.mfu(fpt, tokens_per_s, jax.device_count(), peak),
                    input_wait_frac=input_wait_frac,
                )
                writer.write(pending[0], values)
                step_times.append(seconds)
                last_loss = float(values["loss"])
                bar.set_postfix(loss=f"{last_loss:.4f}", lr=f"{float(values['lr']):.2e}")
                pending = None
            if step % rc.train.log_every == 0 or step == rc.train.steps:
                pending = (step, step_metrics)
            at_end = step == rc.train.steps
            if (rc.train.eval_every and step % rc.train.eval_every == 0) or at_end:
                eval_loss, eval_ppl = run_eval(step)
                window_start, window_steps, window_wait = time.perf_counter(), 0, 0.0
            requested = preemption.requested
            if jax.process_count() > 1 and (step % rc.train.log_every == 0 or at_end):
                # A collective decision, so every process saves the same step (or none does).
                # SIGTERM may arrive during the collective: only ever raise the flag here.
                requested = distributed.any_process(requested)
                if requested:
                    preemption.requested = True
            elif jax.process_count() > 1:
                requested = False
            stopped_early = bool(
                patience and best is not None and best.evals_since_best >= patience
            )
            stopping = requested or step == stop_at
            ckpt.save(step, state, force=at_end or stopping or stopped_early)
            if stopping:
                reason = "SIGTERM" if preemption.requested else "stop_at"
                say_bar(f"{reason}: saved checkpoint at step {step}, exiting")
                break
            if stopped_early:
                best_step, best_loss = best.best
                say_bar(
                    f"early stopping at step {step}: no better validation loss in {patience} "
                    f"evaluations (best {best_loss:.4f} at step {best_step})"
                )
                break
        if pending is not None:
            values = jax.device_get(pending[1])
            last_loss = float(values["loss"])
            writer.write(pending[0], values)
    bar.close()
    ckpt.close()
    writer.close()
    summary = Summary(
        workdir=str(workdir),
        steps=step,
        start_step=start,
        tokens=(step - start) * tokens_per_step,
        seconds=round(time.perf_counter() - started, 2),
        params=n_params,
        final_loss=last_loss,
        eval_loss=eval_loss,
        eval_ppl=eval_ppl,
        median_step_ms=round(1000 * float(np.median(step_times)), 2) if step_times else None,
        input_wait_frac=round(total_wait / max(time.perf_counter() - started, 1e-9), 4),
        checkpoint=str(ckpt.directory / str(ckpt.latest_step())),
        preempted=preemption.requested,
        best_step=best.best[0] if best is not None and best.best else None,
        best_eval_loss=best.best[1] if best is not None and best.best else None,
        stopped_early=stopped_early,
    )
    if best is not None:
        best.close()
    if is_main:
        (workdir / "summary.json").write_text(json.dumps(dataclasses.asdict(summary), indent=2))
        plot = metrics_lib.plot_losses(workdir)
        _print_summary(summary, plot)
    return summary


def _print_summary(s: Summary, plot: Path | None) -> None:
    fmt = lambda v, spec: "n/a" if v is None else format(v, spec)
    lines = [
        "",
        "── summary " + "─" * 50,
        f"steps        {s.start_step} → {s.steps}"
        + ("  (stopped by SIGTERM)" if s.preempted else ""),
        f"tokens       {s.tokens:,} in {s.seconds:.1f}s ({s.tokens / max(s.seconds, 1e-9):,.0f}/s)",
        f"step time    {fmt(s.median_step_ms, '.1f')} ms median; "
        f"{100 * s.input_wait_frac:.1f}% of the time waiting for input",
        f"train loss   {fmt(s.final_loss, '.4f')}",
        f"val loss     {fmt(s.eval_loss, '.4f')}  (perplexity {fmt(s.eval_ppl, '.2f')})",
        *(
            [f"best         val loss {s.best_eval_loss:.4f} at step {s.best_step}"]
            + (["             (stopped early: no improvement)"] if s.stopped_early else [])
            if s.best_step is not None
            else []
        ),
        f"checkpoint   {s.checkpoint}",
        f"metrics      {Path(s.workdir) / 'metrics.jsonl'}" + (f", plot {plot}" if plot else ""),
    ]
    print("\n".join(lines))


def main(argv: list[str] | None = None) -> None:
    from absl import flags

    usage = "usage: python -m jaxgpt.train --config configs/tiny.py --workdir DIR [--config.x=y]"
    config = config_lib.parse_command_line(
        argv,
        usage,
        lambda: flags.DEFINE_string("workdir", None, "Run directory: checkpoints, metrics, ..."),
    )
    if not flags.FLAGS.workdir:
        sys.exit(usage)
    try:
        summary = train(config, flags.FLAGS.workdir)
    except (ValueError, FileNotFoundError) as e:
        sys.exit(f"error: {e}")
    if summary.preempted:
        sys.exit(143)


if __name__ == "__main__":
    main()
