"""ONNX export: onnxruntime gives jaxgpt's logits at any batch and length, from random params
and from a trained workdir through the command; the KV cache (prefill with an empty past, then
one-token steps, Optimum's protocol) equals jaxgpt's full forward for GPT-2, Llama (GQA) and
Qwen3 (GQA + QK-norm); the numpy generation loop over onnxruntime gives jaxgpt's greedy text
(mixed prompt lengths, past the context) and the command serves it; torch loads only for ONNX;
clear errors."""

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

from jaxgpt import generate as generate_command  # noqa: E402
from jaxgpt.decode.generate import generate_batch  # noqa: E402
from jaxgpt.export import main  # noqa: E402
from jaxgpt.interop import onnx as export_onnx_lib  # noqa: E402
from jaxgpt.interop.onnx import (  # noqa: E402
    cached_logits,
    check_against_jaxgpt,
    onnx_config,
    onnx_logits,
    past_names,
    present_names,
    to_onnx,
)
from jaxgpt.interop.onnx_generate import OnnxLM, generate, load_onnx, pick  # noqa: E402
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
    inputs, outputs = {v.name: v for v in graph.input}, {v.name: v for v in graph.output}
    # Optimum's names, in its order: layer 0 key, layer 0 value, layer 1 key, ...
    assert list(inputs) == ["input_ids", "attention_mask", "position_ids", *past_names(2)]
    assert list(outputs) == ["logits", *present_names(2)]
    dims = lambda v: [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim]
    for name in ("input_ids", "attention_mask", "position_ids"):
        assert inputs[name].type.tensor_type.elem_type == onnx.TensorProto.INT64
        assert all(isinstance(d, str) for d in dims(inputs[name]))  # named, not fixed
    assert dims(outputs["logits"])[-1] == CFG.vocab_size
    head_dim = CFG.n_embd // CFG.n_head
    for name in [*past_names(2), *present_names(2)]:
        batch, heads, length, q = dims(inputs.get(name) or outputs[name])
        assert isinstance(batch, str) and isinstance(length, str) and (heads, q) == (4, head_dim)
    assert_same_logits(path, CFG, params)


def test_scanned_bias_free_params_export_too(tmp_path):
    cfg = dataclasses.replace(CFG, bias=False, scan_layers=True)
    unrolled = random_params(dataclasses.replace(cfg, scan_layers=False), seed=3)
    blocks = [unrolled.pop(f"h_{i}") for i in range(cfg.n_layer)]
    params = {**unrolled, "h": {"block": jax.tree.map(lambda *xs: np.stack(xs), *blocks)}}
    path = to_onnx(params, cfg, tmp_path / "model.onnx")
    assert_same_logits(path, cfg, params)


LLAMA = dict(
    vocab_size=97, block_size=16, n_layer=2, n_head=4, n_embd=32, bias=False, position="rope",
    rope_theta=50000.0, norm="rmsnorm", mlp="swiglu", n_kv_head=2, tie_embeddings=False,
)  # fmt: skip
FAMILIES = {
    "gpt2": CFG,
    "llama_gqa": GPTConfig(**LLAMA),  # LlamaForCausalLM
    "qwen3_gqa_qknorm": GPTConfig(**{**LLAMA, "qk_norm": True}),  # Qwen3ForCausalLM
}


@pytest.fixture(scope="module", params=sorted(FAMILIES))
def exported(request, tmp_path_factory) -> tuple[GPTConfig, dict, Path]:
    """(cfg, params, model.onnx) per family; perturbed weights doubled (logits of std ≈ 1.2),
    so attention is far from uniform and a wrong position or a stale cache shows."""
    cfg = FAMILIES[request.param]
    params = jax.tree.map(lambda x: 2 * x, random_params(cfg, seed=5))
    path = to_onnx(params, cfg, tmp_path_factory.mktemp(request.param) / "model.onnx")
    return cfg, params, path


