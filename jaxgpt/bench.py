"""Benchmark a config's train step: `python -m jaxgpt.bench --config configs/small.py --steps 20`.

Prints compile time, median step time, tokens/s, model TFLOP/s, MFU, peak memory and (with
--data) the input-wait share, then the same figures as one JSON line (jaxgpt.run.bench).
"""

from __future__ import annotations

import json
import sys

from absl import flags

from jaxgpt import config as config_lib
from jaxgpt.run.bench import benchmark, format_result


def main(argv: list[str] | None = None) -> None:
    """Parse flags, benchmark, print the report and one JSON line."""
    usage = (
        "usage: python -m jaxgpt.bench --config configs/small.py [--config.x=y ...] "
        "[--steps N] [--warmup N] [--data DIR] [--profile DIR]"
    )

    def define() -> None:
        flags.DEFINE_integer("steps", 20, "Timed steps (the median is reported).")
        flags.DEFINE_integer("warmup", 3, "Untimed steps after the first.")
        flags.DEFINE_string("data", None, "Prepared data dir: real batches via tf.data.")
        flags.DEFINE_string("profile", None, "Also trace 5 steps into this dir; print top ops.")

    config = config_lib.parse_command_line(argv, usage, define)
    f = flags.FLAGS
    try:
        result = benchmark(config, f.steps, f.warmup, f.data, f.profile)
    except (ValueError, FileNotFoundError) as e:
        sys.exit(f"error: {e}")
    print(format_result(result))
    print(json.dumps(result.summary()))


if __name__ == "__main__":
    main()
