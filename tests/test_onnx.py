"""ONNX export: onnxruntime gives jaxgpt's logits at any batch and length, from random params
and from a trained workdir through the command; torch loads only for ONNX; clear errors."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing may be downloaded: every load is local

pytest.importorskip("torch")
pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")
transformers = pytest.importorskip("transformers")

from jaxgpt.export import main  # noqa: E402
from jaxgpt.interop import onnx as export_onnx_lib  # noqa: E402
from jaxgpt.interop.onnx import onnx_logits, to_onnx  # noqa: E402
from jaxgpt.model import GPT, GPTConfig  # noqa: E402
from jaxgpt.workdir import load_run  # noqa: E402

pytestmark = pytest.mark.slow  # trains or exports real runs; not in the fast subset

REPO = Path(__file__).resolve().parent.parent
CFG = GPTConfig(vocab_size=101, block_size=32, n_layer=2, n_head=4, n_embd=32)
TOL = 1e-4


def random_params(cfg: GPTConfig, seed: int = 0) -> dict:
    """Initialized params with every leaf perturbed, so zero biases and unit scales can't hide
    a wrong mapping."""
    params = nn.unbox(GPT(cfg).init(jax.random.key(seed), jnp.zeros((1, 8), jnp.int32))["params"])
    leaves, treedef = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.key(seed + 1), len(leaves))
    noise = [0.05 * jax.random.normal(k, x.shape) for x, k in zip(leaves, keys, strict=True)]
    noisy = [np.asarray(x + n) for x, n in zip(leaves, noise, strict=True)]
    return jax.tree.unflatten(treedef, noisy)


def jax_logits(cfg: GPTConfig, params: dict, tokens: np.ndarray) -> np.ndarray:
    return np.asarray(GPT(cfg).apply({"params": params}, jnp.asarray(tokens, jnp.int32)))


def assert_same_logits(path: Path, cfg: GPTConfig, params: dict) -> float:
    """Two batch sizes and lengths other than the traced (2, 8): the axes really are dynamic."""
    worst = 0.0
    for seed, shape in enumerate([(3, 17), (1, cfg.block_size), (5, 1)]):
        tokens = np.random.default_rng(seed).integers(0, cfg.vocab_size, shape)
        got = onnx_logits(path, tokens)
        assert got.shape == (*shape, cfg.vocab_size) and got.dtype == np.float32
        worst = max(worst, float(np.abs(got - jax_logits(cfg, params, tokens)).max()))
    assert worst <= TOL, worst
    return worst


def test_random_params_give_jaxgpts_logits_at_any_shape(tmp_path):
    params = random_params(CFG)
    path = to_onnx(params, CFG, tmp_path / "model.onnx")
    import onnx

    graph = onnx.load(str(path)).graph
    (inp,), (out,) = graph.input, graph.output
    dims = lambda v: [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim]
    assert inp.name == "input_ids" and inp.type.tensor_type.elem_type == onnx.TensorProto.INT64
    assert out.name == "logits" and dims(out)[-1] == CFG.vocab_size
    assert all(isinstance(d, str) for d in dims(inp))  # named, not fixed, batch and seq
    assert_same_logits(path, CFG, params)


def test_scanned_bias_free_params_export_too(tmp_path):
    cfg = dataclasses.replace(CFG, bias=False, scan_layers=True)
    unrolled = random_params(dataclasses.replace(cfg, scan_layers=False), seed=3)
    blocks = [unrolled.pop(f"h_{i}") for i in range(cfg.n_layer)]
    params = {**unrolled, "h": {"block": jax.tree.map(lambda *xs: np.stack(xs), *blocks)}}
    path = to_onnx(params, cfg, tmp_path / "model.onnx")
    assert_same_logits(path, cfg, params)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    from jaxgpt.run.loop import train
    from tests.helpers import tiny_config

    tmp = tmp_path_factory.mktemp("onnx_run")
    corpus = tmp / "corpus.txt"
    corpus.write_text("".join(f"line {i % 11}: a fox ran by the river.\n" for i in range(1500)))
    config = tiny_config(
        corpus, **{"train.steps": 10, "model.dropout": 0.0, "train.eval_every": 0,
                   "train.sample_tokens": 0, "ckpt.every": 10}
    )  # fmt: skip
    train(config, tmp / "run")
    return tmp / "run"


def test_command_exports_a_trained_run_with_its_tokenizer(run_dir, tmp_path, capsys):
    out = tmp_path / "onnx"
    main(["--workdir", str(run_dir), "--out", str(out), "--format", "onnx"])
    printed = capsys.readouterr().out
    assert "wrote" in printed and "model.onnx" in printed
    self_check = re.search(r"max \|logit diff\| (\S+)\)", printed)
    assert self_check and float(self_check.group(1)) <= TOL, printed
    assert {"model.onnx", "config.json", "tokenizer.json", "tokenizer_config.json"} <= {
        p.name for p in out.iterdir()
    }
    run = load_run(run_dir)
    assert_same_logits(out / "model.onnx", run.gpt_config, run.params)
    config = json.loads((out / "config.json").read_text())
    assert config["jaxgpt"]["onnx"]["max_seq"] == run.gpt_config.block_size
    assert config["eos_token_id"] == run.tokenizer.eot_id
    # A user tokenizes with transformers alone and gets the ids the model was trained on.
    hf_tok = transformers.AutoTokenizer.from_pretrained(out, local_files_only=True)
    text = "line 3: a fox"
    assert hf_tok(text)["input_ids"] == run.tokenizer.encode(text)


def test_clear_errors(run_dir, tmp_path, monkeypatch):
    nowhere = r"error: .*nowhere is not a jaxgpt workdir .*config\.json is missing"
    with pytest.raises(SystemExit, match=nowhere):
        main(["--workdir", str(tmp_path / "nowhere"), "--out", str(tmp_path / "a"), "--format",
              "onnx"])  # fmt: skip
    with pytest.raises(SystemExit, match=r"error: ONNX export is float32 only.*--format hf"):
        main(["--workdir", str(run_dir), "--out", str(tmp_path / "b"), "--format", "onnx",
              "--dtype", "bfloat16"])  # fmt: skip
    with pytest.raises(SystemExit, match=r"no checkpoint for step 7"):
        main(["--workdir", str(run_dir), "--out", str(tmp_path / "c"), "--format", "onnx",
              "--step", "7"])  # fmt: skip
    with pytest.raises(SystemExit, match="must not be the workdir"):
        main(["--workdir", str(run_dir), "--out", str(run_dir), "--format", "onnx"])

    real = export_onnx_lib.importlib.util.find_spec
    monkeypatch.setattr(
        export_onnx_lib.importlib.util,
        "find_spec",
        lambda name, *a: None if name == "onnxruntime" else real(name, *a),
    )
    with pytest.raises(SystemExit, match=r'needs onnxruntime: run `pip install -e "\.\[onnx\]"`'):
        main(["--workdir", str(run_dir), "--out", str(tmp_path / "d"), "--format", "onnx"])


@pytest.mark.e2e
def test_torch_and_onnx_load_only_for_the_onnx_format():
    heavy = ("torch", "transformers", "onnx", "onnxruntime", "onnxscript")
    code = (
        "import sys, jaxgpt.export, jaxgpt.interop.onnx; "
        f"print([m for m in {heavy!r} if m in sys.modules])"
    )
    env = {**os.environ, "XLA_FLAGS": "", "JAX_PLATFORMS": "cpu"}
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
