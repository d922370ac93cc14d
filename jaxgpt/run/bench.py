"""Benchmark a config's train step (the library behind `python -m jaxgpt.bench`).

Compiles the trainer's real step once (timed apart), runs it on synthetic tokens (or on a
prepared data dir through the training input pipeline with --data), and prints compile time,
median step time, tokens/s, model TFLOP/s, MFU, peak memory and the input-wait share. MFU uses
the formula and peak table of jaxgpt.metrics, exactly as the training loop's `mfu` metric does.
"""

from __future__ import annotations

import dataclasses
import datetime
import resource
import time
from pathlib import Path
from typing import Any

import flax.linen as nn
import jax
import ml_collections
import numpy as np

from jaxgpt import config as config_lib
from jaxgpt import metrics as metrics_lib
from jaxgpt import profile_ops
from jaxgpt import sharding as sharding_lib
from jaxgpt.data.build import prepare_dataset
from jaxgpt.data.dataset import DatasetInfo
from jaxgpt.data.pipeline import TrainBatches, device_batches
from jaxgpt.model import GPTConfig, count_params, flops_per_token
from jaxgpt.run.meter import StepMeter
from jaxgpt.run.plan import resolve_model
from jaxgpt.run.setup import build_trainer, start_runtime
from jaxgpt.state import Trainer

PROFILE_LINES = 15  # operations shown of the profile (most device time first)


@dataclasses.dataclass(frozen=True)
class BenchResult:
    """What one benchmark run measured; times in seconds, memory in bytes."""

    date: str
    device_kind: str
    platform: str
    n_devices: int
    jax_version: str
    model: dict[str, Any]
    mesh: dict[str, int]
    batch_size: int
    microbatches: int
    tokens_per_step: int
    n_params: int
    n_params_no_pos: int
    steps: int
    warmup: int
    compile_s: float
    step_s: list[float]
    flops_per_token: float
    xla_flops_per_step: float | None  # XLA's own count of the compiled step (all devices)
    peak_flops: float | None
    peak_memory_bytes: int | None  # the device allocator's peak (None where not reported)
    xla_step_bytes: int  # XLA's plan per device: arguments + outputs + temporaries − donated
    host_peak_rss_bytes: int
    input: str  # "synthetic" or the data dir
    input_wait_frac: float | None
    profile: list[profile_ops.OpTime] | None = None  # with profile_dir: all ops, most first

    @property
    def median_step_s(self) -> float:
        return float(np.median(self.step_s))

    @property
    def tokens_per_s(self) -> float:
        return self.tokens_per_step / self.median_step_s

    @property
    def model_flops_per_s(self) -> float:
        return self.flops_per_token * self.tokens_per_s

    @property
    def mfu(self) -> float | None:
        return metrics_lib.mfu(
            self.flops_per_token, self.tokens_per_s, self.n_devices, self.peak_flops
        )

    def summary(self) -> dict[str, Any]:
        """The headline figures as plain numbers (the CLI's JSON line)."""
        fields = dataclasses.asdict(self)
        del fields["step_s"]
        if fields["profile"] is not None:
            fields["profile"] = fields["profile"][:PROFILE_LINES]
        return {
            **fields,
            "median_step_ms": round(1000 * self.median_step_s, 3),
            # The mean too: with two steps completing together the intervals go bimodal (seen
            # on CPU with huge pages: p10 8 ms, p90 214 ms), and only the mean is wall time.
            "mean_step_ms": round(1000 * float(np.mean(self.step_s)), 3),
            "p10_step_ms": round(1000 * float(np.percentile(self.step_s, 10)), 3),
            "p90_step_ms": round(1000 * float(np.percentile(self.step_s, 90)), 3),
            "tokens_per_s": round(self.tokens_per_s, 1),
            "model_tflops_per_s": round(self.model_flops_per_s / 1e12, 4),
            "mfu": None if self.mfu is None else round(self.mfu, 4),
        }


