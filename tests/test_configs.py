"""Tests for configs/*.py and jaxgpt/config/: every config loads, converts and builds a model."""

import dataclasses
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import pytest

from jaxgpt import config as config_lib
from jaxgpt.config import TrainConfig, load_config_file, model_config, override, run_config
from jaxgpt.data.sources import parse_sources, source_files
from jaxgpt.model import GPT, count_params

REPO = Path(__file__).resolve().parent.parent
CONFIGS = sorted(p for p in (REPO / "configs").glob("*.py") if p.name != "__init__.py")
# Parameter counts of the GPT-2 family (tied embeddings), as Hugging Face reports them.
GPT2_PARAMS = {
    "small": 124_439_808,
    "medium": 354_823_168,
    "large": 774_030_080,
    "xl": 1_557_611_200,
}


def abstract_params(cfg):
    tokens = jnp.zeros((1, 8), jnp.int32)
    return jax.eval_shape(lambda: nn.unbox(GPT(cfg).init(jax.random.key(0), tokens)["params"]))


def test_configs_found():
    """The size configs the docs promise exist."""
    names = {p.stem for p in CONFIGS}
    assert {"base", "tiny", "small", "medium", "large", "xl", "shakespeare_char"} <= names


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_config_loads_converts_and_builds(path):
    """Each config loads locked, converts to typed configs and its model initializes abstractly."""
    c = load_config_file(path)
    assert c.is_locked
    rc = run_config(c)
    vocab = rc.model.vocab_size or 50257
    cfg = model_config(rc.model, vocab)
    assert cfg.vocab_size >= vocab
    if rc.model.vocab_size == 0:
        multiple = max(rc.model.vocab_multiple, 1)
        assert cfg.vocab_size % multiple == 0 and cfg.vocab_size - vocab < multiple
    shapes = abstract_params(cfg)
    layer_keys = {k for k in shapes if k.startswith("h")}
    assert layer_keys == ({"h"} if cfg.scan_layers else {f"h_{i}" for i in range(cfg.n_layer)})
    if cfg.scan_layers:
        assert jax.tree.leaves(shapes["h"])[0].shape[0] == cfg.n_layer
    assert rc.train.batch_size % rc.train.microbatches == 0
    # config.json holds the model section faithfully (tuples come back as lists).
    assert json.loads(config_lib.to_json(c))["model"] == json.loads(json.dumps(c.model.to_dict()))


@pytest.mark.parametrize("name", sorted(GPT2_PARAMS))
def test_gpt2_sizes_have_gpt2_param_counts(name):
    """small/medium/large/xl at vocab 50257 have exactly GPT-2's parameter counts."""
    rc = run_config(load_config_file(REPO / "configs" / f"{name}.py"))
    cfg = model_config(rc.model, 50257)
    assert cfg.vocab_size == 50257 and cfg.block_size == 1024
    assert count_params(abstract_params(cfg)) == GPT2_PARAMS[name]


def test_shakespeare_config_needs_no_files(tmp_path, monkeypatch):
    """shakespeare_char reads the corpus shipped in the package, from any directory."""
    monkeypatch.chdir(tmp_path)
    rc = run_config(load_config_file(REPO / "configs" / "shakespeare_char.py"))
    (source,) = parse_sources(rc.data.sources)
    assert source.kind == "shakespeare" and source_files(source) == []


def test_override_works():
    """A valid dotted override changes the value that reaches GPTConfig."""
    c = override(load_config_file(REPO / "configs" / "tiny.py"), **{"model.n_layer": 2})
    assert c.model.n_layer == 2
    assert model_config(run_config(c).model, 2048).n_layer == 2
    c = override(c, **{"opt.lr": 3e-4, "data.tokenizer.model_type": "unigram"})
    rc = run_config(c)
    assert rc.opt.lr == 3e-4 and rc.data.tokenizer.model_type == "unigram"


@pytest.mark.parametrize(("key", "bad"), [("opt.lrr", "lrr"), ("optt.lr", "optt")])
def test_override_typo_names_the_key(key, bad):
    """A typo'd key (leaf or parent) raises AttributeError naming it."""
    c = load_config_file(REPO / "configs" / "tiny.py")
    with pytest.raises(AttributeError, match=bad):
        override(c, **{key: 1})


def test_locked_config_rejects_new_keys_and_wrong_types():
    """The loaded ConfigDict is locked against new keys and type-checked on assignment."""
    c = load_config_file(REPO / "configs" / "tiny.py")
    with pytest.raises(AttributeError):
        c.opt.lrr = 1.0
    with pytest.raises(TypeError):
        override(c, **{"model.n_layer": "four"})


def test_missing_config_file():
    """A config path that does not exist is a FileNotFoundError naming the path."""
    with pytest.raises(FileNotFoundError, match=r"nope\.py"):
        load_config_file(REPO / "configs" / "nope.py")


def run_train_cli(*args: str, tmp_path: Path) -> tuple[subprocess.CompletedProcess, float]:
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    env["XLA_FLAGS"] = ""  # one CPU device is enough to parse flags
    start = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "jaxgpt.train", *args, "--workdir", str(tmp_path / "run")],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    return proc, time.monotonic() - start


