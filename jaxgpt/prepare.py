"""Prepare a dataset: `python -m jaxgpt.prepare --config configs/small.py
--config.data.sources=jsonl:corpus/*.jsonl.zst --config.data.path=data/mine`.

Reads the same config as `jaxgpt.train` (which runs this step itself when its data dir is
missing or stale). Rerunning with unchanged inputs and settings does nothing; --force rebuilds.
"""

from __future__ import annotations

import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> None:
    from absl import flags
    from ml_collections import config_flags

    from jaxgpt import config as config_lib
    from jaxgpt.data.build import build_dataset, prepare_dataset

    argv = list(sys.argv if argv is None else argv)
    config_path = config_lib.config_path_from_argv(argv)
    if config_path:
        if not Path(config_path).is_file():
            sys.exit(f"error: config file {config_path} does not exist")
        config_lib.ensure_config_importable(config_path)
    config_flag = config_flags.DEFINE_config_file("config", None, "Config file (configs/*.py).")
    flags.DEFINE_bool("force", False, "Rebuild even if the data dir is up to date.")
    usage = "usage: python -m jaxgpt.prepare --config FILE --config.data.path=DIR [--force]"
    try:
        flags.FLAGS(argv)
    except (AttributeError, KeyError, flags.Error, OSError) as e:
        sys.exit(f"error: {config_lib.describe_config_error(e)}\n{usage}")
    if config_flag.value is None:
        sys.exit(usage)
    try:
        rc = config_lib.run_config(config_flag.value)
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
