"""Build a tree of frozen dataclasses from nested dicts (a ConfigDict's to_dict, a config.json).

One recursive rule: a field typed as a dataclass is built from the dict under its key; a field
typed as a tuple gets lists turned into tuples (all the way down, for mesh.rules); a missing key
takes the field's default, so a config.json written before a field existed still loads.
"""

from __future__ import annotations

import dataclasses
import functools
import types
import typing
from collections.abc import Mapping
from typing import Any, TypeVar

T = TypeVar("T")


class ConfigKeyError(ValueError):
    """A key the typed config has no field for; the message names the full dotted key."""


def from_dict(cls: type[T], values: Mapping[str, Any], where: str = "") -> T:
    """cls built from values; `where` is the dotted prefix of cls's section (e.g. "data.")."""
    if not isinstance(values, Mapping):
        section = where.rstrip(".") or "config"
        raise ConfigKeyError(f"config key {section!r} must be a section (a dict), got {values!r}")
    hints = _hints(cls)
    kwargs = {}
    for key, value in values.items():
        if key not in hints:
            known = ", ".join(sorted(hints))
            raise ConfigKeyError(f"unknown config key {where + key!r} (known here: {known})")
        kwargs[key] = _convert(hints[key], value, f"{where}{key}")
    return cls(**kwargs)


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    names = {f.name for f in dataclasses.fields(cls) if f.init}
    return {k: v for k, v in typing.get_type_hints(cls).items() if k in names}


def _convert(hint: Any, value: Any, key: str) -> Any:
    if dataclasses.is_dataclass(hint):
        return from_dict(hint, value, f"{key}.")
    if isinstance(value, list | tuple) and _wants_tuple(hint):
        return _tuples(value)
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)  # JSON and ConfigDict may hold 8 for 8.0
    return value


def _wants_tuple(hint: Any) -> bool:
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return any(_wants_tuple(h) for h in typing.get_args(hint))
    return hint is tuple or typing.get_origin(hint) is tuple


def _tuples(value: Any) -> Any:
    """Lists (JSON's only sequence) as tuples, all the way down: config values stay hashable."""
    if isinstance(value, list | tuple):
        return tuple(_tuples(v) for v in value)
    return value