def onnx_lm(cfg: GPTConfig, path: Path, eot_id: int = -1, vocab_limit: int = 0) -> OnnxLM:
    """What load_onnx reads from a folder's config.json, for a bare graph."""
    names = past_names(cfg.n_layer)
    sess = export_onnx_lib.session(path)
    return OnnxLM(sess, names, cfg.kv_heads, cfg.head_dim, cfg.block_size, eot_id,
                  vocab_limit or cfg.vocab_size)  # fmt: skip


def test_cached_steps_equal_the_full_forward(exported):
    """Optimum's protocol: prefill 8 tokens with an empty past, then 4 one-token steps, each
    fed the step before's present tensors; plus the export command's own self-check."""
    cfg, params, path = exported
    tokens = np.random.default_rng(1).integers(0, cfg.vocab_size, (3, 12))
    want = jax_logits(cfg, params, tokens)
    got = cached_logits(path, tokens, prefill=8)
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, atol=TOL, rtol=0)
    # A wrong past would not be caught if the steps ignored it: cut the past, logits move.
    assert np.abs(cached_logits(path, tokens[:, 7:], prefill=1)[:, 1:] - want[:, 8:]).max() > 0.1
    assert check_against_jaxgpt(path, params, cfg) <= TOL


def test_greedy_generation_equals_jaxgpts_sampler(exported):
    """Prompts of different lengths share a batch (left padding, Optimum's positions); past the
    context the rows slide as jaxgpt's do; the cache changes nothing but the speed."""
    cfg, params, path = exported
    lm = onnx_lm(cfg, path)
    rng = np.random.default_rng(2)
    prompts = [rng.integers(0, cfg.vocab_size, n).tolist() for n in (3, 9, 5)]
    for n_new in (6, 2 * cfg.block_size + 3):
        ours = generate(lm, prompts, n_new, temperature=0)
        want = generate_batch(GPT(cfg), params, prompts, n_new, jax.random.key(0), 0.0)
        assert ours == want
        assert generate(lm, prompts, n_new, temperature=0, use_cache=False) == ours
    alone = [generate(lm, [p], 6, temperature=0)[0] for p in prompts]
    assert alone == generate(lm, prompts, 6, temperature=0)


def test_sampling_follows_its_settings(exported):
    cfg, _, path = exported
    eot = 7
    lm = onnx_lm(cfg, path, eot_id=eot, vocab_limit=cfg.vocab_size - 10)
    prompts = [[1, 2, 3]] * 8
    once = generate(lm, prompts, 10, seed=3, temperature=1.5)
    assert once == generate(lm, prompts, 10, seed=3, temperature=1.5)  # seeded
    assert once != generate(lm, prompts, 10, seed=4, temperature=1.5)
    assert len({tuple(r) for r in once}) > 1  # rows draw apart
    for row in once:  # cut after end-of-text, never a padding row
        assert all(t < cfg.vocab_size - 10 for t in row)
        assert eot not in row[:-1] and (len(row) == 10 or row[-1] == eot)
    greedy = generate(lm, prompts, 10, temperature=0)
    assert generate(lm, prompts, 10, seed=9, temperature=2.0, top_k=1) == greedy
    assert generate(lm, prompts, 10, seed=9, temperature=2.0, top_p=1e-6) == greedy


def test_pick_draws_from_the_filtered_softmax():
    logits = np.log(np.array([[0.1, 0.4, 0.2, 0.3, 5.0]] * 20000))
    rng = np.random.default_rng(0)
    counts = lambda ids: np.bincount(ids, minlength=4)[:4] / len(ids)
    # vocab_limit 4 drops the last (padding) id; top_k 3 drops id 0 (the smallest).
    np.testing.assert_allclose(counts(pick(logits, rng, 1.0, 0, 1.0, 4)), [0.1, 0.4, 0.2, 0.3],
                               atol=0.015)  # fmt: skip
    np.testing.assert_allclose(counts(pick(logits, rng, 1.0, 3, 1.0, 4)), [0, 4 / 9, 2 / 9, 1 / 3],
                               atol=0.015)  # fmt: skip
    # top_p 0.6: the smallest set reaching 0.6 is {0.4, 0.3} (0.7).
    np.testing.assert_allclose(counts(pick(logits, rng, 1.0, 0, 0.6, 4)), [0, 4 / 7, 0, 3 / 7],
                               atol=0.015)  # fmt: skip
    # Temperature 0.5 squares the probabilities (before normalizing).
    sq = np.array([0.01, 0.16, 0.04, 0.09])
    np.testing.assert_allclose(counts(pick(logits, rng, 0.5, 0, 1.0, 4)), sq / sq.sum(),
                               atol=0.015)  # fmt: skip
    assert (pick(logits[:2], rng, 0.0, 0, 1.0, 4) == 1).all()


