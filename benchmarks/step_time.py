"""Median train-step time of jaxgpt vs a PyTorch eager model of the same shape, in one run.

Default shape: the char-level Shakespeare baseline (4 layers, 4 heads, width 128, T=64,
batch 12, vocab 65). Both sides time forward + backward + clip + AdamW and wait for the result
of every step (block_until_ready / loss.item()), on synthetic tokens, after warm-up. The two
run in alternating rounds of --round steps in one process, so both see the same machine load.

jaxgpt runs as `python -m jaxgpt.train` would on this host: glibc keeps freed memory
(jaxgpt/host_memory.py) and the host is split into one device per core, data-parallel
(jaxgpt/cpu_devices.py, --devices 0). --compare_one_device also times one device on all cores.

    python benchmarks/step_time.py [--steps 200] [--compare_one_device] [--n_layer 4 ...]
    python benchmarks/step_time.py --devices 2 --fsdp   # parameters sharded over two devices
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import jax
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from jaxgpt import cpu_devices, host_memory
from jaxgpt.model import GPT, GPTConfig
from jaxgpt.optimizer import OptConfig, make_optimizer, make_schedule
from jaxgpt.sharding import MeshConfig, make_mesh
from jaxgpt.state import make_trainer, next_token_loss

RULES = (("batch", ("data", "fsdp")), ("embed", "fsdp"))


def _time(fn, steps: int, warmup: int) -> list[float]:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return times


def jax_stepper(args: argparse.Namespace):
    """(step function that runs one train step and waits for its loss, compile seconds,
    the trainer and model) for the shape and fast-path switches in args."""
    cfg = GPTConfig(
        vocab_size=args.vocab_size,
        block_size=args.block_size,
        n_layer=args.n_layer,
        n_head=args.n_head,
        n_embd=args.n_embd,
        dtype=args.dtype,
        remat=args.remat,
        scan_layers=args.scan_layers,
        attention=args.attention,
        loss_chunk=args.loss_chunk,
    )
    model = GPT(cfg)
    opt = OptConfig(lr=1e-3, b2=0.99, warmup_steps=10)
    devices = jax.devices()[: args.devices]
    n = len(devices)
    mesh_cfg = MeshConfig(1, n, 1, RULES) if args.fsdp else MeshConfig(n, 1, 1, RULES)
    mesh = make_mesh(mesh_cfg, devices)
    trainer = make_trainer(
        model, make_optimizer(opt, 10_000), make_schedule(opt, 10_000), mesh, RULES
    )
    t0 = time.perf_counter()
    state = trainer.init(jax.random.key(0))
    tokens = np.random.default_rng(0).integers(
        0, args.vocab_size, (64, args.batch_size, args.block_size + 1)
    )
    batches = [jax.device_put(b.astype(np.int32), trainer.batch_sharding) for b in tokens]
    rng = jax.random.key(1)
    state, m = trainer.step(state, batches[0], rng)
    jax.block_until_ready(m)
    compile_s = time.perf_counter() - t0
    i = 0

    def step():
        nonlocal state, i
        state, m = trainer.step(state, batches[i % len(batches)], rng)
        i += 1
        m["loss"].block_until_ready()

    return step, compile_s, model, lambda: (state.params, batches[0])


def breakdown(model, params_and_batch, steps: int, warmup: int) -> dict:
    """Median ms of the forward pass and of forward+backward alone (unsharded)."""
    params, batch = params_and_batch()
    fwd = jax.jit(lambda p, b: next_token_loss(p, model, b, None))
    fwd_bwd = jax.jit(jax.grad(lambda p, b: next_token_loss(p, model, b, None)))
    fwd_times = _time(lambda: fwd(params, batch).block_until_ready(), steps, warmup)
    bwd_times = _time(lambda: jax.block_until_ready(fwd_bwd(params, batch)), steps, warmup)
    return {"forward_ms": _ms(fwd_times), "forward_backward_ms": _ms(bwd_times)}


def _ms(xs: list[float]) -> float:
    return round(1000 * statistics.median(xs), 2)


def interleaved(steppers: dict, steps: int, warmup: int, round_steps: int) -> dict:
    """Per-step seconds of each stepper, run in alternating rounds of round_steps, so that
    both sides see the same machine load (the shared VM's load drifts within minutes)."""
    for step in steppers.values():
        for _ in range(warmup):
            step()
    times: dict[str, list[float]] = {name: [] for name in steppers}
    while min(len(t) for t in times.values()) < steps:
        for name, step in steppers.items():
            times[name] += _time(step, min(round_steps, steps - len(times[name])), 0)
    return times


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    for name, default in (
        ("n_layer", 4), ("n_head", 4), ("n_embd", 128), ("block_size", 64), ("batch_size", 12),
        ("vocab_size", 65), ("steps", 200), ("warmup", 20), ("round", 10), ("loss_chunk", 0),
    ):  # fmt: skip
        p.add_argument(f"--{name}", type=int, default=default)
    p.add_argument("--dtype", default="float32")
    p.add_argument("--remat", default="none", help="none | full | dots | names")
    p.add_argument("--attention", default="auto", help="auto | xla | einsum | cudnn")
    p.add_argument("--scan_layers", action="store_true")
    p.add_argument(
        "--devices",
        type=int,
        default=0,
        help="CPU devices (0 = as jaxgpt.train: one per core, dividing the batch)",
    )
    p.add_argument(
        "--compare_one_device", action="store_true", help="also time jaxgpt on one device"
    )
    p.add_argument("--fsdp", action="store_true", help="shard over the devices with fsdp, not data")
    p.add_argument("--no_torch", action="store_true", help="skip the PyTorch side")
    p.add_argument("--torch_threads", type=int, default=None, help="torch.set_num_threads")
    p.add_argument(
        "--keep_malloc_defaults",
        action="store_true",
        help="skip host_memory.keep_freed_memory (glibc's defaults: a page-faulting XLA step)",
    )
    p.add_argument("--breakdown", action="store_true", help="also time forward, forward+backward")
    args = p.parse_args()
    if args.breakdown and args.devices != 1:
        p.error("--breakdown times the unsharded model: add --devices 1")
    if not args.keep_malloc_defaults:
        host_memory.keep_freed_memory()  # as jaxgpt.train does; applies to both sides
    if args.devices == 0:
        mesh = MeshConfig(1, -1, 1) if args.fsdp else MeshConfig()
        args.devices = cpu_devices.auto_count(mesh, (args.batch_size,), cpu_devices.usable_cores())
    if "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
        jax.config.update("jax_num_cpu_devices", args.devices)
    shape = {
        k: getattr(args, k)
        for k in ("n_layer", "n_head", "n_embd", "block_size", "batch_size", "vocab_size")
    }
    jax_step, compile_s, model, params_and_batch = jax_stepper(args)
    steppers = {"jax": jax_step}
    if args.compare_one_device and args.devices > 1:
        one = argparse.Namespace(**{**vars(args), "devices": 1, "fsdp": False})
        steppers["jax_1"] = jax_stepper(one)[0]
    if not args.no_torch:
        from torch_baseline import TorchStepper

        torch_stepper = TorchStepper(**shape, threads=args.torch_threads)
        steppers["torch"] = torch_stepper.step
    times = interleaved(steppers, args.steps, args.warmup, args.round)
    jax_result = {
        "median_ms": _ms(times["jax"]),
        "p10_ms": round(1000 * float(np.percentile(times["jax"], 10)), 2),
        "p90_ms": round(1000 * float(np.percentile(times["jax"], 90)), 2),
        "compile_s": round(compile_s, 2),
        "jax_version": jax.__version__,
        "device": jax.devices()[0].device_kind,
    }
    if args.breakdown:
        jax_result.update(breakdown(model, params_and_batch, args.steps, args.warmup))
    print(
        f"shape: {shape}, {args.steps} timed steps each after {args.warmup} warm-up, "
        f"in alternating rounds of {args.round}"
    )
    parts = ""
    if "forward_ms" in jax_result:
        parts = (
            f"; forward {jax_result['forward_ms']} ms, forward+backward "
            f"{jax_result['forward_backward_ms']} ms"
        )
    if args.devices > 1:
        parts = f" on {args.devices} devices ({'fsdp' if args.fsdp else 'data'})"
    print(
        f"jaxgpt  {jax_result['median_ms']:8.2f} ms/step median "
        f"(p10 {jax_result['p10_ms']}, p90 {jax_result['p90_ms']}{parts}; "
        f"compile {jax_result['compile_s']} s)"
    )
    result = {"shape": shape, "jax": jax_result}
    if "jax_1" in times:
        result["jax_one_device_ms"] = _ms(times["jax_1"])
        print(f"jaxgpt  {result['jax_one_device_ms']:8.2f} ms/step median on 1 device (all cores)")
    if not args.no_torch:
        from torch_baseline import summarize

        torch_result = {**summarize([1000 * t for t in times["torch"]]), **torch_stepper.info()}
        ratio = torch_result["median_ms"] / jax_result["median_ms"]
        print(
            f"torch   {torch_result['median_ms']:8.2f} ms/step median (eager, "
            f"{torch_result['threads']} threads, torch {torch_result['torch_version']})"
        )
        verdict = "jaxgpt faster" if ratio > 1 else "torch faster"
        print(f"ratio   torch/jaxgpt = {ratio:.2f}x ({verdict})")
        result.update(torch=torch_result, torch_over_jax=round(ratio, 3))
        if "jax_1" in times:
            one_ratio = torch_result["median_ms"] / result["jax_one_device_ms"]
            print(f"ratio   torch/jaxgpt on 1 device = {one_ratio:.2f}x")
            result["torch_over_jax_one_device"] = round(one_ratio, 3)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
