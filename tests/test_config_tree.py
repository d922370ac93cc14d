"""The typed config tree: configs/base.py and the dataclasses agree key for key and default for
default; one constructor builds the tree and names bad keys; old config.json files and data dirs
still load; presets come from the package jaxgpt.configs, not from sys.path."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from jaxgpt import config as config_lib
from jaxgpt.config import (
    ConfigFileError,
    ConfigKeyError,
    DataConfig,
    GPTConfig,
    MeshConfig,
    RunConfig,
    TrainConfig,
    from_dict,
    load_config_file,
    override,
    run_config,
)
from jaxgpt.configs import base
from jaxgpt.data.dataset import dataset_key
from jaxgpt.workdir import workdir_config

REPO = Path(__file__).resolve().parent.parent
# Dataclass fields with no key in configs/base.py because the run computes them; none today.
DERIVED: set[str] = set()
# Keys added after runs had already written config.json (they must default when missing).
NEWER_CLEAN = (
    "collapse_spaces", "strip_trailing_whitespace", "max_blank_lines", "strip_blank_edges",
    "min_words", "max_line_chars", "max_replacement_fraction",
)  # fmt: skip
# The architecture switches (issue 18): a run from before them is a GPT-2.
NEWER_MODEL = (
    "position", "rope_theta", "norm", "norm_eps", "mlp", "mlp_hidden", "n_kv_head",
    "tie_embeddings", "qk_norm", "doc_mask", "eot_id",
)  # fmt: skip
NEWER_KEYS = (
    "train.epochs",
    *(f"data.clean.{k}" for k in NEWER_CLEAN),
    *(f"data.dedup.{k}" for k in ("num_perm", "shingle_size", "seed")),
    "train.wandb",
    "data.engine",
    "data.ray_address",
    *(f"train.{k}" for k in ("eval_tasks", "eval_tasks_path", "eval_tasks_limit")),
    *(f"data.{k}" for k in ("parquet_column", "hf_split", "hf_field")),
    "data.wiki_parser",
    "data.detect_encoding",
    *(f"opt.{k}" for k in ("muon_lr", "muon_momentum", "muon_ns_steps", "muon_weight_decay")),
    *(f"model.{k}" for k in NEWER_MODEL),
    "data.quality",  # the quality filters (issue 16): a whole group, all off
)
OLD_STYLE = "from configs import base\n\n\ndef get_config():\n    return base.get_config()\n"


def leaves(tree: dict, prefix: str = "") -> dict[str, object]:
    """Dotted key -> value of every leaf of a nested dict."""
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(leaves(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def field_defaults(cls: type, prefix: str = "") -> dict[str, object]:
    """Dotted field name -> default of every non-dataclass field under cls."""
    out = {}
    for f in dataclasses.fields(cls):
        default = f.default if f.default_factory is dataclasses.MISSING else f.default_factory()
        if dataclasses.is_dataclass(default):
            out.update(field_defaults(type(default), f"{prefix}{f.name}."))
        else:
            out[f"{prefix}{f.name}"] = default
    return out


def as_tuples(value):
    return tuple(as_tuples(v) for v in value) if isinstance(value, list | tuple) else value


# ---------------------------------------------------------------- base.py <-> dataclasses


def test_every_base_key_is_a_field_with_the_same_default():
    keys = leaves(base.get_config().to_dict())
    fields = field_defaults(RunConfig)
    assert sorted(set(keys) - set(fields)) == [], "keys in configs/base.py without a field"
    for key, value in keys.items():
        assert as_tuples(fields[key]) == as_tuples(value), key
        assert type(fields[key]) is type(value) or isinstance(value, list | tuple), key


def test_every_field_has_a_base_key():
    keys = leaves(base.get_config().to_dict())
    missing = sorted(set(field_defaults(RunConfig)) - set(keys) - DERIVED)
    assert missing == [], "fields without a key (and comment) in configs/base.py"


def test_base_builds_to_the_dataclass_defaults():
    """run_config(base) is RunConfig(): the tree and the file describe the same run."""
    assert run_config(base.get_config()) == RunConfig()


# ---------------------------------------------------------------- the constructor


def test_nested_sections_reach_their_dataclasses():
    c = override(
        load_config_file("tiny"),
        **{"data.clean.min_words": 3, "data.dedup.shingle_size": 3, "model.n_layer": 2},
    )
    rc = run_config(c)
    assert isinstance(rc.model, GPTConfig) and rc.model.n_layer == 2
    assert rc.data.clean.min_words == 3 and rc.data.dedup.shingle_size == 3
    assert rc.data.tokenizer.vocab_size == 2048


@pytest.mark.parametrize(
    ("values", "key"),
    [
        ({"data": {"clean": {"min_char": 1}}}, "data.clean.min_char"),
        ({"mesh": {"ruls": []}}, "mesh.ruls"),
        ({"modle": {}}, "modle"),
        ({"data": {"tokenizer": {"vocab": 3}}}, "data.tokenizer.vocab"),
    ],
)
def test_unknown_key_names_the_dotted_key(values, key):
    with pytest.raises(ConfigKeyError, match=rf"unknown config key '{key}'"):
        from_dict(RunConfig, values)


def test_section_given_a_value_is_an_error():
    with pytest.raises(ConfigKeyError, match=r"'data\.clean' must be a section"):
        from_dict(RunConfig, {"data": {"clean": 3}})


def test_lists_become_tuples_where_a_tuple_is_wanted():
    """config.json holds mesh.rules as nested lists; the field gets hashable tuples back."""
    rules = json.loads(json.dumps(MeshConfig().rules))
    assert isinstance(rules[0][1], list)
    mesh = from_dict(MeshConfig, {"rules": rules})
    assert mesh == MeshConfig() and hash(mesh)
    assert from_dict(GPTConfig, {"remat_names": ["qkv"]}).remat_names == ("qkv",)
    assert from_dict(DataConfig, {"stdlib_max_mb": 4}).stdlib_max_mb == 4.0


def test_validation_errors_name_the_nested_key():
    for key, value, match in [
        ("data.clean.max_blank_lines", -2, r"data\.clean\.max_blank_lines"),
        ("data.dedup.shingle_size", 9, r"data\.dedup\.shingle_size"),
        ("data.tokenizer.model_type", "word", r"data\.tokenizer\.model_type"),
        ("train.epochs", -1, r"train\.epochs"),
    ]:
        c = override(load_config_file("tiny"), **{key: value})
        with pytest.raises(ValueError, match=match):
            run_config(c)


def test_epochs_defaults_to_steps():
    assert TrainConfig().epochs == 0 and TrainConfig(epochs=3).epochs == 3


# ---------------------------------------------------------------- old runs and data dirs


def old_config_json(vocab_size: int) -> dict:
    """A run's config.json as train wrote it before the newer keys existed."""
    config = json.loads(config_lib.to_json(load_config_file("tiny")))
    config["model"]["vocab_size"] = vocab_size
    for key in NEWER_KEYS:
        *parents, leaf = key.split(".")
        node = config
        for name in parents:
            node = node[name]
        del node[leaf]
    return config


