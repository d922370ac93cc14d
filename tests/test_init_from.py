"""jaxgpt.init_from called directly: resolving hf:/workdir: specs, fitting a config to the
source, and loading its params into the run's layout, with clear errors for what does not fit.

The sources are made here: a tiny Hugging Face GPT-2 folder written from random params, and a
two-step training run."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
from safetensors.numpy import save_file
from tokenizers import Tokenizer, models

from jaxgpt import init_from
from jaxgpt.interop.hf import hf_config, params_to_hf
from jaxgpt.model import GPT, GPTConfig
from jaxgpt.run.loop import train
from jaxgpt.workdir import restore_params
from tests.helpers import tiny_config

pytestmark = pytest.mark.slow  # trains or exports real runs; not in the fast subset

WORDS = ["<stop>", "<unk>", *"the quick brown fox jumps over a lazy dog".split()]
# 11 words, a 13-row table: the model's vocabulary may pad past the tokenizer's.
HF_CFG = GPTConfig(vocab_size=13, block_size=16, n_layer=2, n_head=2, n_embd=16)


def random_params(cfg: GPTConfig, seed: int = 0) -> dict:
    """Initialized params with every leaf perturbed, so a mixed-up array cannot pass as another."""
    dummy = jnp.zeros((1, cfg.block_size), jnp.int32)
    params = nn.unbox(GPT(cfg).init(jax.random.key(seed), dummy)["params"])
    leaves, treedef = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.key(seed + 1), len(leaves))
    noisy = [
        np.asarray(x + jax.random.normal(k, x.shape)) for x, k in zip(leaves, keys, strict=True)
    ]
    return jax.tree.unflatten(treedef, noisy)


def expected_shapes(cfg: GPTConfig) -> dict:
    """The params tree a model of cfg has, as ShapeDtypeStructs (what train checks against)."""
    dummy = jnp.zeros((1, cfg.block_size), jnp.int32)
    init = jax.eval_shape(GPT(cfg).init, jax.random.key(0), dummy)
    return nn.unbox(init["params"])


def write_hf_folder(path: Path, params: dict, cfg: GPTConfig, eos_id: int | None = 0) -> Path:
    """A GPT-2 folder as `save_pretrained` writes one, plus a word-level tokenizer.json."""
    path.mkdir(parents=True)
    save_file(params_to_hf(params, cfg), path / "model.safetensors", metadata={"format": "pt"})
    (path / "config.json").write_text(json.dumps(hf_config(cfg, eos_id, eos_id)))
    vocab = {w: i for i, w in enumerate(WORDS)}
    Tokenizer(models.WordLevel(vocab, unk_token="<unk>")).save(str(path / "tokenizer.json"))
    if eos_id is not None:
        (path / "generation_config.json").write_text(json.dumps({"eos_token_id": eos_id}))
    return path


@pytest.fixture(scope="module")
def hf_source(tmp_path_factory) -> tuple[Path, dict]:
    params = random_params(HF_CFG)
    return write_hf_folder(tmp_path_factory.mktemp("init") / "hf", params, HF_CFG), params


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("init") / "corpus.txt"
    path.write_text("".join(f"line {i % 23}: the quick brown fox.\n" for i in range(600)))
    return path


@pytest.fixture(scope="module")
def run_source(corpus, tmp_path_factory) -> Path:
    """A real two-step training run (char tokenizer.model, 2 layers, width 32)."""
    workdir = tmp_path_factory.mktemp("init") / "run"
    settings = {"train.steps": 2, "train.eval_every": 0, "train.sample_tokens": 0}
    train(tiny_config(corpus, **settings, **{"ckpt.every": 2, "model.dropout": 0.0}), workdir)
    return workdir


# --- resolve -----------------------------------------------------------------------------------


def test_resolve_hf_reads_the_config_not_the_weights(hf_source):
    path, _ = hf_source
    source = init_from.resolve(f"hf:{path}")
    assert source.kind == "hf" and source.path == path and source.spec == f"hf:{path}"
    assert source.architecture == {k: getattr(HF_CFG, k) for k in init_from.ARCHITECTURE}
    assert source.block_size == 16
    assert source.tokenizer_path == path / "tokenizer.json"
    # generation_config.json names the stop token by id; the tokenizer turns it into its name.
    assert source.eot_token == "<stop>"


def test_resolve_hf_without_generation_config_leaves_the_eot_token_open(tmp_path):
    path = write_hf_folder(tmp_path / "hf", random_params(HF_CFG), HF_CFG, eos_id=None)
    assert init_from.resolve(f"hf:{path}").eot_token == ""


def test_resolve_expands_the_home_directory(hf_source, tmp_path, monkeypatch):
    path, _ = hf_source
    monkeypatch.setenv("HOME", str(path.parent))
    assert init_from.resolve(f"hf:~/{path.name}").path == path


def test_resolve_workdir_takes_the_run_s_model_and_tokenizer(run_source):
    source = init_from.resolve(f"workdir:{run_source}")
    params, _ = restore_params(run_source)
    assert source.kind == "workdir" and source.spec == f"workdir:{run_source}"
    arch = source.architecture
    assert (arch["n_layer"], arch["n_head"], arch["n_embd"], arch["bias"]) == (2, 2, 32, True)
    assert arch["vocab_size"] == params["wte"]["embedding"].shape[0]
    assert source.block_size == 32
    assert source.tokenizer_path == run_source / "tokenizer.model"


@pytest.mark.parametrize(
    ("spec", "error", "match"),
    [
        ("?", ValueError, r"starts from existing weights: set --config\.init_from=hf:PATH"),
        ("gpt2", ValueError, r"init_from='gpt2': expected hf:PATH .* or workdir:PATH"),
        ("hf:", ValueError, "expected hf:PATH"),
        ("s3:bucket/model", ValueError, "expected hf:PATH"),
        ("hf:{tmp}/missing", FileNotFoundError, r"missing is not a directory"),
        ("workdir:{tmp}/missing", FileNotFoundError, r"missing is not a directory"),
        ("hf:{tmp}", FileNotFoundError, "no config.json there, so it is not a Hugging Face"),
        ("workdir:{tmp}", FileNotFoundError, "not a jaxgpt workdir"),
    ],
)
def test_resolve_bad_specs_say_what_to_do(tmp_path, spec, error, match):
    with pytest.raises(error, match=match):
        init_from.resolve(spec.format(tmp=tmp_path))


def test_resolve_hf_folders_that_do_not_fit(hf_source, tmp_path):
    path, _ = hf_source
    config = json.loads((path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, "model_type": "t5"}))
    with pytest.raises(
        ValueError, match=r"is not a GPT-2, Llama or Qwen3 model jaxgpt can load: model_type"
    ):
        init_from.resolve(f"hf:{tmp_path}")
    (tmp_path / "config.json").write_text(json.dumps({**config, "activation_function": "relu"}))
    with pytest.raises(ValueError, match=r"unsupported GPT-2 variant: activation_function='relu'"):
        init_from.resolve(f"hf:{tmp_path}")
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(FileNotFoundError, match=r"has no tokenizer\.json\. Write one"):
        init_from.resolve(f"hf:{tmp_path}")


def test_resolve_workdir_without_a_tokenizer(run_source, tmp_path):
    (tmp_path / "config.json").write_bytes((run_source / "config.json").read_bytes())
    with pytest.raises(FileNotFoundError, match=r"has no tokenizer\.model or \.json"):
        init_from.resolve(f"workdir:{tmp_path}")


# --- apply_to_config ---------------------------------------------------------------------------


def test_apply_to_config_takes_the_shape_and_tokenizer_of_the_weights(hf_source, corpus):
    path, _ = hf_source
    source = init_from.resolve(f"hf:{path}")
    config = tiny_config(corpus, **{"model.n_layer": 1, "model.block_size": 64})
    notes = init_from.apply_to_config(config, source)
    model = config.model
    assert (model.vocab_size, model.n_layer, model.n_head, model.n_embd) == (13, 2, 2, 16)
    assert model.block_size == 16  # the position table cannot grow
    assert f"model.n_layer: 1 → 2 (from hf:{path})" in notes
    assert "model.block_size: 64 → 16 (the weights know 16 positions)" in notes
    # vocab_size 0 means "from the tokenizer": taking the source's is no change worth a note.
    assert not any(n.startswith("model.vocab_size") for n in notes)
    assert config.data.tokenizer.path == str(path / "tokenizer.json")
    assert config.data.tokenizer.eot_token == "<stop>"


def test_apply_to_config_keeps_a_shorter_context_and_a_named_eot(hf_source, corpus):
    path, _ = hf_source
    config = tiny_config(corpus, **{"model.block_size": 8, "data.tokenizer.eot_token": "dog"})
    notes = init_from.apply_to_config(config, init_from.resolve(f"hf:{path}"))
    assert config.model.block_size == 8
    assert not any(n.startswith("model.block_size") for n in notes)
    assert config.data.tokenizer.eot_token == "dog"


def test_apply_to_config_checks_a_tokenizer_the_config_names(
    hf_source, run_source, corpus, tmp_path
):
    path, _ = hf_source
    source = init_from.resolve(f"hf:{path}")
    same = tmp_path / "same.json"  # another file, the same vocabulary: allowed
    same.write_bytes((path / "tokenizer.json").read_bytes())
    settings = {"data.tokenizer.path": str(same), "data.tokenizer.eot_token": "<stop>"}
    config = tiny_config(corpus, **settings)
    init_from.apply_to_config(config, source)
    assert config.data.tokenizer.path == str(same)
    other = str(run_source / "tokenizer.model")
    config = tiny_config(corpus, **{"data.tokenizer.path": other})
    with pytest.raises(ValueError, match=r"has \d+ tokens, but the tokenizer of hf:.* has 11"):
        init_from.apply_to_config(config, source)


# --- load_params and check_shapes --------------------------------------------------------------


def test_load_params_from_hf_gives_the_same_arrays(hf_source):
    path, params = hf_source
    source = init_from.resolve(f"hf:{path}")
    loaded = init_from.load_params(source, HF_CFG)
    init_from.check_shapes(loaded, expected_shapes(HF_CFG), source)
    jax.tree.map(np.testing.assert_array_equal, loaded, params)


def test_load_params_into_scanned_bf16_layers_with_a_shorter_context(hf_source):
    path, params = hf_source
    source = init_from.resolve(f"hf:{path}")
    cfg = dataclasses.replace(HF_CFG, block_size=8, scan_layers=True, param_dtype="bfloat16")
    loaded = init_from.load_params(source, cfg)
    init_from.check_shapes(loaded, expected_shapes(cfg), source)
    assert {leaf.dtype for leaf in jax.tree.leaves(loaded)} == {np.dtype(ml_dtypes.bfloat16)}
    want = params["wpe"]["embedding"][:8].astype(ml_dtypes.bfloat16)
    np.testing.assert_array_equal(loaded["wpe"]["embedding"], want)
    kernel = loaded["h"]["block"]["mlp"]["c_fc"]["kernel"]  # layer i at index i
    for i in range(2):
        want = params[f"h_{i}"]["mlp"]["c_fc"]["kernel"].astype(ml_dtypes.bfloat16)
        np.testing.assert_array_equal(kernel[i], want)


@pytest.mark.parametrize("scan_layers", [False, True], ids=["unrolled", "scanned"])
def test_load_params_from_a_workdir(run_source, scan_layers):
    source = init_from.resolve(f"workdir:{run_source}")
    cfg = GPTConfig(**source.architecture, block_size=source.block_size, scan_layers=scan_layers)
    loaded = init_from.load_params(source, cfg)
    init_from.check_shapes(loaded, expected_shapes(cfg), source)
    saved, _ = restore_params(run_source)
    if scan_layers:
        loaded = {k: v for k, v in loaded.items() if k != "h"} | {
            f"h_{i}": jax.tree.map(lambda x, i=i: x[i], loaded["h"]["block"]) for i in range(2)
        }
    jax.tree.map(np.testing.assert_array_equal, loaded, jax.tree.map(np.asarray, saved))


def test_check_shapes_lists_what_does_not_fit(hf_source):
    path, _ = hf_source
    source = init_from.resolve(f"hf:{path}")
    loaded = init_from.load_params(source, HF_CFG)
    wider = expected_shapes(dataclasses.replace(HF_CFG, vocab_size=20))
    with pytest.raises(ValueError) as info:
        init_from.check_shapes(loaded, wider, source)
    assert str(info.value) == (
        f"the weights of hf:{path} do not fit the model (1 arrays):\n"
        "  wte/embedding: weights (13, 16), model (20, 16)"
    )
    del loaded["ln_f"]["bias"]
    with pytest.raises(
        ValueError, match=r"\(1 arrays\):\n  ln_f/bias: weights None, model \(16,\)"
    ):
        init_from.check_shapes(loaded, expected_shapes(HF_CFG), source)
    # A model of another width differs everywhere: the count is complete, the list kept short.
    wide = expected_shapes(dataclasses.replace(HF_CFG, n_embd=32))
    with pytest.raises(ValueError) as info:
        init_from.check_shapes(init_from.load_params(source, HF_CFG), wide, source)
    header, *lines = str(info.value).split("\n")
    assert header.endswith(f"({len(jax.tree.leaves(wide))} arrays):") and len(lines) == 10