def _batches_synthetic(
    model: GPTConfig, batch_size: int, sharding: jax.sharding.NamedSharding, seed: int = 0
):
    """Endless uniform-random token batches, made once and put on the devices up front."""
    rng = np.random.default_rng(seed)
    shape = (batch_size, model.block_size + 1)
    local = [rng.integers(0, model.vocab_size, shape).astype(np.int32) for _ in range(4)]
    batches = [jax.device_put(b, sharding) for b in local]
    i = 0
    while True:
        yield batches[i % len(batches)]
        i += 1


def _batches_from_data(data, rc: config_lib.RunConfig, model: GPTConfig, trainer: Trainer, n: int):
    """The training loop's own input path: deterministic windows → device, prefetched."""
    batches = TrainBatches(
        data.tokens("train"),
        rc.train.batch_size,
        model.block_size,
        rc.train.seed,
        jax.process_index(),
        jax.process_count(),
    )
    to_global = lambda b: sharding_lib.global_batch(b, trainer.batch_sharding)
    return device_batches(batches, 0, n, to_global)


def _compile(trainer: Trainer, state: Any, batch: jax.Array, rng: jax.Array):
    """Lower and compile the trainer's jitted step inside its mesh context (as it runs)."""
    with jax.set_mesh(trainer.mesh), nn.logical_axis_rules(list(trainer.rules)):
        return trainer.step.__wrapped__.lower(state, batch, rng).compile()


def _xla_step_bytes(compiled) -> int:
    m = compiled.memory_analysis()
    if m is None:
        return 0
    live = m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes
    return int(live - m.alias_size_in_bytes)


def _xla_flops(compiled) -> float | None:
    try:
        cost = compiled.cost_analysis()
    except Exception:  # not every backend implements it
        return None
    if isinstance(cost, list):  # older jax: one dict per device program
        cost = cost[0] if cost else None
    return float(cost["flops"]) if cost and "flops" in cost else None


def _device_peak_bytes() -> int | None:
    stats = jax.local_devices()[0].memory_stats()  # None on CPU
    if not stats:
        return None
    return int(stats.get("peak_bytes_in_use", stats.get("bytes_in_use", 0))) or None


def _run_steps(compiled, state, batches, rng, meter: StepMeter, total: int) -> Any:
    """Run `total` steps metered exactly as the training loop meters them (jaxgpt.run.meter):
    step i+1 is dispatched before step i's metrics are read, and a step's time is the interval
    between consecutive reads, which in steady state is the device's time per step."""
    for i in range(total):
        batch = meter.next_batch(batches, count_wait=i > 0)
        state, metrics = compiled(state, batch, rng)
        meter.dispatched(i + 1, metrics, log=True)
    meter.flush()
    return state


def _model_config(rc: config_lib.RunConfig, data: DatasetInfo | None) -> GPTConfig:
    """The model as training resolves it: vocabulary and end-of-text id from the data's
    tokenizer; with synthetic batches, as plan estimates it."""
    if data is None:
        return resolve_model(rc)
    return config_lib.model_config(rc.model, data.vocab_size, data.eot_id)


