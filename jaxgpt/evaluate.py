"""Evaluate a trained run: `python -m jaxgpt.evaluate --workdir DIR [--sources text:PATH]`.

Reports loss (nats/token), perplexity and bits per byte, which compares models with different
tokenizers. Without --sources it scores the run's own validation split, all of it; with
--sources (same syntax as data.sources) it scores that text, each document followed by EOT.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from jaxgpt import host_memory
from jaxgpt.state import next_token_loss


def token_stream(run, sources: str | None) -> tuple[np.ndarray, int, str]:
    """(tokens, UTF-8 bytes of the text they encode, a description)."""
    from jaxgpt.data import sources as sources_lib
    from jaxgpt.data.dataset import load_dataset

    if not sources:
        data_dir = run.config["data"]["path"] or str(run.path / "data")
        info = load_dataset(data_dir)
        meta = json.loads((Path(data_dir) / "metadata.json").read_text())
        return info.tokens("val").read_all(), meta["splits"]["val"]["bytes"], f"{data_dir} (val)"
    stats = sources_lib.ReadStats()
    pieces, n_bytes = [], 0
    for doc in sources_lib.iter_documents(sources_lib.parse_sources(sources), stats):
        pieces.append(np.asarray([*run.tokenizer.encode(doc), run.tokenizer.eot_id], np.int64))
        n_bytes += len(doc.encode())
    if not pieces:
        raise ValueError(f"{sources} holds no documents")
    return np.concatenate(pieces), n_bytes, sources


def evaluate_stream(run, tokens: np.ndarray, batch_size: int = 8) -> tuple[float, int]:
    """Mean next-token loss over non-overlapping windows covering the stream; tokens scored."""
    T = run.gpt_config.block_size
    n_windows = (len(tokens) - 1) // T
    if n_windows == 0:
        raise ValueError(f"{len(tokens)} tokens is less than one window of {T + 1}")
    windows = np.stack([tokens[i * T : i * T + T + 1] for i in range(n_windows)]).astype(np.int32)
    loss_fn = jax.jit(lambda p, b: next_token_loss(p, run.model, b, None, 1.0))
    total = 0.0
    for start in range(0, n_windows, batch_size):
        total += float(loss_fn(run.params, jnp.asarray(windows[start : start + batch_size])))
    return total / (n_windows * T), n_windows * T


def evaluate(workdir: str, sources: str | None = None, batch_size: int = 8) -> dict:
    """Loss, perplexity and bits per byte of a run on its validation split or other text."""
    from jaxgpt.workdir import load_run

    run = load_run(workdir)
    if not sources:
        from jaxgpt.data.dataset import load_dataset

        info = load_dataset(run.config["data"]["path"] or str(run.path / "data"))
        if info.format == "sft":
            return evaluate_sft(run, info, batch_size)
    tokens, n_bytes, what = token_stream(run, sources)
    started = time.time()
    loss, scored = evaluate_stream(run, tokens, batch_size)
    # Bits per byte: total bits over the bytes of the scored tokens' share of the text.
    scored_bytes = n_bytes * scored / len(tokens)
    return {
        "workdir": str(workdir),
        "step": run.step,
        "data": what,
        "tokens": scored,
        "loss": loss,
        "perplexity": math.exp(min(loss, 50.0)),
        "bits_per_byte": loss * scored / (math.log(2) * scored_bytes),
        "bytes_per_token": n_bytes / len(tokens),
        "seconds": round(time.time() - started, 2),
    }


def evaluate_sft(run, info, batch_size: int) -> dict:
    """Completion-token loss over every validation example of a supervised fine-tuning run."""
    from jaxgpt.data import sft

    started = time.time()
    examples = sft.load_examples(info, "val")
    T = run.gpt_config.block_size
    rows = sft.eval_rows(examples, info.eot_id, T, len(examples) * T, batch_size)
    loss_fn = jax.jit(lambda p, b: next_token_loss(p, run.model, b, None, 1.0))
    total = sum(float(loss_fn(run.params, jnp.asarray(batch))) for batch in rows)
    scored = int(np.sum(rows[:, :, 1:] >= 0))
    loss = total / scored
    return {
        "workdir": str(run.path),
        "step": run.step,
        "data": f"{info.path} (val, {len(examples):,} examples, completion tokens)",
        "tokens": scored,
        "loss": loss,
        "perplexity": math.exp(min(loss, 50.0)),
        "bits_per_byte": None,  # prompts are not scored, so there is no byte count to divide
        "bytes_per_token": None,
        "seconds": round(time.time() - started, 2),
    }


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m jaxgpt.evaluate", description=__doc__)
    p.add_argument("--workdir", required=True)
    p.add_argument("--sources", help="text to score instead, e.g. text:book.txt,jsonl:x.jsonl")
    p.add_argument("--batch_size", type=int, default=8)
    p.add_argument("--json", help="also write the result to this file")
    args = p.parse_args(argv)
    host_memory.keep_freed_memory()
    try:
        result = evaluate(args.workdir, args.sources, args.batch_size)
    except (ValueError, FileNotFoundError) as e:
        sys.exit(f"error: {e}")
    line = (
        f"{result['data']} at step {result['step']}: {result['tokens']:,} tokens\n"
        f"  loss {result['loss']:.4f} nats/token, perplexity {result['perplexity']:.2f}"
    )
    if result["bits_per_byte"] is not None:
        line += (
            f", {result['bits_per_byte']:.4f} bits/byte "
            f"({result['bytes_per_token']:.2f} bytes/token)"
        )
    print(line)
    print(json.dumps(result))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
