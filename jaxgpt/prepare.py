"""Prepare a dataset: `python -m jaxgpt.prepare --config configs/small.py
--config.data.sources=jsonl:corpus/*.jsonl.zst --config.data.path=data/mine`.

Reads the same config as `jaxgpt.train` (which runs this step itself when its data dir is
missing or stale). Rerunning with unchanged inputs and settings does nothing; --force rebuilds.
"""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> None:
    from absl import flags

    from jaxgpt import config as config_lib
    from jaxgpt.data.build import build_dataset, prepare_dataset

    usage = "usage: python -m jaxgpt.prepare --config FILE --config.data.path=DIR [--force]"
    config = config_lib.parse_command_line(
        argv, usage, lambda: flags.DEFINE_bool("force", False, "Rebuild even if up to date.")
    )
    try:
        rc = config_lib.run_config(config)
        if not rc.data.path:
            sys.exit(f"error: set --config.data.path=DIR (where the dataset goes)\n{usage}")
        build = build_dataset if flags.FLAGS.force else prepare_dataset
        info = build(rc.data, rc.data.path)
    except (ValueError, FileNotFoundError) as e:
        sys.exit(f"error: {e}")
    print(
        f"{info.path}: {info.train_tokens:,} training and {info.val_tokens:,} validation tokens "
        f"(report: {info.path / 'report.txt'})"
    )


if __name__ == "__main__":
    main()
