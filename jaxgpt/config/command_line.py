"""`--config FILE|PRESET` and `--config.a.b=v` overrides: the flag parser of every command."""

from __future__ import annotations

import sys
from collections.abc import Callable

import ml_collections

from jaxgpt.config.loading import ConfigFileError, config_source


def config_path_from_argv(argv: list[str]) -> str | None:
    for i, arg in enumerate(argv):
        if arg == "--config" and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith("--config="):
            return arg.split("=", 1)[1]
    return None


def _with_config_path(argv: list[str], path: str) -> list[str]:
    """argv with the --config value replaced by the file it names (a preset becomes its file)."""
    out = list(argv)
    for i, arg in enumerate(out):
        if arg == "--config" and i + 1 < len(out):
            out[i + 1] = path
            return out
        if arg.startswith("--config="):
            out[i] = f"--config={path}"
            return out
    return out


def describe_config_error(e: BaseException) -> str:
    """Readable text for a flag-parsing error (ConfigDict wraps typo messages in reprs)."""
    message = str(e.args[0]).strip("'\"") if e.args else str(e)
    message = message.replace("\\'", "'").replace("\\n", "\n")
    if isinstance(e, AttributeError | KeyError):
        message = f"unknown config key {message}"
    return message


def parse_command_line(
    argv: list[str] | None, usage: str, define_flags: Callable[[], None] | None = None
) -> ml_collections.ConfigDict:
    """Parse `--config FILE|PRESET` with `--config.a.b=v` overrides (and any flags define_flags
    adds); exits with a readable message, not a traceback, on a missing file or unknown key."""
    from absl import flags
    from ml_collections import config_flags

    argv = list(sys.argv if argv is None else argv)
    if any(a in ("-h", "--help", "-help") for a in argv[1:]):
        print(f"{usage}\n\nEvery config key and its meaning: configs/base.py.")
        sys.exit(0)
    config_arg = config_path_from_argv(argv)
    if config_arg:
        try:
            argv = _with_config_path(argv, str(config_source(config_arg)))
        except (ConfigFileError, FileNotFoundError) as e:
            sys.exit(f"error: {e}\n{usage}")
    config_flag = config_flags.DEFINE_config_file("config", None, "Config file or preset name.")
    if define_flags is not None:
        define_flags()
    try:
        flags.FLAGS(argv)
    except (AttributeError, KeyError, flags.Error, OSError) as e:
        sys.exit(f"error: {describe_config_error(e)}\n{usage}")
    if config_flag.value is None:
        sys.exit(usage)
    return config_flag.value
