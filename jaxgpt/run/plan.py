"""Plan a run before paying for it: memory per device, whether it fits, and how long it takes
(the library behind `python -m jaxgpt.plan`).

The per-device byte counts come from jaxgpt.estimates (shapes only, nothing allocated); this
module adds them up, judges the fit, suggests changes that would make it fit, and prints.
"""

from __future__ import annotations

import copy
import dataclasses
from typing import Any

import jax.numpy as jnp
import ml_collections

from jaxgpt import config as config_lib
from jaxgpt import metrics as metrics_lib
from jaxgpt import sharding as sharding_lib
from jaxgpt.estimates import (
    Activations,
    abstract_state,
    activation_bytes,
    logical_split,
    state_memory,
)
from jaxgpt.model import GPTConfig, count_params, flops_per_token
from jaxgpt.run.setup import batch_split_problem, eval_batch_size

# Planned peak = estimate × (1 + HEADROOM): room for allocator fragmentation, collective
# buffers and cuBLAS/cuDNN workspaces that no shape-based estimate sees.
HEADROOM = 0.10
GB = 1e9
LOSS_CHUNK = 128  # positions per chunk the planner suggests: [B, 128, V] logits at a time
TIME_FORMULA = "step time = batch · T · flops_per_token / (devices · peak FLOP/s · MFU)"


@dataclasses.dataclass(frozen=True)
class Suggestion:
    """A change to the config and whether the run would then fit."""

    change: str
    overrides: tuple[tuple[str, Any], ...]  # (dotted config key, value)
    total_bytes: int
    fits: bool

    @property
    def flags(self) -> str:
        return " ".join(f"--config.{k}={v}" for k, v in self.overrides)


@dataclasses.dataclass(frozen=True)
class Plan:
    """Everything plan() works out; bytes are per device."""

    model: GPTConfig
    mesh: dict[str, int]
    n_devices: int
    device_kind: str
    device_memory_bytes: int
    batch_size: int
    microbatches: int
    batch_split: int  # ways the batch is split (mesh data × fsdp)
    seqs_per_device: int  # of one microbatch
    steps: int
    n_params: int
    n_params_no_pos: int
    param_bytes: int
    opt_bytes: int
    batch_bytes: int
    grad_bytes: int
    grad_accum_bytes: int
    update_bytes: int
    gathered_bytes: int
    activations: Activations
    tokens_per_step: int
    flops_per_token: float
    peak_flops: float
    mfu: float
    warnings: tuple[str, ...] = ()
    suggestions: tuple[Suggestion, ...] = ()

    @property
    def state_bytes(self) -> int:
        """The train step's argument: parameters, optimizer state and the token batch."""
        return self.param_bytes + self.opt_bytes + self.batch_bytes

    @property
    def temp_bytes(self) -> int:
        """What XLA allocates inside the step (its temp_size_in_bytes)."""
        extra = self.grad_accum_bytes + self.update_bytes + self.gathered_bytes
        return self.grad_bytes + extra + self.activations.total

    @property
    def estimate_bytes(self) -> int:
        return self.state_bytes + self.temp_bytes

    @property
    def total_bytes(self) -> int:
        return round(self.estimate_bytes * (1 + HEADROOM))

    @property
    def margin_bytes(self) -> int:
        return self.device_memory_bytes - self.total_bytes

    @property
    def fits(self) -> bool:
        return self.margin_bytes >= 0

    @property
    def step_seconds(self) -> float:
        flops = self.tokens_per_step * self.flops_per_token
        return flops / (self.n_devices * self.peak_flops * self.mfu)

    @property
    def total_seconds(self) -> float:
        return self.steps * self.step_seconds


def resolve_model(rc: config_lib.RunConfig) -> GPTConfig:
    """GPTConfig with the vocabulary the trainer would use (explicit or the tokenizer's target)."""
    if rc.model.vocab_size == 0 and rc.data.tokenizer.vocab_size <= 0:
        raise ValueError(
            "model.vocab_size=0 follows the tokenizer, whose size is unknown until the data is "
            "prepared (data.tokenizer.vocab_size=0): pass --config.model.vocab_size=N"
        )
    # An explicit size is checked against the real tokenizer when training starts.
    follow = rc.model.vocab_size == 0
    model = config_lib.model_config(rc.model, rc.data.tokenizer.vocab_size if follow else 0)
    if model.doc_mask and model.eot_id < 0:
        # The tokenizer's end-of-text id is known once the data is prepared; shapes and costs
        # do not depend on which id it is (bench's synthetic batches mask at token 0).
        model = dataclasses.replace(model, eot_id=0)
    return model


