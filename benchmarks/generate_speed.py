"""Generation tokens/s: jaxgpt's KV-cache sampler vs `transformers` generate on the same weights.

    python benchmarks/generate_speed.py [--batch 1 16] [--prompt_len 32] [--new 96] [--repeats 7]

The model has configs/tiny.py's shapes (4 layers, 4 heads, width 128, context 128, vocabulary
2048) with random weights: speed does not depend on what the weights say. The same weights go to
a `transformers` GPT2LMHeadModel (torch, CPU, `generate(use_cache=True)`). Both produce exactly
`--new` tokens per row (no end-of-text stop), greedy and sampling over the full vocabulary
(top_k 0, top_p 1, temperature 1). Each cell is the median of `--repeats` timed calls after
one warm-up call, the two libraries taking turns; the warm-up's extra time (jit compile for
jaxgpt) is reported apart. ratio = jaxgpt tokens/s ÷ transformers tokens/s.
tokens/s counts generated tokens only: batch × new / seconds per call (prefill included).
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxgpt.decode.generate import generate_batch
from jaxgpt.model import GPT, GPTConfig

TINY = GPTConfig(vocab_size=2048, block_size=128, n_layer=4, n_head=4, n_embd=128, dropout=0.0)


def timed(runners: list[Callable[[], object]], repeats: int) -> list[tuple[float, float]]:
    """Per runner: (first-call seconds − median, median seconds of `repeats` later calls).

    The runners take turns within each repeat, so load from other processes on a shared machine
    falls on all of them alike.
    """
    firsts, times = [], [[] for _ in runners]
    for run in runners:
        start = time.perf_counter()
        run()
        firsts.append(time.perf_counter() - start)
    for _ in range(repeats):
        for run, spent in zip(runners, times, strict=True):
            start = time.perf_counter()
            run()
            spent.append(time.perf_counter() - start)
    medians = [statistics.median(t) for t in times]
    return [(max(f - m, 0.0), m) for f, m in zip(firsts, medians, strict=True)]


def jaxgpt_runner(model: GPT, params, prompts: list[list[int]], new: int, sample: bool):
    rng = jax.random.key(0)
    temperature = 1.0 if sample else 0.0

    def run() -> list[list[int]]:
        # generate_batch returns Python lists: the device work is complete when it returns.
        return generate_batch(model, params, prompts, new, rng, temperature=temperature)

    return run


def transformers_runner(hf_model, prompts: list[list[int]], new: int, sample: bool):
    import torch

    ids = torch.tensor(prompts, dtype=torch.long)
    settings = {
        "attention_mask": torch.ones_like(ids),
        "max_new_tokens": new,
        "min_new_tokens": new,
        "use_cache": True,
        "pad_token_id": 0,
        "eos_token_id": None,
        "do_sample": sample,
    }
    if sample:  # transformers' defaults filter (top_k 50); jaxgpt's here do not
        settings.update(top_k=0, top_p=1.0, temperature=1.0)

    def run():
        torch.manual_seed(0)
        with torch.inference_mode():
            out = hf_model.generate(ids, **settings)
        assert out.shape[1] == ids.shape[1] + new
        return out

    return run


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--batch", type=int, nargs="+", default=[1, 16])
    p.add_argument("--prompt_len", type=int, default=32)
    p.add_argument("--new", type=int, default=96)
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--skip_transformers", action="store_true")
    p.add_argument(
        "--torch_threads",
        type=int,
        default=0,
        help="torch intra-op threads (0 = torch's default, one per core). On a machine other "
        "processes load, 1 avoids OpenMP threads spinning against each other",
    )
    args = p.parse_args()

    import torch

    if args.torch_threads:
        torch.set_num_threads(args.torch_threads)

    from jaxgpt.interop.onnx import torch_model

    cfg = TINY
    model = GPT(cfg)
    params = nn.unbox(model.init(jax.random.key(0), jnp.zeros((1, 8), jnp.int32))["params"])
    params = jax.tree.map(np.asarray, params)
    hf = torch_model(params, cfg)
    print(
        f"jax {jax.__version__} ({jax.default_backend()}, {jax.device_count()} device), torch "
        f"{torch.__version__} ({torch.get_num_threads()} threads); model {cfg.n_layer}L "
        f"{cfg.n_head}H {cfg.n_embd}D T={cfg.block_size} V={cfg.vocab_size}; prompt "
        f"{args.prompt_len}, {args.new} new tokens, median of {args.repeats}"
    )
    header = f"{'batch':>5} {'mode':>6} | {'jaxgpt tok/s':>12} {'compile s':>9} |"
    print(header + f" {'transformers tok/s':>18} {'warm-up s':>9} | {'ratio':>6}")
    for batch in args.batch:
        rng = np.random.default_rng(batch)
        prompts = rng.integers(0, cfg.vocab_size, (batch, args.prompt_len)).tolist()
        for mode in ("greedy", "sample"):
            sample = mode == "sample"
            n_tokens = batch * args.new
            runners = [jaxgpt_runner(model, params, prompts, args.new, sample)]
            if not args.skip_transformers:
                runners.append(transformers_runner(hf, prompts, args.new, sample))
            (compile_s, ours), *rest = timed(runners, args.repeats)
            line = f"{batch:>5} {mode:>6} | {n_tokens / ours:>12.0f} {compile_s:>9.2f} |"
            if rest:
                (warm_s, theirs) = rest[0]
                line += f" {n_tokens / theirs:>18.0f} {warm_s:>9.2f} | {theirs / ours:>5.2f}x"
            print(line, flush=True)


if __name__ == "__main__":
    main()