def test_old_config_json_loads_with_defaults(tmp_path):
    config = old_config_json(2048)
    (tmp_path / "config.json").write_text(json.dumps(config))
    model, raw = workdir_config(tmp_path)
    assert model.vocab_size == 2048 and model.n_layer == 4 and raw == config
    rc = run_config(config)
    assert rc.train.epochs == 0 and rc.data.clean.max_blank_lines == 2
    assert rc.data.dedup.num_perm == 128 and rc.mesh == run_config(load_config_file("tiny")).mesh


# dataset_key of presets with a machine-independent source (tfds fingerprints only its name and
# data_dir), computed by the code before the config was nested: a data dir prepared then is still
# current now.
KEYS_BEFORE = {
    "tiny": "c56e5b81ae5101c1",
    "shakespeare_char": "867d96830c48ccdf",
    "medium": "dab8e04fe68f8172",
}
TFDS = {"data.sources": "tfds:lm1b", "data.tfds_data_dir": "/data/tfds"}


@pytest.mark.parametrize("name", sorted(KEYS_BEFORE))
def test_dataset_key_unchanged(name):
    c = override(load_config_file(name), **TFDS)
    assert dataset_key(run_config(c).data) == KEYS_BEFORE[name]


def test_dataset_key_unchanged_with_overrides_and_new_knobs():
    changes = {
        "data.clean.min_chars": 5,
        "data.dedup.threshold": 0.7,
        "data.tokenizer.model_type": "unigram",
        "data.val_fraction": 0.2,
        "data.workers": 3,
        "data.path": "/x",
    }
    c = override(load_config_file("tiny"), **TFDS, **changes)
    key = dataset_key(run_config(c).data)
    assert key == "1983f430bda4cc8c"
    # A newer knob at its default leaves the key alone; set otherwise, it is a new data dir.
    assert dataset_key(run_config(override(c, **{"data.dedup.num_perm": 128})).data) == key
    assert dataset_key(run_config(override(c, **{"data.dedup.num_perm": 64})).data) != key
    assert dataset_key(run_config(override(c, **{"data.clean.min_words": 2})).data) != key