def peak_flops_for(device_kind: str, override: float = 0.0) -> float:
    """Peak FLOP/s of one device of this kind (metrics.PEAK_FLOPS), or the override."""
    if override > 0:
        return override
    if (peak := metrics_lib.peak_flops_for_kind(device_kind)) is not None:
        return peak
    known = ", ".join(name for name, _ in metrics_lib.PEAK_FLOPS)
    raise ValueError(
        f"no peak FLOP/s known for device kind {device_kind!r} (known: {known}); "
        "pass --peak_flops=FLOP/s per device"
    )


def plan(
    config: ml_collections.ConfigDict,
    n_devices: int,
    device_memory_gb: float,
    mfu: float,
    device_kind: str,
    peak_flops: float = 0,
    *,
    suggest: bool = True,
) -> Plan:
    """Memory per device, fit and time of the run a config describes, from shapes alone.

    Args:
        config: a config from configs/*.py (see configs/base.py).
        n_devices: devices in the whole run; fills the mesh axis set to -1.
        device_memory_gb: memory of one device, in 1e9 bytes.
        mfu: model FLOPs utilization assumed for the time estimate, in (0, 1].
        device_kind: jax's device_kind or a part of it ("H100", "TPU v5p"), for the peak.
        peak_flops: peak FLOP/s per device; overrides the device_kind lookup when > 0.
        suggest: when the run does not fit, also plan the changes that would cut memory.
    """
    if n_devices <= 0 or device_memory_gb <= 0:
        raise ValueError("--devices and --device_memory_gb must be positive")
    if not 0 < mfu <= 1:
        raise ValueError(f"--mfu must be in (0, 1], got {mfu}")
    rc = config_lib.run_config(config)
    peak = peak_flops_for(device_kind, peak_flops)
    result = _plan(rc, n_devices, round(device_memory_gb * GB), mfu, device_kind, peak)
    if suggest and not result.fits:
        result = dataclasses.replace(result, suggestions=suggestions(config, result))
    return result


