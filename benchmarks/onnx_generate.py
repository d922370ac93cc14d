"""Generation tokens/s from an ONNX export: onnxruntime with and without the KV cache, against
jaxgpt's own sampler and `transformers` generate on the same weights, in one run.

    python benchmarks/onnx_generate.py [--models gpt2_4l256 llama_tiny] [--batch 1 8]
        [--prompt_len 32] [--new 96] [--repeats 5] [--threads 0]

Models (random weights: speed does not depend on what they say; vocabulary 2048):
gpt2_4l256 is a GPT-2 of 4 layers, 4 heads, width 256, context 256; llama_tiny is the
configs/llama_tiny.py preset (4 layers, 4 heads, 2 key/value heads, width 128, context 128,
rotary, RMSNorm, SwiGLU). Each is exported as `jaxgpt.export --format onnx` exports (the same
graph and config.json) and as a Hugging Face folder that `transformers` loads back.

Engines, all producing exactly --new tokens per row (no end-of-text stop), greedy and sampling
(temperature 1, no top-k/top-p):
  ort cache    jaxgpt.interop.onnx_generate: prefill, then one token per step with the past
  ort no cache the same graph fed the whole text at every token (empty past), which is what the
               graph without a cache (jaxgpt before issue 18) forced
  jaxgpt       jaxgpt.decode.generate.generate_batch (jitted KV-cache loop; compile apart)
  transformers AutoModelForCausalLM.generate(use_cache=True) on the exported folder (torch CPU)
Each cell is the median of --repeats timed calls after one warm-up call, the engines taking
turns in every repeat (load from other processes falls on all alike). tokens/s = batch × new ÷
seconds per call (prefill included). The load average is printed before and after.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import tempfile
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from generate_speed import jaxgpt_runner, timed, transformers_runner

from jaxgpt.config import load_config_file, model_config, run_config
from jaxgpt.interop.onnx import onnx_config, to_onnx, torch_model
from jaxgpt.interop.onnx_generate import generate, load_onnx
from jaxgpt.model import GPT, GPTConfig

VOCAB = 2048
MODELS = {
    "gpt2_4l256": lambda: GPTConfig(
        vocab_size=VOCAB, block_size=256, n_layer=4, n_head=4, n_embd=256, dropout=0.0
    ),
    "llama_tiny": lambda: model_config(run_config(load_config_file("llama_tiny")).model, VOCAB),
}


def load_average() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def export(cfg: GPTConfig, params, folder: Path, threads: int):
    """The ONNX folder (graph + config.json) and the HF model loaded back from its folder."""
    import transformers

    to_onnx(params, cfg, folder / "onnx" / "model.onnx")
    config = onnx_config(cfg, eot_id=0, tokenizer_vocab_size=cfg.vocab_size, step=0)
    config.update(bos_token_id=None, eos_token_id=None)  # no stop: every call makes --new tokens
    (folder / "onnx" / "config.json").write_text(json.dumps(config))
    torch_model(params, cfg).save_pretrained(folder / "hf")
    hf = transformers.AutoModelForCausalLM.from_pretrained(folder / "hf", local_files_only=True)
    return load_onnx(folder / "onnx", threads), hf.eval()


def ort_runner(lm, prompts: list[list[int]], new: int, sample: bool, use_cache: bool):
    def run():
        out = generate(lm, prompts, new, seed=0, temperature=float(sample), use_cache=use_cache)
        assert all(len(row) == new for row in out)
        return out

    return run


def bench_model(name: str, args: argparse.Namespace) -> None:
    cfg = dataclasses.replace(MODELS[name](), dropout=0.0)
    model = GPT(cfg)
    params = nn.unbox(model.init(jax.random.key(0), jnp.zeros((1, 8), jnp.int32))["params"])
    params = jax.tree.map(np.asarray, params)
    with tempfile.TemporaryDirectory(prefix="onnx-bench-") as tmp:
        lm, hf = export(cfg, params, Path(tmp), args.threads)
        print(
            f"\n{name}: {cfg.n_layer}L {cfg.n_head}H (kv {cfg.kv_heads}) {cfg.n_embd}D "
            f"T={cfg.block_size} V={cfg.vocab_size}, {cfg.position}/{cfg.norm}/{cfg.mlp}"
        )
        engines = ("ort cache", "ort no cache", "jaxgpt", "transformers")
        print(f"{'batch':>5} {'mode':>6} | " + " | ".join(f"{e:>12}" for e in engines) + " |"
              f" {'cache ÷ no cache':>16} {'ort ÷ jaxgpt':>12} {'ort ÷ hf':>8}")  # fmt: skip
        for batch in args.batch:
            rng = np.random.default_rng(batch)
            prompts = rng.integers(0, cfg.vocab_size, (batch, args.prompt_len)).tolist()
            greedy = {}
            for mode in ("greedy", "sample"):
                sample = mode == "sample"
                runners = [
                    ort_runner(lm, prompts, args.new, sample, use_cache=True),
                    ort_runner(lm, prompts, args.new, sample, use_cache=False),
                    jaxgpt_runner(model, params, prompts, args.new, sample),
                    transformers_runner(hf, prompts, args.new, sample),
                ]
                if not sample:  # the engines agree on the text before their speed counts
                    greedy = {e: r() for e, r in zip(engines[:3], runners, strict=False)}
                seconds = [median for _, median in timed(runners, args.repeats)]
                rate = [batch * args.new / s for s in seconds]
                cells = " | ".join(f"{r:>12.0f}" for r in rate)
                print(
                    f"{batch:>5} {mode:>6} | {cells} | {rate[0] / rate[1]:>15.1f}x "
                    f"{rate[0] / rate[2]:>11.2f}x {rate[0] / rate[3]:>7.2f}x",
                    flush=True,
                )
            same = greedy["ort cache"] == greedy["ort no cache"] == greedy["jaxgpt"]
            print(f"      greedy tokens: ort cache = ort no cache = jaxgpt: {same}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    p.add_argument("--batch", type=int, nargs="+", default=[1, 8])
    p.add_argument("--prompt_len", type=int, default=32)
    p.add_argument("--new", type=int, default=96)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument(
        "--threads",
        type=int,
        default=0,
        help="onnxruntime and torch intra-op threads (0 = their defaults, one per core); on a "
        "machine other processes load, 1 avoids threads spinning against each other",
    )
    args = p.parse_args()

    import onnxruntime
    import torch
    import transformers

    if args.threads:
        torch.set_num_threads(args.threads)
    print(
        f"jax {jax.__version__} ({jax.default_backend()}), onnxruntime {onnxruntime.__version__}, "
        f"torch {torch.__version__} ({torch.get_num_threads()} threads), transformers "
        f"{transformers.__version__}; {os.cpu_count()} cores; prompt {args.prompt_len}, "
        f"{args.new} new tokens, median of {args.repeats}; tokens/s"
    )
    print(f"load average before: {load_average()}")
    for name in args.models:
        bench_model(name, args)
    print(f"\nload average after: {load_average()}")


if __name__ == "__main__":
    main()
