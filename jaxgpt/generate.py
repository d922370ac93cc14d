"""Sample text from a trained run: `python -m jaxgpt.generate --workdir DIR --prompt "..."`.

With `--onnx DIR` instead of --workdir, the text comes from an ONNX export folder
(`jaxgpt.export --format onnx`) under onnxruntime with its KV cache; that needs the [onnx] extra.

Prompts come from --prompt (repeatable), --prompt_file (one prompt per line; "-" = stdin), or
stdin when neither is given. All prompts are decoded together in one batch with a KV cache.
--max_tokens may go past the model's context (a sliding window, see jaxgpt.decode); a prompt may
not: it can be at most block_size tokens.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import jax

from jaxgpt import config as config_lib
from jaxgpt import host_memory
from jaxgpt.decode.generate import generate_batch
from jaxgpt.interop.onnx_generate import onnx_texts  # onnxruntime loads only when it runs
from jaxgpt.storage import StorageError
from jaxgpt.workdir import load_run


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = config_lib.make_parser("generate", __doc__)
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--workdir", help="a training run's directory")
    source.add_argument("--onnx", help="an ONNX export folder (jaxgpt.export --format onnx)")
    p.add_argument("--prompt", action="append", default=[], help="a prompt (repeatable)")
    p.add_argument("--prompt_file", help="one prompt per line; - for stdin")
    p.add_argument(
        "--max_tokens",
        type=int,
        default=200,
        help="tokens to generate per sample; may exceed the context: past it, the model sees "
        "the last block_size/2 to block_size tokens (a sliding window)",
    )
    p.add_argument("--temperature", type=float, default=0.8, help="0 = greedy")
    p.add_argument("--top_k", type=int, default=0, help="0 = off")
    p.add_argument("--top_p", type=float, default=1.0, help="1 = off")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--num_samples", type=int, default=1, help="samples per prompt")
    p.add_argument(
        "--step",
        type=int,
        default=None,
        help="checkpoint step (default: the best params if the run kept them, else the latest)",
    )
    return config_lib.parse_args(p, argv)


def read_prompts(args: argparse.Namespace) -> list[str]:
    prompts = list(args.prompt)
    if args.prompt_file:
        if args.prompt_file == "-":
            lines = sys.stdin.read().splitlines()
        else:
            lines = Path(args.prompt_file).read_text().splitlines()
        # One prompt per line; a literal \n inside a line stands for a newline.
        prompts += [line.replace("\\n", "\n") for line in lines if line.strip()]
    if not prompts and not sys.stdin.isatty():
        prompts = [sys.stdin.read()]
    return prompts or [""]


def sample_texts(run, prompts: list[str], args: argparse.Namespace) -> list[str]:
    """Continuations (text) for each prompt × num_samples, in order."""
    tok = run.tokenizer
    ids = [tok.encode(p) or [tok.eot_id] for p in prompts for _ in range(args.num_samples)]
    out = generate_batch(
        run.model,
        run.params,
        ids,
        args.max_tokens,
        jax.random.key(args.seed),
        temperature=args.temperature,
        top_k=args.top_k,
        top_p=args.top_p,
        vocab_limit=tok.vocab_size,
        eot_id=tok.eot_id,
    )
    return [tok.decode([t for t in row if t != tok.eot_id]) for row in out]


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    host_memory.keep_freed_memory()
    if args.max_tokens < 1 or args.num_samples < 1:
        sys.exit("error: --max_tokens and --num_samples must be at least 1")
    try:
        if args.onnx:
            prompts = read_prompts(args)
            settings = (args.num_samples, args.seed, args.temperature, args.top_k, args.top_p)
            texts = onnx_texts(args.onnx, prompts, args.max_tokens, *settings)
        else:
            run = load_run(args.workdir, args.step)
            prompts = read_prompts(args)
            texts = sample_texts(run, prompts, args)
    except (ValueError, FileNotFoundError, ModuleNotFoundError, StorageError) as e:
        sys.exit(f"error: {e}")
    for i, text in enumerate(texts):
        prompt = prompts[i // args.num_samples]
        if len(texts) > 1:
            print(f"── sample {i + 1} " + "─" * 40)
        print(prompt + text)


if __name__ == "__main__":
    main()
