"""Evaluate a trained run: `python -m jaxgpt.evaluate --workdir DIR [--sources text:PATH]`.

Reports loss (nats/token), perplexity and bits per byte, which compares models with different
tokenizers. Without --sources it scores the run's own validation split, all of it; with
--sources (same syntax as data.sources) it scores that text, each document followed by EOT.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from jaxgpt import config as config_lib
from jaxgpt import host_memory
from jaxgpt.run.scoring import evaluate
from jaxgpt.storage import StorageError


def main(argv: list[str] | None = None) -> None:
    p = config_lib.make_parser("evaluate", __doc__)
    p.add_argument("--workdir", required=True)
    p.add_argument("--sources", help="text to score instead, e.g. text:book.txt,jsonl:x.jsonl")
    p.add_argument("--batch_size", type=int, default=8)
    p.add_argument("--json", help="also write the result to this file")
    args = config_lib.parse_args(p, argv)
    host_memory.keep_freed_memory()
    try:
        result = evaluate(args.workdir, args.sources, args.batch_size)
    except (ValueError, FileNotFoundError, StorageError) as e:
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