def benchmark(
    config: ml_collections.ConfigDict,
    steps: int = 20,
    warmup: int = 3,
    data_dir: str | Path | None = None,
    profile_dir: str | Path | None = None,
    profile_steps: int = 5,
) -> BenchResult:
    """Compile the config's train step once, run warmup + steps of it, and measure.

    Args:
        config: a config from configs/*.py (see configs/base.py); train.batch_size,
            train.microbatches, the mesh and train.peak_flops are honoured.
        steps: timed steps (the median is reported).
        warmup: untimed steps run first.
        data_dir: a prepared data dir (built if missing) read through the training input
            pipeline; None = synthetic batches.
        profile_dir: also trace profile_steps more steps there (TensorBoard / Perfetto)
            and report the top operations.
    """
    if steps < 1 or warmup < 0:
        raise ValueError(f"--steps must be >= 1 and --warmup >= 0, got {steps}, {warmup}")
    rc = config_lib.run_config(config)
    start_runtime(rc, (rc.train.micro_batch_size,))
    data = None if data_dir is None else prepare_dataset(rc.data, data_dir, verbose=False)
    model_cfg = _model_config(rc, data)
    # The eval batch plays no part here: only the training batch must split over the mesh.
    trainer = build_trainer(rc, model_cfg, rc.train.steps, rc.train.micro_batch_size)
    state = trainer.init(jax.random.key(rc.train.seed))
    total = warmup + steps + 1  # +1: the last timed interval ends at a completion
    extra = profile_steps if profile_dir is not None else 0  # the traced steps read too
    batches = _batches(rc, data, trainer, total + 1 + extra)
    rng = jax.random.key(rc.train.seed + 1)
    compiled, compile_s, state = _compile_and_start(trainer, state, next(batches), rng)
    meter = _meter(rc, trainer)
    state = _run_steps(compiled, state, batches, rng, meter, total)
    jax.block_until_ready(state)
    profile = None
    if profile_dir is not None:
        profile = _profile(compiled, state, batches, rng, profile_steps, profile_dir)
    return BenchResult(
        **_setting(rc, trainer),
        steps=steps,
        warmup=warmup,
        compile_s=compile_s,
        step_s=meter.step_times[warmup:],
        flops_per_token=meter.flops_per_token,
        xla_flops_per_step=_xla_flops(compiled),
        peak_flops=meter.peak_flops,
        peak_memory_bytes=_device_peak_bytes(),
        xla_step_bytes=_xla_step_bytes(compiled),
        host_peak_rss_bytes=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        input="synthetic" if data is None else str(data_dir),
        input_wait_frac=None
        if data is None
        else meter.total_wait / max(sum(meter.step_times), 1e-9),
        profile=profile,
    )


def _batches(rc: config_lib.RunConfig, data, trainer: Trainer, n: int):
    """Synthetic batches already on the devices, or n real ones through the input pipeline."""
    model_cfg = trainer.model.config
    if data is None:
        return _batches_synthetic(model_cfg, rc.train.batch_size, trainer.batch_sharding)
    return _batches_from_data(data, rc, model_cfg, trainer, n)


def _compile_and_start(trainer: Trainer, state: Any, batch: jax.Array, rng: jax.Array):
    """(compiled step, compile seconds, state after one step): the first call also pays
    one-time set-up, so it is run before any timing."""
    t0 = time.perf_counter()
    compiled = _compile(trainer, state, batch, rng)
    compile_s = time.perf_counter() - t0
    state, _ = compiled(state, batch, rng)
    return compiled, compile_s, state


def _meter(rc: config_lib.RunConfig, trainer: Trainer) -> StepMeter:
    """The training loop's meter for this shape."""
    model_cfg = trainer.model.config
    n_no_pos = count_params(trainer.state_shapes.params, exclude_positions=True)
    peak = metrics_lib.peak_flops_per_device(override=rc.train.peak_flops)
    tokens_per_step = rc.train.batch_size * model_cfg.block_size
    return StepMeter(
        tokens_per_step, flops_per_token(model_cfg, n_no_pos), jax.device_count(), peak
    )


def _setting(rc: config_lib.RunConfig, trainer: Trainer) -> dict[str, Any]:
    """The BenchResult fields that say what ran where."""
    model_cfg, params = trainer.model.config, trainer.state_shapes.params
    return dict(
        date=datetime.date.today().isoformat(),
        device_kind=jax.devices()[0].device_kind,
        platform=jax.devices()[0].platform,
        n_devices=jax.device_count(),
        jax_version=jax.__version__,
        model=dataclasses.asdict(model_cfg),
        mesh=dict(trainer.mesh.shape),
        batch_size=rc.train.batch_size,
        microbatches=rc.train.microbatches,
        tokens_per_step=rc.train.batch_size * model_cfg.block_size,
        n_params=count_params(params),
        n_params_no_pos=count_params(params, exclude_positions=True),
    )


