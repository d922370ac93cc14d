"""Prepare a dataset: `python -m jaxgpt.prepare --config configs/small.py
--config.data.sources=jsonl:corpus/*.jsonl.zst --config.data.path=data/mine`.

Reads the same config as `jaxgpt.train` (which runs this step itself when its data dir is
missing or stale). Rerunning with unchanged inputs and settings does nothing; --force rebuilds.
A build that was killed, or failed to write (a full disk), leaves nothing that would be used:
rerun the same command. data.path may be gs://BUCKET/PATH or s3://BUCKET/PATH: the dir is built
locally, then uploaded with its metadata.json last (docs/data.md, "Data in a bucket").
--config.data.engine=ray runs the same stages on Ray Data (data.ray_address: "" starts Ray here,
"auto" or HOST:PORT joins a cluster), writing the same bytes (docs/data.md, "On a Ray cluster").
"""

from __future__ import annotations

import sys

from jaxgpt import config as config_lib
from jaxgpt.data.build import build_dataset, prepare_dataset
from jaxgpt.storage import StorageError


def main(argv: list[str] | None = None) -> None:
    parser = config_lib.make_parser("prepare", __doc__, config=True)
    parser.add_argument("--force", action="store_true", help="rebuild even if up to date")
    args = config_lib.parse_args(parser, argv)
    try:
        rc = config_lib.run_config(args.config)
        if not rc.data.path:
            parser.exit(1, "error: set --config.data.path=DIR (where the dataset goes)\n")
        build = build_dataset if args.force else prepare_dataset
        info = build(rc.data, rc.data.path)
    # Bad input, a failed write (staging.WriteError), a bucket that cannot be used, or
    # data.engine=ray without Ray installed (ImportError) or without a cluster (OSError).
    except (ValueError, OSError, StorageError, ImportError) as e:
        sys.exit(f"error: {e}")
    print(
        f"{info.path}: {info.train_tokens:,} training and {info.val_tokens:,} validation tokens "
        f"(report: {info.path / 'report.txt'})"
    )


if __name__ == "__main__":
    main()
