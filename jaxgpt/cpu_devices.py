"""How many JAX devices a CPU host is split into for training.

XLA:CPU runs one step's ops mostly one after another, each on the intra-op thread pool; small
ops and the GEMM library's partial use of the pool leave cores idle. Splitting the host into one
device per core and training data-parallel over them keeps every core on its own share of the
batch: on the 2-core VM the char-level Shakespeare shape's step went from 39.4 to 35.3 ms and a
6-layer, width-384, T=256 model's from 1174 to 980 ms (same runs; docs/performance.md).

`mesh.cpu_devices` picks the count: 0 = auto (one device per core, at most MAX_AUTO, and a count
whose data-parallel share divides the batch), N = exactly N. It must be set before JAX creates its
CPU backend, so train and bench call `configure` first thing. GPU/TPU runs are unaffected: the
count only applies to the CPU backend.
"""

from __future__ import annotations

import math
import os

import jax

from jaxgpt.sharding import MeshConfig

MAX_AUTO = 8  # more devices than this shrink each one's matmuls below what pays for the psum


def usable_cores() -> int:
    """Cores this process may run on (its CPU affinity, which containers and taskset narrow)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS
        return os.cpu_count() or 1


def auto_count(mesh: MeshConfig, batch_sizes: tuple[int, ...], cores: int) -> int:
    """The device count auto picks. With every mesh axis fixed: their product. With data or
    fsdp at -1: the most devices (≤ cores, ≤ MAX_AUTO, a multiple of the fixed axes) whose batch
    split (devices / tensor) divides every batch size. With tensor at -1: the fixed product."""
    sizes = {"data": mesh.data, "fsdp": mesh.fsdp, "tensor": mesh.tensor}
    fixed = math.prod(s for s in sizes.values() if s != -1)
    if -1 not in sizes.values() or sizes["tensor"] == -1:
        return fixed
    best = fixed
    for n in range(fixed, min(cores, MAX_AUTO) + 1, fixed):
        split = n // sizes["tensor"]  # the batch is split over data × fsdp
        if all(b % split == 0 for b in batch_sizes):
            best = n
    return best


def configure(requested: int, mesh: MeshConfig, batch_sizes: tuple[int, ...]) -> str | None:
    """Set jax_num_cpu_devices for this process; a line saying what was done, or None when
    nothing was (the count was already given by XLA_FLAGS or jax config, or JAX has started)."""
    if requested < 0:
        raise ValueError(f"mesh.cpu_devices must be 0 (auto) or a positive count, got {requested}")
    if "xla_force_host_platform_device_count" in os.environ.get("XLA_FLAGS", ""):
        return None
    if jax.config.jax_num_cpu_devices != -1:
        return None
    cores = usable_cores()
    n = requested or auto_count(mesh, batch_sizes, cores)
    try:
        jax.config.update("jax_num_cpu_devices", n)
    except RuntimeError:  # the CPU backend already exists (e.g. train() called in-process)
        return None
    how = "mesh.cpu_devices" if requested else f"auto: {cores} cores, batch {batch_sizes[0]}"
    return f"CPU backend: {n} device{'s' * (n != 1)} ({how})"