def test_config_json_names_the_cache_and_both_rope_keys():
    cfg = FAMILIES["qwen3_gqa_qknorm"]
    config = onnx_config(cfg, eot_id=3, tokenizer_vocab_size=90, step=12)
    assert config["architectures"] == ["Qwen3ForCausalLM"] and config["eos_token_id"] == 3
    assert config["rope_theta"] == config["rope_parameters"]["rope_theta"] == 50000.0
    assert config["num_key_value_heads"] == 2 and config["head_dim"] == 8
    onnx = config["jaxgpt"]["onnx"]
    assert (onnx["kv_cache"], onnx["layers"], onnx["kv_heads"], onnx["max_seq"]) == (True, 2, 2, 16)
    assert config["jaxgpt"]["tokenizer_vocab_size"] == 90


def test_generation_errors_are_clear(tmp_path):
    import onnx
    from onnx import TensorProto, helper

    # A graph as jaxgpt exported before the cache: input_ids → logits only.
    graph = helper.make_graph(
        [helper.make_node("Cast", ["input_ids"], ["logits"], to=TensorProto.FLOAT)],
        "old",
        [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "seq"])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", "seq"])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    onnx.save(model, str(tmp_path / "model.onnx"))
    (tmp_path / "config.json").write_text(json.dumps({"vocab_size": 5, "n_positions": 8}))
    with pytest.raises(ValueError, match=r"model\.onnx has no KV cache inputs.*export the run"):
        load_onnx(tmp_path)
    with pytest.raises(ValueError, match=r"no past_key_values inputs: export it again"):
        cached_logits(tmp_path / "model.onnx", np.zeros((1, 3)), 2)
    (tmp_path / "model.onnx").unlink()
    with pytest.raises(FileNotFoundError, match=r"model\.onnx is missing"):
        load_onnx(tmp_path)


def test_long_and_empty_prompts_are_refused(exported):
    cfg, _, path = exported
    lm = onnx_lm(cfg, path)
    with pytest.raises(ValueError, match=rf"exceeds the model's context of {cfg.block_size}"):
        generate(lm, [[1] * (cfg.block_size + 1)], 2)
    with pytest.raises(ValueError, match="every prompt needs at least one token"):
        generate(lm, [[1], []], 2)


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
    onnx = config["jaxgpt"]["onnx"]
    assert (onnx["kv_cache"], onnx["layers"], onnx["kv_heads"]) == (True, 2, 2)

    # The generate command runs the folder (its tokenizer, cache and stop token) and writes
    # what it writes from the workdir: greedy, two prompts of different lengths, past the context.
    greedy = ["--prompt", "line 3", "--prompt", "line 10: a fox ran", "--temperature", "0",
              "--max_tokens", "40"]  # fmt: skip
    generate_command.main(["--workdir", str(run_dir), *greedy])
    from_workdir = capsys.readouterr().out
    generate_command.main(["--onnx", str(out), *greedy])
    assert capsys.readouterr().out == from_workdir
    assert "line 10: a fox ran" in from_workdir
    generate_command.main(["--onnx", str(out), "--prompt", "line", "--num_samples", "3",
                           "--top_k", "5", "--max_tokens", "8"])  # fmt: skip
    assert capsys.readouterr().out.count("── sample") == 3


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
    with pytest.raises(SystemExit, match=r"error: .*nowhere is not an ONNX export: .*config"):
        generate_command.main(["--onnx", str(tmp_path / "nowhere"), "--prompt", "a"])

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
    code = code.replace("jaxgpt.export,", "jaxgpt.export, jaxgpt.generate,")
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
