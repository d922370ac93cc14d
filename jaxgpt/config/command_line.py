"""The flag parser of every command: argparse, plus `--config FILE|PRESET` with
`--config.a.b=VALUE` overrides for commands that read a run config.

An override's text is read as the type the key already has in the config (bool, int, float,
str, tuple), so `--config.opt.lr=3e-4` is a float and `--config.data.sources=text:x` a string;
an unknown key fails naming it, with the closest known keys.
"""

from __future__ import annotations

import argparse
import ast
import difflib
import sys
from typing import Any

import ml_collections

from jaxgpt.config.loading import ConfigFileError, load_config_file
from jaxgpt.config.locations import (
    LOCAL_ONLY_FLAGS,
    PATH_FLAGS,
    UnsupportedLocationError,
    check_location,
)

CONFIG_HELP = (
    "a config file (configs/*.py) or a preset name (tiny, small, ...); then --config.KEY=VALUE "
    "overrides any key, e.g. --config.opt.lr=3e-4 (every key and its meaning: configs/base.py)"
)
_TRUE, _FALSE = ("true", "1", "yes"), ("false", "0", "no")


class ConfigValueError(ValueError):
    """An override whose key is unknown or whose value does not fit the key's type."""


def make_parser(
    prog: str, description: str | None, config: bool = False
) -> argparse.ArgumentParser:
    """An ArgumentParser for `python -m jaxgpt.PROG`; with config=True it takes --config."""
    parser = argparse.ArgumentParser(
        prog=f"python -m jaxgpt.{prog}",
        description=description,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    if config:
        parser.add_argument("--config", required=True, metavar="FILE|PRESET", help=CONFIG_HELP)
    return parser


def parse_args(
    parser: argparse.ArgumentParser, argv: list[str] | None = None
) -> argparse.Namespace:
    """Parse argv (without the program name; None = sys.argv[1:]). For a config parser,
    args.config is the loaded, overridden, locked ConfigDict. Errors exit with the reason and
    the usage line, never a traceback."""
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        overrides, rest = split_overrides(argv)
    except ConfigValueError as e:
        parser.exit(1, f"error: {e}\n{parser.format_usage()}")
    takes_config = any("--config" in a.option_strings for a in parser._actions)
    if overrides and not takes_config:
        parser.error(f"unrecognized arguments: {' '.join('--config.' + k for k, _ in overrides)}")
    args = parser.parse_args(rest)
    try:
        for flag in PATH_FLAGS:
            if isinstance(value := getattr(args, flag, None), str):
                check_location(value, f"--{flag}", remote_ok=flag not in LOCAL_ONLY_FLAGS)
    except UnsupportedLocationError as e:
        parser.exit(1, f"error: {e}\n")
    if takes_config:
        try:
            args.config = load_config_file(args.config)
            for key, text in overrides:
                apply_override(args.config, key, text)
        except (ConfigFileError, ConfigValueError, FileNotFoundError) as e:
            parser.exit(1, f"error: {e}\n{parser.format_usage()}")
    return args


def split_overrides(argv: list[str]) -> tuple[list[tuple[str, str]], list[str]]:
    """([(dotted key, value text)], the other arguments) from `--config.KEY=V` and
    `--config.KEY V` forms."""
    overrides, rest = [], []
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg.startswith("--config."):
            key, sep, text = arg[len("--config.") :].partition("=")
            if not sep:
                if i + 1 >= len(argv):
                    raise ConfigValueError(f"--config.{key} needs a value")
                text, i = argv[i + 1], i + 1
            overrides.append((key, text))
        else:
            rest.append(arg)
        i += 1
    return overrides, rest


def apply_override(config: ml_collections.ConfigDict, key: str, text: str) -> None:
    """Set config[key] (dotted) from its command-line text, typed by the current value."""
    node: Any = config
    *parents, leaf = key.split(".")
    for depth, name in enumerate(parents):
        if not isinstance(node, ml_collections.ConfigDict) or name not in node:
            raise ConfigValueError(_unknown(config, ".".join(parents[: depth + 1])))
        node = node[name]
    if not isinstance(node, ml_collections.ConfigDict) or leaf not in node:
        raise ConfigValueError(_unknown(config, key))
    current = node[leaf]
    if isinstance(current, ml_collections.ConfigDict):
        raise ConfigValueError(f"config key {key!r} is a section; set one of its keys")
    try:
        setattr(node, leaf, parse_value(text, current, key))
    except TypeError as e:  # the locked ConfigDict refuses a value of another type
        raise ConfigValueError(f"--config.{key}={text}: {e}") from None


def parse_value(text: str, current: Any, key: str) -> Any:
    """The override text as a value of the type of `current`."""
    if isinstance(current, bool):
        if text.lower() in _TRUE + _FALSE:
            return text.lower() in _TRUE
        raise ConfigValueError(f"--config.{key}={text}: expected true or false")
    if isinstance(current, str):
        return text
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
        if isinstance(current, tuple):  # a,b,c: a tuple of plain words
            return tuple(part.strip() for part in text.split(",") if part.strip())
        if current is None:
            return text
        raise ConfigValueError(
            f"--config.{key}={text}: expected {type(current).__name__}"
        ) from None
    return _coerce(value, current, key, text)


def _coerce(value: Any, current: Any, key: str, text: str) -> Any:
    if isinstance(current, float) and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if isinstance(current, int) and isinstance(value, float) and value.is_integer():
        return int(value)  # 1e6 for an integer key
    if isinstance(current, tuple) and isinstance(value, list | tuple):
        return tuple(value)
    if isinstance(current, tuple) and isinstance(value, str):
        return (value,)
    if current is not None and not isinstance(value, type(current)):
        raise ConfigValueError(f"--config.{key}={text}: expected {type(current).__name__}")
    return value


def _unknown(config: ml_collections.ConfigDict, key: str) -> str:
    known = list(_dotted_keys(config))
    close = difflib.get_close_matches(key, known, n=3, cutoff=0.6)
    hint = f"; did you mean {' or '.join(repr(k) for k in close)}?" if close else ""
    return f"unknown config key {key!r}{hint}"


def _dotted_keys(config: ml_collections.ConfigDict, prefix: str = ""):
    for name, value in config.items():
        yield prefix + name
        if isinstance(value, ml_collections.ConfigDict):
            yield from _dotted_keys(value, f"{prefix}{name}.")
