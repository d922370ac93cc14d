"""Evaluate a trained run: `python -m jaxgpt.evaluate --workdir DIR [--sources text:PATH]`.

Reports loss (nats/token), perplexity and bits per byte, which compares models with different
tokenizers. Without --sources it scores the run's own validation split, all of it; with
--sources (same syntax as data.sources) it scores that text, each document followed by EOT.

With --tasks T1,T2 it runs lm-evaluation-harness tasks instead (the [eval] extra), through the
`jaxgpt` lm-eval model on the run's mesh: `--include_path DIR` adds local task YAMLs, results
print as lm-eval's table, and --output_path writes lm-eval's JSON (docs/evaluation.md).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from jaxgpt import config as config_lib
from jaxgpt import host_memory, lm_eval_model
from jaxgpt.run.scoring import evaluate
from jaxgpt.storage import StorageError


def main(argv: list[str] | None = None) -> None:
    p = config_lib.make_parser("evaluate", __doc__)
    p.add_argument("--workdir", required=True)
    p.add_argument("--sources", help="text to score instead, e.g. text:book.txt,jsonl:x.jsonl")
    p.add_argument("--batch_size", type=int, default=8)
    p.add_argument("--json", help="also write the result to this file")
    tasks = p.add_argument_group("lm-evaluation-harness tasks (pip install 'jaxgpt[eval]')")
    tasks.add_argument(
        "--tasks", help="comma-separated lm-eval task names, e.g. hellaswag,arc_easy"
    )
    tasks.add_argument("--include_path", help="a folder of task YAMLs (local tasks)")
    tasks.add_argument("--limit", type=float, help="at most this many documents per task")
    tasks.add_argument("--num_fewshot", type=int, help="few-shot examples per prompt")
    tasks.add_argument("--max_length", type=int, default=0, help="tokens (0 = the context)")
    tasks.add_argument("--output_path", help="write lm-eval's results JSON under this folder")
    tasks.add_argument("--log_samples", action="store_true", help="also write every request")
    args = config_lib.parse_args(p, argv)
    host_memory.keep_freed_memory()
    if args.tasks:
        _run_tasks(args)
        return
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


def _run_tasks(args) -> None:
    """lm-eval tasks through the jaxgpt model; lm-eval's table, and its JSON with --output_path."""
    if args.sources:
        sys.exit("error: --sources and --tasks do not combine (tasks bring their own data)")
    limit = args.limit
    if limit is not None and limit >= 1:
        limit = int(limit)  # lm-eval reads a limit under 1 as a fraction of each task
    names = [t.strip() for t in args.tasks.split(",") if t.strip()]
    try:
        results = lm_eval_model.run_tasks(
            args.workdir, names, include_path=args.include_path, limit=limit,
            num_fewshot=args.num_fewshot, batch_size=args.batch_size,
            max_length=args.max_length, output_path=args.output_path,
            log_samples=args.log_samples,
        )  # fmt: skip
    except (ValueError, FileNotFoundError, ModuleNotFoundError, StorageError) as e:
        sys.exit(f"error: {e}")
    print(lm_eval_model.results_table(results))
    if args.output_path:
        print(f"wrote lm-eval's results under {args.output_path}")
    if args.json:
        scores = lm_eval_model.task_scores(results)
        Path(args.json).write_text(json.dumps(scores, indent=2))


if __name__ == "__main__":
    main()
