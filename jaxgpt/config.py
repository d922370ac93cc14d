"""The one boundary where the ml_collections ConfigDict becomes typed, frozen dataclasses."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import ml_collections

from jaxgpt.data.dataset import DataConfig
from jaxgpt.distributed import DistConfig
from jaxgpt.model import GPTConfig
from jaxgpt.optimizer import OptConfig
from jaxgpt.sharding import MeshConfig


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Loop settings; see configs/base.py for the meaning of each field."""

    steps: int = 1000
    batch_size: int = 32
    microbatches: int = 1
    seed: int = 0
    log_every: int = 10
    eval_every: int = 1000
    eval_tokens: int = 65536
    eval_batch_size: int = 0
    sample_tokens: int = 64
    sample_prompt: str = ""
    peak_flops: float = 0.0
    early_stop_patience: int = 0

    def __post_init__(self):
        if self.early_stop_patience < 0:
            raise ValueError(
                f"train.early_stop_patience must be >= 0, got {self.early_stop_patience}"
            )
        for key in ("steps", "batch_size", "microbatches", "log_every", "eval_tokens"):
            if getattr(self, key) <= 0:
                raise ValueError(f"train.{key} must be positive, got {getattr(self, key)}")
        if self.batch_size % self.microbatches:
            raise ValueError(
                f"train.batch_size={self.batch_size} is not divisible by "
                f"train.microbatches={self.microbatches}"
            )

    @property
    def micro_batch_size(self) -> int:
        return self.batch_size // self.microbatches


@dataclasses.dataclass(frozen=True)
class CkptConfig:
    every: int = 1000
    keep: int = 3
    async_save: bool = True
    keep_best: bool = False


@dataclasses.dataclass(frozen=True)
class RunConfig:
    """A whole run. `model` stays a dict until the tokenizer fixes the vocabulary size."""

    model: dict
    data: DataConfig
    opt: OptConfig
    train: TrainConfig
    mesh: MeshConfig
    ckpt: CkptConfig
    dist: DistConfig = dataclasses.field(default_factory=DistConfig)
    init_from: str = ""


def ensure_config_importable(config_path: str | Path) -> None:
    """Let configs/x.py say `from configs import base` wherever the command runs from."""
    root = str(Path(config_path).resolve().parent.parent)
    if root not in sys.path:
        sys.path.insert(0, root)


def config_path_from_argv(argv: list[str]) -> str | None:
    for i, arg in enumerate(argv):
        if arg == "--config" and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith("--config="):
            return arg.split("=", 1)[1]
    return None


def load_config_file(path: str | Path) -> ml_collections.ConfigDict:
    """Run a config file's get_config(); the result is locked, so a typo'd key fails."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file {path} does not exist")
    ensure_config_importable(path)
    spec = importlib.util.spec_from_file_location(f"jaxgpt_config_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
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


def run_config(c: ml_collections.ConfigDict) -> RunConfig:
    """Typed, validated view of the ConfigDict; errors name the offending key."""
    data = c.data.to_dict()
    for section in ("tokenizer", "clean", "dedup"):
        data.update({f"{section}_{k}": v for k, v in data.pop(section).items()})
    mesh = c.mesh.to_dict()
    mesh["rules"] = tuple((name, _axes(axes)) for name, axes in mesh["rules"])
    return RunConfig(
        model=c.model.to_dict(),
        data=DataConfig(**data),
        opt=OptConfig(**c.opt.to_dict()),
        train=TrainConfig(**c.train.to_dict()),
        mesh=MeshConfig(**mesh),
        ckpt=CkptConfig(**c.ckpt.to_dict()),
        dist=DistConfig(**c.dist.to_dict()),
        init_from=c.init_from,
    )


def _axes(axes: Any) -> Any:
    return tuple(axes) if isinstance(axes, list | tuple) else axes


def model_config(model: dict, tokenizer_vocab: int) -> GPTConfig:
    """GPTConfig with its vocabulary resolved: explicit (checked) or the tokenizer's, padded."""
    model = dict(model)
    multiple = max(int(model.pop("vocab_multiple")), 1)
    if model["vocab_size"] == 0:
        model["vocab_size"] = -(-tokenizer_vocab // multiple) * multiple
    elif model["vocab_size"] < tokenizer_vocab:
        raise ValueError(
            f"model.vocab_size={model['vocab_size']} is smaller than the tokenizer's "
            f"{tokenizer_vocab} tokens; set model.vocab_size=0 to follow the tokenizer"
        )
    return GPTConfig(**model)


def to_json(c: ml_collections.ConfigDict) -> str:
    return json.dumps(c.to_dict(), indent=2, sort_keys=True, default=str)


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
    """Parse `--config FILE` with `--config.a.b=v` overrides (and any flags define_flags adds);
    exits with a readable message, not a traceback, on a missing file or unknown key."""
    from absl import flags
    from ml_collections import config_flags

    argv = list(sys.argv if argv is None else argv)
    if any(a in ("-h", "--help", "-help") for a in argv[1:]):
        print(f"{usage}\n\nEvery config key and its meaning: configs/base.py.")
        sys.exit(0)
    config_path = config_path_from_argv(argv)
    if config_path:
        if not Path(config_path).is_file():
            sys.exit(f"error: config file {config_path} does not exist\n{usage}")
        ensure_config_importable(config_path)
    config_flag = config_flags.DEFINE_config_file("config", None, "Config file (configs/*.py).")
    if define_flags is not None:
        define_flags()
    try:
        flags.FLAGS(argv)
    except (AttributeError, KeyError, flags.Error, OSError) as e:
        sys.exit(f"error: {describe_config_error(e)}\n{usage}")
    if config_flag.value is None:
        sys.exit(usage)
    return config_flag.value