# ---------------------------------------------------------------- presets and packaging


def test_preset_name_and_file_load_the_same_config():
    assert load_config_file("tiny") == load_config_file(REPO / "configs" / "tiny.py")
    assert "tiny" in config_lib.presets() and "base" not in config_lib.presets()
    with pytest.raises(FileNotFoundError, match=r"no such preset.*tiny"):
        load_config_file("tinyy")


def test_old_style_import_says_what_to_write(tmp_path):
    path = tmp_path / "mine.py"
    path.write_text(OLD_STYLE)
    with pytest.raises(ConfigFileError, match=r"from jaxgpt\.configs import base"):
        load_config_file(path)
    path.write_text(path.read_text().replace("from configs", "from jaxgpt.configs"))
    assert load_config_file(path).model.n_layer == 12


@pytest.mark.e2e
def test_command_line_takes_a_preset_name_and_refuses_old_imports(tmp_path):
    """From a directory with no configs/ beside it; plan shares train's flag parser."""
    run = [sys.executable, "-m", "jaxgpt.plan", "--devices", "1", "--device_memory_gb", "80"]
    env_kw = dict(cwd=tmp_path, capture_output=True, text=True, timeout=120)
    out = subprocess.run([*run, "--config", "tiny"], **env_kw)
    assert out.returncode == 0, out.stderr
    assert "fits: yes" in out.stdout
    old = tmp_path / "old.py"
    old.write_text(OLD_STYLE)
    out = subprocess.run([*run, "--config", str(old)], **env_kw)
    assert out.returncode != 0 and "from jaxgpt.configs import base" in out.stderr
    assert "Traceback" not in out.stderr


def test_pyproject_packages_every_folder_and_the_presets():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    folders = {
        ".".join(p.parent.relative_to(REPO).parts)
        for p in (REPO / "jaxgpt").rglob("*.py")
        if "__pycache__" not in p.parts
    }
    assert folders | {"jaxgpt.configs"} == set(project["packages"])
    assert project["package-dir"] == {"jaxgpt.configs": "configs"}
    assert "corpora/*.txt" in project["package-data"]["jaxgpt.data"]


# ---------------------------------------------------------------- layering (see test_layers.py)


def test_no_sys_path_edits_in_the_package():
    for path in (REPO / "jaxgpt").rglob("*.py"):
        assert "sys.path" not in path.read_text(), path
