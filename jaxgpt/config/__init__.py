"""The one boundary where the ml_collections ConfigDict becomes typed, frozen dataclasses.

The bottom layer of jaxgpt: it imports nothing else of jaxgpt. The dataclasses mirror the
ConfigDict tree of configs/base.py (RunConfig.model is a GPTConfig, RunConfig.data.clean a
CleanConfig, ...); `run_config` builds them all with one recursive rule (config/tree.py).
"""

from jaxgpt.config.command_line import (
    ConfigValueError,
    apply_override,
    make_parser,
    parse_args,
)
from jaxgpt.config.data import CleanConfig, DataConfig, DedupConfig, TokenizerConfig
from jaxgpt.config.loading import (
    ConfigFileError,
    check_config_file,
    config_source,
    load_config_file,
    model_config,
    override,
    presets,
    run_config,
    to_json,
)
from jaxgpt.config.locations import (
    AnyPath,
    UnsupportedLocationError,
    absolute,
    check_location,
    is_remote,
    location,
)
from jaxgpt.config.model import GPTConfig, resolve_vocab
from jaxgpt.config.run import (
    CkptConfig,
    DistConfig,
    MeshConfig,
    OptConfig,
    RunConfig,
    TrainConfig,
    WandbConfig,
)
from jaxgpt.config.tree import ConfigKeyError, from_dict

__all__ = [
    "AnyPath",
    "CkptConfig",
    "CleanConfig",
    "ConfigFileError",
    "ConfigKeyError",
    "ConfigValueError",
    "DataConfig",
    "DedupConfig",
    "DistConfig",
    "GPTConfig",
    "MeshConfig",
    "OptConfig",
    "RunConfig",
    "TokenizerConfig",
    "TrainConfig",
    "UnsupportedLocationError",
    "WandbConfig",
    "absolute",
    "apply_override",
    "check_config_file",
    "check_location",
    "config_source",
    "from_dict",
    "is_remote",
    "load_config_file",
    "location",
    "make_parser",
    "model_config",
    "override",
    "parse_args",
    "presets",
    "resolve_vocab",
    "run_config",
    "to_json",
]
