"""Benchmark a config's train step: `python -m jaxgpt.bench --config configs/small.py --steps 20`.

Prints compile time, median step time, tokens/s, model TFLOP/s, MFU, peak memory and (with
--data) the input-wait share, then the same figures as one JSON line (jaxgpt.run.bench).
"""

from __future__ import annotations

import json
import sys

from jaxgpt import config as config_lib
from jaxgpt.run.bench import benchmark, format_result


def main(argv: list[str] | None = None) -> None:
    """Parse flags, benchmark, print the report and one JSON line."""
    parser = config_lib.make_parser("bench", __doc__, config=True)
    parser.add_argument(
        "--steps", type=int, default=20, help="timed steps (the median is reported)"
    )
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps after the first")
    parser.add_argument("--data", help="prepared data dir: batches via the training input")
    parser.add_argument("--profile", help="also trace 5 steps into this dir; print top ops")
    args = config_lib.parse_args(parser, argv)
    try:
        result = benchmark(args.config, args.steps, args.warmup, args.data, args.profile)
    except (ValueError, FileNotFoundError) as e:
        sys.exit(f"error: {e}")
    print(format_result(result))
    print(json.dumps(result.summary()))


if __name__ == "__main__":
    main()
