"""Where a compiled step's time goes: a jax.profiler trace grouped by model operation.

`trace_steps` runs a few steps under `jax.profiler.trace`; `top_ops` reads the trace's
`*.trace.json.gz`, keeps the events XLA tags with the HLO instruction they ran (`hlo_op`, on CPU
and GPU alike), and groups them by the JAX operation that instruction came from (its `op_name`
metadata in the compiled HLO), with layer indices folded (`h_3/mlp/c_fc` → `h_*/mlp/c_fc`) and
the pass named: `fwd`, `bwd` (the transpose of the forward) or `update` (optimizer, clipping,
loss). That is the table a "profile, find what dominates, fix" loop needs.
"""

from __future__ import annotations

import dataclasses
import gzip
import json
import re
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax

_INSTRUCTION = re.compile(r'^\s*(?:ROOT )?%([\w.\-]+) = .*?op_name="([^"]*)"', re.MULTILINE)


@dataclasses.dataclass(frozen=True)
class OpTime:
    """One model operation's device time per step, summed over its kernels and devices."""

    name: str  # e.g. "bwd h_*/mlp/c_fc/dot_general"
    ms_per_step: float
    kernels_per_step: float


def op_names(hlo_text: str) -> dict[str, str]:
    """HLO instruction name → the JAX op_name it was lowered from (compiled module text)."""
    return {m.group(1): m.group(2) for m in _INSTRUCTION.finditer(hlo_text)}


def readable(op_name: str) -> str:
    """'jit(train_step)/transpose(jvp(GPT))/GPT._trunk/h_3/mlp/c_fc/dot_general' →
    'bwd h_*/mlp/c_fc/dot_general'."""
    phase = "bwd" if "transpose(" in op_name else "fwd" if "jvp(" in op_name else "update"
    parts = [p for p in op_name.split("/") if not re.match(r"^(jit|jvp|transpose)\(", p)]
    path = "/".join(p for p in parts if p not in ("GPT._trunk", "GPT"))
    folded = re.sub(r"h_\d+", "h_*", path)
    return f"{phase} {folded or '(unnamed)'}"


def _key(hlo_op: str, op_name: str | None) -> str:
    kind = hlo_op.split(".")[0]
    if op_name is None:
        return f"(xla) {kind}"
    sources = op_name.split(":")  # an instruction XLA combined from several, e.g. all-reduce
    if len(sources) > 1:
        return f"{readable(sources[0]).split()[0]} {kind} (combined from {len(sources)} ops)"
    return readable(op_name)


def top_ops(
    trace_dir: str | Path, steps: int, hlo_text: str, limit: int | None = 15
) -> list[OpTime]:
    """The `limit` operations (None: all) with the most device time per step in the newest
    trace under trace_dir (written by `trace_steps` over `steps` steps of hlo_text's module)."""
    traces = sorted(Path(trace_dir).glob("plugins/profile/*/*.trace.json.gz"))
    if not traces:
        raise FileNotFoundError(f"no *.trace.json.gz under {trace_dir}/plugins/profile")
    with gzip.open(traces[-1]) as f:
        events = json.load(f)["traceEvents"]
    names = op_names(hlo_text)
    total_us: dict[str, float] = defaultdict(float)
    count: dict[str, int] = defaultdict(int)
    for e in events:
        hlo_op = e.get("args", {}).get("hlo_op")
        if e.get("ph") != "X" or hlo_op is None or e["name"].startswith("end:"):
            continue
        key = _key(hlo_op, names.get(hlo_op))
        total_us[key] += e.get("dur", 0.0)
        count[key] += 1
    ranked = sorted(total_us, key=total_us.__getitem__, reverse=True)[:limit]
    return [OpTime(k, total_us[k] / steps / 1000, count[k] / steps) for k in ranked]


def trace_steps(step: Callable[[], Any], steps: int, trace_dir: str | Path) -> None:
    """Run step() `steps` times under the profiler, waiting for each result."""
    with jax.profiler.trace(str(trace_dir)):
        for _ in range(steps):
            jax.block_until_ready(step())
