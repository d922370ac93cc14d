"""Train a GPT: `python -m jaxgpt.train --config configs/tiny.py --workdir runs/tiny`.

Re-running the same command on the same workdir resumes from the latest checkpoint. Any config
key can be overridden: --config.opt.lr=3e-4 --config.train.steps=2000 (configs/base.py).
"""

from __future__ import annotations

import sys

from jaxgpt import config as config_lib
from jaxgpt.checkpoint import CheckpointWriteError, UnreadableCheckpointsError
from jaxgpt.run.loop import train
from jaxgpt.run.nonfinite import NonFiniteError

# Failures a user can act on: the message says what happened and what to do; no traceback.
RUN_ERRORS = (ValueError, OSError, NonFiniteError, CheckpointWriteError, UnreadableCheckpointsError)


def main(argv: list[str] | None = None) -> None:
    parser = config_lib.make_parser("train", __doc__, config=True)
    parser.add_argument("--workdir", required=True, help="run directory: checkpoints, metrics, ...")
    args = config_lib.parse_args(parser, argv)
    try:
        summary = train(args.config, args.workdir)
    except RUN_ERRORS as e:
        sys.exit(f"error: {e}")
    if summary.preempted:
        sys.exit(143)


if __name__ == "__main__":
    main()
