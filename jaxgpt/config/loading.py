"""Config files and presets: find, run and override them, and read a run's config.json back.

A preset is a module of the package jaxgpt.configs (the repo's configs/ folder, installed with
the wheel): `--config tiny` loads jaxgpt.configs.tiny; `--config path/to/file.py` runs that file.
Either defines get_config() returning an ml_collections ConfigDict, built on
`from jaxgpt.configs import base`.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import re
from pathlib import Path
from typing import Any

import ml_collections

from jaxgpt.config.model import GPTConfig, resolve_vocab
from jaxgpt.config.run import RunConfig
from jaxgpt.config.tree import from_dict

PRESET_PACKAGE = "jaxgpt.configs"
_PRESET_NAME = re.compile(r"[A-Za-z_]\w*")
# The pre-package way of reaching the presets, which only worked beside a repo checkout.
_OLD_IMPORT = re.compile(r"^\s*(from\s+configs(\.|\s+import\b)|import\s+configs\b)", re.M)


class ConfigFileError(ValueError):
    """A config file that imports the presets the old way (`from configs import base`)."""


def presets() -> list[str]:
    """Names `--config` accepts besides a path: the modules of jaxgpt.configs but `base`."""
    folder = Path(importlib.util.find_spec(PRESET_PACKAGE).origin).parent
    return sorted(p.stem for p in folder.glob("*.py") if p.stem not in ("__init__", "base"))


def config_source(spec: str | Path) -> Path:
    """The file a --config value names: an existing file, or a preset's module."""
    path = Path(spec)
    if path.is_file():
        check_config_file(path)
        return path
    name = str(spec)
    if _PRESET_NAME.fullmatch(name):
        if name in presets():
            return Path(importlib.util.find_spec(f"{PRESET_PACKAGE}.{name}").origin)
        raise FileNotFoundError(
            f"--config {name}: no such preset (presets: {', '.join(presets())}) and no such file"
        )
    raise FileNotFoundError(f"config file {spec} does not exist")


def check_config_file(path: Path) -> None:
    """Refuse `from configs import base`, which only resolved beside a checkout; name the fix."""
    if _OLD_IMPORT.search(path.read_text(encoding="utf-8", errors="replace")):
        raise ConfigFileError(
            f"{path} imports the presets as `configs`; write `from jaxgpt.configs import base` "
            "instead (the presets are the package jaxgpt.configs)"
        )


def load_config_file(spec: str | Path) -> ml_collections.ConfigDict:
    """Run a config file's (or preset's) get_config(); the result is locked, so a typo'd key
    fails."""
    path = config_source(spec)
    module_name = f"jaxgpt_config_{path.stem}"
    loader_spec = importlib.util.spec_from_file_location(module_name, path)
    module = importlib.util.module_from_spec(loader_spec)
    loader_spec.loader.exec_module(module)
    config = module.get_config()
    config.lock()
    return config


def override(config: ml_collections.ConfigDict, **dotted: Any) -> ml_collections.ConfigDict:
    """Programmatic --config.a.b=v: override(c, **{"opt.lr": 3e-4}); unknown keys fail."""
    for key, value in dotted.items():
        *parents, leaf = key.split(".")
        node = config
        for name in parents:
            node = getattr(node, name)
        if leaf not in node:
            raise AttributeError(f"config has no key {key!r}")
        setattr(node, leaf, value)
    return config


def run_config(c: ml_collections.ConfigDict | dict) -> RunConfig:
    """Typed, validated view of a ConfigDict (or of its dict, e.g. a run's config.json);
    missing keys take their defaults, unknown ones fail naming the dotted key."""
    return from_dict(RunConfig, c.to_dict() if hasattr(c, "to_dict") else c)


def model_config(
    model: GPTConfig | dict, tokenizer_vocab: int, tokenizer_eot: int = -1
) -> GPTConfig:
    """GPTConfig with its vocabulary resolved: explicit (checked) or the tokenizer's, padded;
    likewise its end-of-text id (tokenizer_eot=-1: not known here, model.eot_id stays)."""
    if not isinstance(model, GPTConfig):
        model = from_dict(GPTConfig, model, "model.")
    return resolve_vocab(model, tokenizer_vocab, tokenizer_eot)


def to_json(c: ml_collections.ConfigDict) -> str:
    return json.dumps(c.to_dict(), indent=2, sort_keys=True, default=str)