def _plan(
    rc: config_lib.RunConfig, n_devices: int, memory: int, mfu: float, kind: str, peak: float
) -> Plan:
    """The plan of a typed config, without suggestions."""
    model = resolve_model(rc)
    shape = sharding_lib.resolve_mesh_shape(rc.mesh, n_devices)
    mesh_shape = dict(zip(sharding_lib.MESH_AXES, shape, strict=True))
    n_batch = logical_split(mesh_shape, rc.mesh.rules, "batch")
    seqs = -(-rc.train.micro_batch_size // n_batch)
    state = state_memory(model, rc.opt, shape, rc.mesh.rules)
    params = abstract_state(model, rc.opt)[0]
    n_no_pos = count_params(params, exclude_positions=True)
    to_float32 = 4 // jnp.dtype(model.weight_dtype).itemsize
    return Plan(
        model=model,
        mesh=mesh_shape,
        n_devices=n_devices,
        device_kind=kind,
        device_memory_bytes=memory,
        batch_size=rc.train.batch_size,
        microbatches=rc.train.microbatches,
        batch_split=n_batch,
        seqs_per_device=seqs,
        steps=rc.train.steps,
        n_params=count_params(params),
        n_params_no_pos=n_no_pos,
        param_bytes=state.params,
        opt_bytes=state.opt,
        batch_bytes=-(-rc.train.batch_size // n_batch) * (model.block_size + 1) * 4,
        # Gradients have the parameters' dtype and sharding; accumulation adds a float32 sum.
        grad_bytes=state.params,
        grad_accum_bytes=state.params * to_float32 if rc.train.microbatches > 1 else 0,
        # clip → Adam → decay → scale materializes about one parameter-sized update tree.
        update_bytes=state.params,
        gathered_bytes=state.gathered,
        activations=activation_bytes(_as_run(model, kind), seqs, mesh_shape, rc.mesh.rules),
        tokens_per_step=rc.train.batch_size * model.block_size,
        flops_per_token=flops_per_token(model, n_no_pos),
        peak_flops=peak,
        mfu=mfu,
        warnings=_warnings(rc.train, n_batch),
    )


def _as_run(model: GPTConfig, device_kind: str) -> GPTConfig:
    """The attention kernel the model will really use there: attention="auto" is cuDNN flash
    attention on NVIDIA GPUs for 16-bit compute (see model.attention), which keeps no
    [B, H, T, T] probabilities."""
    nvidia = any(n in device_kind.upper() for n in ("NVIDIA", "H100", "H200", "A100", "B200"))
    if model.attention == "auto" and nvidia and model.dtype in ("bfloat16", "float16"):
        return dataclasses.replace(model, attention="cudnn")
    return model


def largest_batch(
    config: ml_collections.ConfigDict, n_devices: int, device_memory_gb: float, device_kind: str
) -> int:
    """The largest train.batch_size (a multiple of the data-parallel size, in as many
    microbatches as the config says) whose plan fits; 0 if not even the smallest does."""

    def fits(batch: int) -> bool:
        changed = config_lib.override(copy.deepcopy(config), **{"train.batch_size": batch})
        return plan(changed, n_devices, device_memory_gb, 0.45, device_kind, suggest=False).fits

    rc = config_lib.run_config(config)
    shape = sharding_lib.resolve_mesh_shape(rc.mesh, n_devices)
    step = logical_split(
        dict(zip(sharding_lib.MESH_AXES, shape, strict=True)), rc.mesh.rules, "batch"
    )
    step *= rc.train.microbatches
    if not fits(step):
        return 0
    lo, hi = 1, 2  # in units of `step`: lo fits, hi is unknown
    while fits(hi * step):
        lo, hi = hi, hi * 2
    while hi - lo > 1:  # lo fits, hi does not
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if fits(mid * step) else (lo, mid)
    return lo * step


def _warnings(train: config_lib.TrainConfig, n_batch: int) -> tuple[str, ...]:
    """What the trainer would refuse, said before anyone launches it."""
    problem = batch_split_problem(train, n_batch, eval_batch_size(train))
    if problem is None:
        return ()
    per_device = -(-train.micro_batch_size // n_batch)
    return (f"{problem}: the trainer will refuse it; planned with {per_device} per device",)


Change = tuple[str, dict[str, Any]]  # (what it does, dotted config overrides)


def _try(config: ml_collections.ConfigDict, p: Plan, change: Change) -> Suggestion | None:
    """Plan the config with the change applied; None where the trainer would refuse it."""
    changed = config_lib.override(copy.deepcopy(config), **change[1])
    args = (p.n_devices, p.device_memory_bytes / GB, p.mfu, p.device_kind, p.peak_flops)
    q = plan(changed, *args, suggest=False)
    if set(q.warnings) - set(p.warnings):  # e.g. an fsdp size that does not divide a weight
        return None
    return Suggestion(change[0], tuple(change[1].items()), q.total_bytes, q.fits)


def _first_fit(
    config: ml_collections.ConfigDict, p: Plan, changes: list[Change]
) -> Suggestion | None:
    """The mildest change that fits, else the strongest (changes go from mild to strong)."""
    best = None
    for change in changes:
        best = _try(config, p, change) or best
        if best is not None and best.fits:
            break
    return best


def _fsdp_changes(p: Plan) -> list[Change]:
    """Move devices from the data axis to the fsdp axis: less state per device."""
    pool = p.mesh["data"] * p.mesh["fsdp"]
    sizes = [f for f in range(p.mesh["fsdp"] + 1, pool + 1) if pool % f == 0]
    return [
        (f"more FSDP (data={pool // f}, fsdp={f})", {"mesh.data": pool // f, "mesh.fsdp": f})
        for f in sizes
    ]


def _microbatch_changes(p: Plan) -> list[Change]:
    """More gradient-accumulation steps: fewer activations per device."""
    b, n = p.batch_size, p.batch_split
    # Only counts the trainer accepts: each microbatch splits evenly over the batch axes.
    counts = [m for m in range(p.microbatches + 1, b + 1) if b % m == 0 and (b // m) % n == 0]
    return [
        (f"{m} microbatches of {b // m // n} per device", {"train.microbatches": m}) for m in counts
    ]


def suggestions(config: ml_collections.ConfigDict, p: Plan) -> tuple[Suggestion, ...]:
    """Changes that cut memory, each planned: more FSDP, chunked loss, full remat, more
    microbatches."""
    found = [_first_fit(config, p, _fsdp_changes(p))]
    if p.model.loss_chunk == 0 and p.model.block_size > LOSS_CHUNK:
        chunk = ("chunked cross-entropy (no whole logits)", {"model.loss_chunk": LOSS_CHUNK})
        found.append(_try(config, p, chunk))
    if p.model.remat != "full":
        # With scanned layers, since XLA on CPU was seen to hoist the recomputation of
        # unrolled remat layers back into the forward pass and save nothing.
        remat = {"model.remat": "full", "model.scan_layers": True}
        found.append(_try(config, p, ("rematerialized, scanned layers", remat)))
    found.append(_first_fit(config, p, _microbatch_changes(p)))
    found = [f for f in found if f is not None]
    if len(found) > 1 and not any(f.fits for f in found):
        combined = {k: v for f in found for k, v in f.overrides}
        found.append(_try(config, p, ("all of the above together", combined)))
    return tuple(found)


def _size(n: float) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("KB", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.2f} {unit}"
    return f"{n:.0f} B"


def _duration(seconds: float) -> str:
    for unit, scale, below in (("s", 1, 120), ("min", 60, 7200), ("h", 3600, 172800)):
        if seconds < below:
            return f"{seconds / scale:.3g} {unit}"
    return f"{seconds / 86400:.1f} days"


def _logits_label(c: GPTConfig) -> str:
    if c.loss_chunk > 0:
        return f"  logits of one {min(c.loss_chunk, c.block_size)}-position chunk, with gradient"
    return "  logits and their gradient (float32)"


def _memory_lines(p: Plan) -> list[str]:
    c, act = p.model, p.activations
    kept = c.n_layer * act.saved_per_layer
    rows = [
        (f"parameters ({c.param_dtype})", p.param_bytes),
        ("optimizer state (Adam moments)", p.opt_bytes),
        ("token batch", p.batch_bytes),
        ("gradients", p.grad_bytes),
        ("float32 gradient accumulator", p.grad_accum_bytes),
        ("optimizer update", p.update_bytes),
        ("FSDP-gathered weights", p.gathered_bytes),
        (f"activations, one microbatch (remat={c.remat})", act.total),
        (f"  kept by layers: {c.n_layer} × {_size(act.saved_per_layer)}", kept),
        ("  layer being differentiated", act.layer_working),
        (_logits_label(c), act.logits),
        ("  embedding and ln_f outputs", act.other),
        ("estimate", p.estimate_bytes),
        (f"with {HEADROOM:.0%} headroom", p.total_bytes),
    ]
    return [f"  {name:<46} {_size(n):>10}" for name, n in rows if n or name == "estimate"]


def _fit_lines(p: Plan) -> list[str]:
    memory = _size(p.device_memory_bytes)
    if p.fits:
        lines = [f"fits: yes, {_size(p.total_bytes)} of {memory}, {_size(p.margin_bytes)} to spare"]
        if p.total_bytes > 0.75 * p.device_memory_bytes:
            lines.append(
                "  note: JAX preallocates 75% of GPU memory by default; run with "
                "XLA_CLIENT_MEM_FRACTION=.95"
            )
        return lines
    lines = [f"fits: no, {_size(p.total_bytes)} of {memory}, {_size(-p.margin_bytes)} over"]
    if not p.suggestions:
        lines.append(
            "  no more FSDP, remat or microbatches to try here: consider mesh.tensor > 1, a "
            "smaller train.batch_size, or more devices"
        )
    for s in p.suggestions:
        verdict = "fits" if s.fits else "still does not fit"
        lines.append(f"  try {s.change}: {_size(s.total_bytes)}, {verdict}")
        lines.append(f"      {s.flags}")
    return lines


def format_plan(p: Plan) -> str:
    """The plan as the text the CLI prints."""
    c, m = p.model, p.mesh
    head = [
        f"model     {p.n_params:,} parameters ({p.n_params_no_pos:,} without position "
        f"embeddings): {c.n_layer} layers, {c.n_head} heads, width {c.n_embd}, context "
        f"{c.block_size}, vocab {c.vocab_size}; compute {c.dtype}, params {c.param_dtype}, "
        f"remat {c.remat}{list(c.remat_names) if c.remat == 'names' else ''}"
        f"{', scanned layers' if c.scan_layers else ''}"
        f"{f', loss_chunk {c.loss_chunk}' if c.loss_chunk else ''}",
        f"devices   {p.n_devices} × {p.device_kind}, {_size(p.device_memory_bytes)} each; "
        f"mesh data={m['data']} fsdp={m['fsdp']} tensor={m['tensor']}",
        f"batch     {p.batch_size} sequences × {c.block_size} tokens = {p.tokens_per_step:,} "
        f"tokens/step; {p.microbatches} microbatch(es) of {p.seqs_per_device} sequences "
        "per device",
        *(f"warning   {w}" for w in p.warnings),
        "memory    per device (indented rows break down activations)",
        *_memory_lines(p),
        *_fit_lines(p),
    ]
    device_hours = p.total_seconds * p.n_devices / 3600
    time = [
        f"compute   flops_per_token = 6·N + 12·L·H·Q·T = {p.flops_per_token:.4g} "
        f"(N = {p.n_params_no_pos:,}); peak {p.peak_flops / 1e12:.0f} TFLOP/s per device, "
        f"MFU {p.mfu:.0%}",
        f"time      {TIME_FORMULA} = {_duration(p.step_seconds)}; {p.steps:,} steps = "
        f"{_duration(p.total_seconds)} ({device_hours:,.0f} device-hours)",
    ]
    if c.dtype == "float32":
        time.append("  note: model.dtype=float32 runs below the bf16 peak assumed here")
    return "\n".join(head + time)
