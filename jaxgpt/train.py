"""Train a GPT: `python -m jaxgpt.train --config configs/tiny.py --workdir runs/tiny`.

Re-running the same command on the same workdir resumes from the latest checkpoint.
"""

from __future__ import annotations

import sys

from absl import flags

from jaxgpt import config as config_lib
from jaxgpt.run.loop import train


def main(argv: list[str] | None = None) -> None:
    usage = "usage: python -m jaxgpt.train --config configs/tiny.py --workdir DIR [--config.x=y]"
    config = config_lib.parse_command_line(
        argv,
        usage,
        lambda: flags.DEFINE_string("workdir", None, "Run directory: checkpoints, metrics, ..."),
    )
    if not flags.FLAGS.workdir:
        sys.exit(usage)
    try:
        summary = train(config, flags.FLAGS.workdir)
    except (ValueError, FileNotFoundError) as e:
        sys.exit(f"error: {e}")
    if summary.preempted:
        sys.exit(143)


if __name__ == "__main__":
    main()