@pytest.mark.e2e
def test_cli_typo_fails_fast_with_the_key(tmp_path):
    """--config.opt.lrr=… exits non-zero before any work, naming 'lrr', without a traceback."""
    proc, seconds = run_train_cli(
        "--config", "configs/tiny.py", "--config.opt.lrr=3e-4", tmp_path=tmp_path
    )
    assert proc.returncode != 0
    assert "lrr" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert seconds < 60
    assert not (tmp_path / "run" / "data").exists()  # no data was prepared


@pytest.mark.e2e
def test_cli_typo_message_is_readable(tmp_path):
    """The typo message is plain text, not a repr with escaped quotes and newlines."""
    proc, _ = run_train_cli(
        "--config", "configs/tiny.py", "--config.opt.lrr=3e-4", tmp_path=tmp_path
    )
    assert proc.returncode != 0
    assert "\\n" not in proc.stderr and "\\'" not in proc.stderr, proc.stderr


@pytest.mark.e2e
def test_cli_missing_config_file(tmp_path):
    """A missing --config file gives a short error naming the file, not a traceback."""
    proc, _ = run_train_cli("--config", "configs/does_not_exist.py", tmp_path=tmp_path)
    assert proc.returncode != 0
    assert "does_not_exist.py" in proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr


def test_explicit_vocab_smaller_than_tokenizer_fails():
    """model.vocab_size below the tokenizer's vocabulary is a ValueError naming both."""
    model = run_config(load_config_file(REPO / "configs" / "small.py")).model
    with pytest.raises(ValueError, match=r"model\.vocab_size=50257.*60000"):
        model_config(model, 60000)
    assert model_config(model, 1000).vocab_size == 50257  # larger than needed is fine


def test_vocab_zero_follows_tokenizer_padded():
    """vocab_size=0 takes the tokenizer's size rounded up to vocab_multiple."""
    model = run_config(load_config_file(REPO / "configs" / "tiny.py")).model
    assert model.vocab_size == 0 and model.vocab_multiple == 64
    assert model_config(model, 2048).vocab_size == 2048
    assert model_config(model, 2049).vocab_size == 2112
    assert model_config(dataclasses.replace(model, vocab_multiple=1), 2049).vocab_size == 2049
    # A config.json's model section (a dict) resolves the same way.
    as_dict = dataclasses.asdict(model)
    assert model_config(as_dict, 2049) == model_config(model, 2049)


def test_train_config_validation():
    """batch_size must divide by microbatches; counts must be positive; errors name the key."""
    assert TrainConfig(batch_size=32, microbatches=4).micro_batch_size == 8
    with pytest.raises(ValueError, match=r"train\.batch_size=30.*train\.microbatches=4"):
        TrainConfig(batch_size=30, microbatches=4)
    with pytest.raises(ValueError, match=r"train\.steps"):
        TrainConfig(steps=0)
    with pytest.raises(ValueError, match=r"train\.microbatches"):
        TrainConfig(microbatches=0)


def test_run_config_validates_sections():
    """run_config surfaces bad values from each section as ValueErrors naming the key."""
    for key, value, match in [
        ("opt.name", "sgd", r"opt\.name"),
        ("train.microbatches", 7, r"train\.microbatches"),
        ("data.val_fraction", 0.0, r"data\.val_fraction"),
    ]:
        c = override(load_config_file(REPO / "configs" / "tiny.py"), **{key: value})
        with pytest.raises(ValueError, match=match):
            run_config(c)


@pytest.mark.slow
def test_shakespeare_char_fast_trains(small_corpus, tmp_path):
    """The time-to-quality recipe (docs/performance.md) names its target, is the Llama-style
    block with Muon on the baseline's shape and split, and trains: loss falls in a few steps."""
    from jaxgpt import metrics as metrics_lib
    from jaxgpt.run.loop import train

    path = REPO / "configs" / "shakespeare_char_fast.py"
    assert "1.88" in path.read_text()  # the issue: the docstring names the target it reaches
    fast, classic = (
        run_config(load_config_file(REPO / "configs" / n))
        for n in (path.name, "shakespeare_char.py")
    )
    assert (fast.model.position, fast.model.norm, fast.opt.name) == ("rope", "rmsnorm", "muon")
    assert fast.data == classic.data  # the standard char-level split
    assert fast.model.block_size == classic.model.block_size == 64  # evaluated at the same T
    c = override(
        load_config_file(path),
        # Batch 16: the recipe's 12 does not split over the 8 test devices.
        **{"data.sources": f"text:{small_corpus}", "train.steps": 6, "train.log_every": 1,
           "train.eval_every": 0, "train.sample_tokens": 0, "train.batch_size": 16},
    )  # fmt: skip
    summary = train(c, tmp_path / "run")
    loss = [r["loss"] for r in metrics_lib.read_metrics(tmp_path / "run") if "loss" in r]
    assert summary.steps == 6 and len(loss) == 6 and loss[-1] < loss[0] - 0.3, loss