def _profile(compiled, state, batches, rng, n_steps: int, profile_dir: str | Path):
    """Trace n_steps more steps into profile_dir; the operations by device time."""
    holder = {"state": state}

    def one_step():
        holder["state"], metrics = compiled(holder["state"], next(batches), rng)
        return metrics["loss"]

    profile_ops.trace_steps(one_step, n_steps, profile_dir)
    return profile_ops.top_ops(profile_dir, n_steps, compiled.as_text(), None)


def _gb(n: int | None) -> str:
    return "n/a" if n is None else f"{n / 1e9:.3f} GB"


def format_result(r: BenchResult) -> str:
    """The result as the text the CLI prints; every derived figure names its formula."""
    m = r.model
    xla_fpt = "n/a"
    if r.xla_flops_per_step:
        xla_fpt = f"{r.xla_flops_per_step * r.n_devices / r.tokens_per_step:.4g}"
    if r.mfu is None:
        mfu = (
            f"n/a: no peak FLOP/s known for device kind {r.device_kind!r} "
            "(set --config.train.peak_flops=FLOP/s per device)"
        )
    else:
        mfu = f"{100 * r.mfu:.1f}% of {r.peak_flops / 1e12:.0f} TFLOP/s per device"
    if r.input_wait_frac is None:
        wait = "synthetic tokens already on the devices (no input pipeline; use --data DIR)"
    else:
        wait = f"{100 * r.input_wait_frac:.2f}% of the step time waiting for input ({r.input})"
    p10, p90 = np.percentile(r.step_s, [10, 90]) * 1000
    lines = [
        f"jaxgpt.bench {r.date}: {r.n_devices} × {r.device_kind} ({r.platform}), "
        f"jax {r.jax_version}, mesh {r.mesh}",
        f"model      {r.n_params:,} params ({r.n_params_no_pos:,} without wpe): {m['n_layer']} "
        f"layers, {m['n_head']} heads, width {m['n_embd']}, context {m['block_size']}, vocab "
        f"{m['vocab_size']}",
        f"fast paths dtype {m['dtype']} (params {m['param_dtype']}), remat {m['remat']}"
        + (f" {list(m['remat_names'])}" if m["remat"] == "names" else "")
        + f", scan_layers {m['scan_layers']}, attention {m['attention']}, loss_chunk "
        f"{m['loss_chunk']}",
        f"batch      {r.batch_size} × {m['block_size']} = {r.tokens_per_step:,} tokens/step in "
        f"{r.microbatches} microbatch(es)",
        f"compile    {r.compile_s:.2f} s",
        f"step       {1000 * r.median_step_s:.2f} ms median, {1000 * np.mean(r.step_s):.2f} mean "
        f"(p10 {p10:.2f}, p90 {p90:.2f}) over "
        f"{r.steps} steps after {r.warmup} warm-up, one step always in flight",
        f"tokens/s   {r.tokens_per_s:,.0f}",
        f"model      {r.model_flops_per_s / 1e12:.4g} TFLOP/s = flops_per_token × tokens/s, "
        f"flops_per_token = 6·N + 12·L·H·Q·T = {r.flops_per_token:.4g} (XLA counts {xla_fpt})",
        f"MFU        {mfu}",
        f"           {metrics_lib.MFU_FORMULA}",
        f"memory     device peak {_gb(r.peak_memory_bytes)}; XLA plan per device "
        f"{_gb(r.xla_step_bytes)} (arguments + outputs + temporaries − donated); host peak "
        f"RSS {_gb(r.host_peak_rss_bytes)}",
        f"input      {wait}",
    ]
    if r.profile:
        lines.append(
            "profile    device time per step by operation (fwd / bwd / update; kernels summed "
            "over devices):"
        )
        lines += [
            f"  {op.ms_per_step:9.3f} ms  ×{op.kernels_per_step:<5.0f} {op.name}"
            for op in r.profile[:PROFILE_LINES]
        ]
    return "\n".join(lines)
