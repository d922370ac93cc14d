"""Llama-style switches (rope, RMSNorm, SwiGLU, GQA, untied head, QK-norm) and their interop:
transformers computes the same logits from exported weights (LlamaForCausalLM, and
Qwen3ForCausalLM for QK-norm), randomly initialized transformers models import (sharded
safetensors included), HF → jaxgpt → HF is bitwise, cached decoding equals the full forward,
a 2×2×2 mesh equals one device, and a tiny Llama trains, generates, evaluates, exports,
fine-tunes from its export and serves. Every model is made in the test; nothing is downloaded.
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from fastapi.testclient import TestClient

from jaxgpt import init_from
from jaxgpt import metrics as metrics_lib
from jaxgpt.config import load_config_file, model_config, run_config
from jaxgpt.decode.cache import init_cache, set_lengths
from jaxgpt.decode.generate import generate_batch, unscan_params
from jaxgpt.interop.hf import (
    entries,
    gpt_config_from_hf,
    hf_config,
    hf_family,
    hf_to_params,
    import_hf,
    params_to_hf,
    transformers_model,
)
from jaxgpt.interop.hf_export import export_hf
from jaxgpt.model import GPT, GPTConfig, count_params, output_table
from jaxgpt.run.loop import train
from jaxgpt.run.scoring import evaluate
from jaxgpt.serve.app import Settings, create_app
from jaxgpt.serve.server import Options, load_backend
from jaxgpt.sharding import MeshConfig
from jaxgpt.state import next_token_loss
from jaxgpt.workdir import load_run, restore_params
from tests.helpers import losses, mesh_steps, tiny_config

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

pytestmark = pytest.mark.slow  # trains, exports and serves real models

TOL = 1e-4  # float32 logits, jaxgpt vs transformers
LLAMA = dict(
    vocab_size=97, block_size=16, n_layer=2, n_head=4, n_embd=32, bias=False,
    position="rope", rope_theta=50000.0, norm="rmsnorm", mlp="swiglu",
)  # fmt: skip
VARIANTS = {
    "mha_tied": {},
    "gqa_untied": dict(n_kv_head=2, tie_embeddings=False),
    "gqa_bias": dict(n_kv_head=2, bias=True),
    "mqa_qknorm_qwen3": dict(n_kv_head=1, qk_norm=True, tie_embeddings=False),
    "qknorm_tied_qwen3": dict(qk_norm=True, mlp_hidden=48),
    "gqa_scan": dict(n_kv_head=2, scan_layers=True),
}
LLAMA_SWITCHES = {
    "model.position": "rope",
    "model.norm": "rmsnorm",
    "model.mlp": "swiglu",
    "model.bias": False,
    "model.n_kv_head": 1,
    "model.tie_embeddings": False,
    "model.qk_norm": True,
    "model.rope_theta": 500.0,
}


def llama(**overrides) -> GPTConfig:
    return GPTConfig(**{**LLAMA, **overrides})


def random_params(cfg: GPTConfig, seed: int = 0) -> dict:
    """Random params of cfg's tree, made to matter: matrices N(0, 0.16), 8× the init's scale (so
    attention is far from uniform and a wrong rotation shows), norm scales 1 + N(0, 0.2),
    biases N(0, 0.2). Filled in numpy from the abstract tree: no init to compile."""
    tokens = jnp.zeros((1, cfg.block_size), jnp.int32)
    shapes = jax.eval_shape(lambda: nn.unbox(GPT(cfg).init(jax.random.key(0), tokens)["params"]))
    rng = np.random.default_rng(seed)

    def fill(path, leaf):
        noise = rng.standard_normal(leaf.shape).astype(np.float32)
        name = path[-1].key
        return noise * 0.16 if name in ("kernel", "embedding") else noise * 0.2 + (name == "scale")

    return jax.tree_util.tree_map_with_path(fill, shapes)


def random_tokens(cfg: GPTConfig, batch: int = 3, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, cfg.vocab_size, (batch, cfg.block_size))


def jax_logits(cfg: GPTConfig, params, tokens) -> np.ndarray:
    return np.asarray(jax.jit(GPT(cfg).apply)({"params": params}, jnp.asarray(tokens)))


def torch_logits(model, tokens) -> np.ndarray:
    with torch.no_grad():
        return model(torch.from_numpy(np.asarray(tokens, np.int64))).logits.numpy()


def hf_model(cfg: GPTConfig, params):
    """The transformers model of cfg's family holding params (what ONNX export traces)."""
    model = transformers_model(params, cfg)
    assert type(model).__name__ == hf_config(cfg)["architectures"][0]
    return model


# ---------------------------------------------------------------- export: same logits


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_exported_weights_give_transformers_the_same_logits(variant):
    cfg = llama(**VARIANTS[variant])
    params = random_params(cfg)
    sd = params_to_hf(params, cfg)
    expected_family = "qwen3" if cfg.qk_norm else "llama"
    assert hf_family(cfg) == expected_family
    keys = [e.hf_key for e in entries(cfg)]
    assert len(keys) == len(set(keys)) == len(sd)
    model = hf_model(cfg, params)
    assert type(model).__name__ == {"llama": "Llama", "qwen3": "Qwen3"}[expected_family] + (
        "ForCausalLM"
    )
    assert set(model.state_dict()) - set(sd) <= {"lm_head.weight"}  # every HF weight exported
    tokens = random_tokens(cfg)
    ours, theirs = jax_logits(cfg, params, tokens), torch_logits(model, tokens)
    assert np.abs(theirs).max() > 1.0  # logits with a scale, so 1e-4 means something
    assert np.abs(ours - theirs).max() <= TOL, np.abs(ours - theirs).max()
    assert hf_to_params(sd, cfg).keys() == params.keys()
    jax.tree.map(np.testing.assert_array_equal, hf_to_params(sd, cfg), params)


def test_gpt2_with_its_own_width_and_epsilon_takes_the_same_route():
    """transformers_model builds GPT2LMHeadModel for the default switches (n_inner, epsilon)."""
    cfg = llama(position="learned", norm="layernorm", mlp="gelu", bias=True, mlp_hidden=48,
                norm_eps=1e-6)  # fmt: skip
    params = random_params(cfg)
    model = hf_model(cfg, params)
    assert (model.config.n_inner, model.config.layer_norm_epsilon) == (48, 1e-6)
    tokens = random_tokens(cfg)
    assert np.abs(jax_logits(cfg, params, tokens) - torch_logits(model, tokens)).max() <= TOL
    assert gpt_config_from_hf(hf_config(cfg)) == dataclasses.replace(cfg, rope_theta=10000.0)


def test_rotary_convention_matters():
    """Negative control: the same weights under another θ (a different rotation) are far off,
    so the 1e-4 agreement above is not an accident of weak attention."""
    cfg = llama(n_kv_head=2)
    params = random_params(cfg)
    model = hf_model(cfg, params)
    tokens = random_tokens(cfg)
    other = jax_logits(dataclasses.replace(cfg, rope_theta=10.0), params, tokens)
    assert np.abs(other - torch_logits(model, tokens)).max() > 0.1


# ---------------------------------------------------------------- import from transformers


def random_hf_llama(kind: str, seed: int = 0, **fields):
    """A randomly initialized transformers Llama/Qwen3 (GQA) with every norm weight randomized
    (transformers initializes them to one)."""
    torch.manual_seed(seed)
    common = dict(
        vocab_size=89, hidden_size=48, intermediate_size=80, num_hidden_layers=2,
        num_attention_heads=6, num_key_value_heads=2, max_position_embeddings=24,
        rms_norm_eps=1e-6, rope_parameters={"rope_theta": 30000.0, "rope_type": "default"},
        tie_word_embeddings=False, head_dim=8,
    )  # fmt: skip
    if kind == "llama":
        model = transformers.LlamaForCausalLM(transformers.LlamaConfig(**{**common, **fields}))
    else:
        model = transformers.Qwen3ForCausalLM(transformers.Qwen3Config(**{**common, **fields}))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.normal_(1.0, 0.3)
            else:
                p.mul_(8)  # as random_params: attention far from uniform
    return model.eval()


@pytest.mark.parametrize("kind", ["llama", "qwen3"])
def test_import_of_a_saved_transformers_model(kind, tmp_path):
    """save_pretrained with small shards (an index and several files) imports as the same
    model, unrolled or scanned."""
    model = random_hf_llama(kind)
    model.save_pretrained(tmp_path, max_shard_size="20KB")
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 1
    cfg, params = import_hf(tmp_path)
    assert (cfg.n_head, cfg.kv_heads, cfg.mlp_dim, cfg.rope_theta, cfg.norm_eps) == (
        6, 2, 80, 30000.0, 1e-6,
    )  # fmt: skip
    assert cfg.qk_norm == (kind == "qwen3") and not cfg.tie_embeddings and not cfg.bias
    tokens = random_tokens(cfg, seed=2)[:, :20]
    expected = torch_logits(model, tokens)
    assert np.abs(jax_logits(cfg, params, tokens) - expected).max() <= TOL
    scan_cfg, scanned = import_hf(tmp_path, scan_layers=True)
    assert np.abs(jax_logits(scan_cfg, scanned, tokens) - expected).max() <= TOL


@pytest.mark.parametrize(
    ("kind", "tied", "dtype"),
    [("llama", False, "float32"), ("llama", True, "bfloat16"), ("qwen3", True, "float32")],
)
def test_hf_to_jaxgpt_to_hf_is_bitwise(kind, tied, dtype):
    biased = dict(attention_bias=True, mlp_bias=True) if kind == "llama" else {}
    model = random_hf_llama(kind, seed=3, tie_word_embeddings=tied, **biased)
    torch_dtype = getattr(torch, dtype)
    sd = {k: v.to(torch_dtype) for k, v in model.state_dict().items()}
    cfg = gpt_config_from_hf(model.config.to_dict())
    assert cfg.bias == (kind == "llama")
    back = params_to_hf(hf_to_params(sd, cfg), cfg)
    assert back.keys() == sd.keys() - ({"lm_head.weight"} if tied else set())
    bits = (np.int16, torch.int16) if dtype == "bfloat16" else (np.int32, torch.int32)
    for key, value in back.items():
        np.testing.assert_array_equal(
            value.view(bits[0]), sd[key].view(bits[1]).numpy(), err_msg=key
        )


def test_config_json_round_trip_and_refusals():
    for overrides in VARIANTS.values():
        cfg = llama(**{**overrides, "scan_layers": False})
        fields = hf_config(cfg, 5, 5)
        # Both spellings of θ: transformers 4, vLLM and llama.cpp read the top-level one.
        assert fields["rope_theta"] == fields["rope_parameters"]["rope_theta"] == cfg.rope_theta
        back = gpt_config_from_hf(fields)  # eos (5) comes back as the end-of-text id
        expected = dataclasses.replace(
            cfg, n_kv_head=cfg.kv_heads, mlp_hidden=cfg.mlp_dim, eot_id=5
        )
        assert back == expected
    only_old_key = {**hf_config(llama()), "rope_parameters": None, "rope_theta": 1234.0}
    assert gpt_config_from_hf(only_old_key).rope_theta == 1234.0
    scaled = {**hf_config(llama()), "rope_parameters": {"rope_type": "llama3", "factor": 8.0}}
    for bad, match in [
        (scaled, r"rope scaling .* not supported"),
        ({**hf_config(llama()), "hidden_act": "gelu"}, r"unsupported llama variant: hidden_act"),
        ({**hf_config(llama(qk_norm=True)), "use_sliding_window": True}, r"use_sliding_window"),
        ({"model_type": "llama"}, r"lacks vocab_size"),
        ({"model_type": "t5"}, r"'t5'; jaxgpt loads 'gpt2', 'llama', 'qwen3'"),
    ]:
        with pytest.raises(ValueError, match=match):
            gpt_config_from_hf(bad)


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        (dict(norm="layernorm"), r"model\.norm='layernorm'"),
        (dict(position="learned", norm="layernorm", mlp="gelu", n_kv_head=2), r"model\.n_kv_head"),
        (dict(mlp="relu2"), r"model\.mlp='relu2'"),
        (dict(qk_norm=True, bias=True), r"qk_norm=True with model\.bias=True"),
    ],
)
def test_export_refuses_models_transformers_has_no_architecture_for(overrides, match):
    with pytest.raises(ValueError, match=match):
        hf_family(llama(**overrides))


# ---------------------------------------------------------------- config


@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        (dict(n_kv_head=3), "n_kv_head"),
        (dict(n_kv_head=-1), "n_kv_head"),
        (dict(position="alibi"), "position"),
        (dict(norm="batchnorm"), "norm"),
        (dict(mlp="geglu"), "mlp"),
        (dict(n_embd=36, n_head=4), "position"),  # head dim 9 cannot rotate in pairs
        (dict(rope_theta=0.0), "rope_theta"),
    ],
)
def test_config_errors_name_the_key(overrides, key):
    with pytest.raises(ValueError, match=rf"model\.{key}\b"):
        llama(**overrides)


def test_presets_have_the_shapes_they_name():
    """llama_135m / llama_360m have SmolLM2-135M's / -360M's tensors; llama_tiny is a Llama."""
    counts = {"llama_135m": 134_515_008, "llama_360m": 361_821_120}
    for name, expected in counts.items():
        cfg = model_config(run_config(load_config_file(name)).model, 49152)
        shapes = jax.eval_shape(
            lambda cfg=cfg: nn.unbox(GPT(cfg).init(jax.random.key(0), jnp.zeros((1, 8), int)))
        )["params"]
        assert count_params(shapes) == expected, name
        assert hf_family(cfg) == "llama" and cfg.head_dim == 64
    tiny = model_config(run_config(load_config_file("llama_tiny")).model, 2048)
    assert hf_family(tiny) == "llama" and tiny.kv_heads == 2


def stack_layers(params, n_layer: int) -> dict:
    layers = [params[f"h_{i}"] for i in range(n_layer)]
    rest = {k: v for k, v in params.items() if not k.startswith("h_")}
    return {**rest, "h": {"block": jax.tree.map(lambda *xs: np.stack(xs), *layers)}}


def test_scan_remat_and_xla_attention_compute_the_plain_model():
    """The switches go through scanned layers, rematerialization and the library attention
    (GQA with K < H) with the plain model's logits and gradients."""
    cfg = llama(n_kv_head=2, qk_norm=True, tie_embeddings=False)
    params, tokens = random_params(cfg), random_tokens(cfg)

    def logits_and_grads(cfg, params):
        loss = lambda p: GPT(cfg).apply({"params": p}, tokens).mean()
        return jax.jit(GPT(cfg).apply)({"params": params}, tokens), jax.jit(jax.grad(loss))(params)

    ref, ref_grads = logits_and_grads(cfg, params)
    for variant in (
        dict(remat="dots"),
        dict(scan_layers=True, remat="full"),
        dict(attention="xla"),
    ):
        other = dataclasses.replace(cfg, **variant)
        p = stack_layers(params, cfg.n_layer) if other.scan_layers else params
        want = stack_layers(ref_grads, cfg.n_layer) if other.scan_layers else ref_grads
        got, grads = logits_and_grads(other, p)
        np.testing.assert_allclose(got, ref, atol=1e-4, err_msg=str(variant))
        for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(want), strict=True):
            np.testing.assert_allclose(a, b, atol=1e-6, rtol=1e-4, err_msg=str(variant))


def test_untied_head_is_the_output_table():
    """output_table is what the logits read: lm_head when untied, wte when tied."""
    for cfg in (llama(), llama(tie_embeddings=False)):
        params = random_params(cfg)
        tokens = random_tokens(cfg)
        hidden = GPT(cfg).apply({"params": params}, tokens, method=GPT.hidden_states)
        np.testing.assert_allclose(
            hidden @ output_table(params).T, jax_logits(cfg, params, tokens), atol=1e-4, rtol=1e-5
        )


def test_chunked_loss_with_an_untied_head_equals_the_full_loss():
    cfg = llama(tie_embeddings=False)
    params = random_params(cfg)
    batch = jnp.asarray(np.random.default_rng(0).integers(0, 97, (2, cfg.block_size + 1)))
    full = next_token_loss(params, GPT(cfg), batch, None)
    chunked = next_token_loss(params, GPT(dataclasses.replace(cfg, loss_chunk=5)), batch, None)
    np.testing.assert_allclose(chunked, full, rtol=1e-5)


# ---------------------------------------------------------------- KV cache


@pytest.mark.parametrize("variant", ["mha_tied", "gqa_untied", "mqa_qknorm_qwen3", "gqa_scan"])
def test_cached_decode_equals_the_full_forward(variant):
    """Prompts of different lengths prefilled into one cache, then one token at a time: every
    step's logits equal the full forward's at that position."""
    cfg = llama(**VARIANTS[variant])
    params, model = unscan_params(random_params(cfg), GPT(cfg))
    tokens = random_tokens(cfg, batch=2, seed=5)
    full = jax_logits(model.config, params, tokens)
    lens = np.array([5, 9], np.int32)
    prompt = np.where(np.arange(9)[None] < lens[:, None], tokens[:, :9], 0)
    caches = init_cache(model.config, 2, cfg.block_size)
    apply = jax.jit(model.apply)
    logits, caches = apply({"params": params}, prompt, caches=caches)
    for b in range(2):
        np.testing.assert_allclose(logits[b, : lens[b]], full[b, : lens[b]], atol=1e-4)
    caches = set_lengths(caches, lens)
    for _ in range(5):
        pos = np.asarray(caches[0].length_B)
        step = tokens[np.arange(2), pos][:, None]
        logits, caches = apply({"params": params}, step, caches=caches)
        np.testing.assert_allclose(logits[:, 0], full[np.arange(2), pos], atol=1e-4)


def test_greedy_generation_follows_the_full_forward():
    cfg = llama(n_kv_head=2, tie_embeddings=False)
    params = random_params(cfg)
    prompt = list(random_tokens(cfg, batch=1)[0, :4])
    (drawn,) = generate_batch(GPT(cfg), params, [prompt], 8, jax.random.key(0), temperature=0.0)
    text = prompt + drawn
    logits = jax_logits(cfg, params, np.array([text[:-1]]))
    assert drawn == list(np.argmax(logits[0, len(prompt) - 1 :], axis=-1))


# ---------------------------------------------------------------- sharding


def test_2x2x2_mesh_matches_one_device():
    """data×fsdp×tensor = 2×2×2 with GQA (4 query, 2 kv heads), QK-norm and an untied head:
    same losses, grad norms and params as one device; kv heads really split over tensor."""
    cfg = llama(n_kv_head=2, qk_norm=True, tie_embeddings=False, vocab_size=96)
    ref_hist, ref_params, _ = mesh_steps(cfg, MeshConfig(1, 1, 1), jax.devices()[:1])
    hist, params, state = mesh_steps(cfg, MeshConfig(2, 2, 2), jax.devices())
    for ref, got in zip(ref_hist, hist, strict=True):
        assert got["loss"] == pytest.approx(ref["loss"], abs=1e-5)
        assert got["grad_norm"] == pytest.approx(ref["grad_norm"], abs=1e-5)
    diffs = jax.tree.map(lambda a, b: float(np.abs(a - b).max()), ref_params, params)
    assert max(jax.tree.leaves(diffs)) < 1e-5
    attn = state.params["h_0"]["attn"]
    assert tuple(attn["q_proj"]["kernel"].sharding.spec) == ("fsdp", "tensor", None)
    assert tuple(attn["kv_proj"]["kernel"].sharding.spec) == ("fsdp", None, "tensor", None)
    assert tuple(state.params["lm_head"]["kernel"].sharding.spec) == ("fsdp", "tensor")


# ---------------------------------------------------------------- a real run, end to end


@pytest.fixture(scope="module")
def llama_run(tmp_path_factory) -> Path:
    """A tiny Llama (MQA, QK-norm, untied head) trained 20 steps through the training loop."""
    root = tmp_path_factory.mktemp("llama")
    corpus = root / "corpus.txt"
    corpus.write_text("".join(f"line {i % 23}: the quick brown fox.\n" for i in range(600)))
    workdir = root / "run"
    train(tiny_config(corpus, **LLAMA_SWITCHES, **{"model.dropout": 0.0}), workdir)
    return workdir


def test_tiny_llama_trains(llama_run):
    got = losses(llama_run)
    assert got[20] < got[1] - 0.5, got
    params, _ = restore_params(llama_run)
    assert "wpe" not in params and "lm_head" in params
    assert {"q_proj", "kv_proj", "q_norm", "k_norm"} <= set(params["h_0"]["attn"])


def test_tiny_llama_evaluates(llama_run):
    """evaluate scores the run on its validation split as the training run's last eval did."""
    scores = evaluate(llama_run)
    evals = [r["eval_loss"] for r in metrics_lib.read_metrics(llama_run) if "eval_loss" in r]
    vocab = restore_params(llama_run)[0]["wte"]["embedding"].shape[0]
    assert scores["loss"] < np.log(vocab) - 1.0  # far from uniform: it learned something
    assert scores["loss"] == pytest.approx(evals[-1], abs=0.05), (scores, evals)


def test_export_loads_offline_and_fine_tunes(llama_run, tmp_path, monkeypatch):
    """export → transformers (offline) gives the same logits; init_from=hf: takes the export's
    weights bit for bit and trains on."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    out = export_hf(llama_run, tmp_path / "hf")
    config = json.loads((out / "config.json").read_text())
    assert config["architectures"] == ["Qwen3ForCausalLM"] and config["rope_theta"] == 500.0
    model = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
    tokenizer = transformers.AutoTokenizer.from_pretrained(out)
    ids = tokenizer("line 7: the quick")["input_ids"]
    cfg, params = import_hf(out)
    ours = jax_logits(cfg, params, np.array([ids]))
    assert np.abs(ours - torch_logits(model, [ids])).max() <= TOL

    source = init_from.resolve(f"hf:{out}")
    run_params, _ = restore_params(llama_run)
    loaded = init_from.load_params(source, dataclasses.replace(cfg, block_size=16))
    jax.tree.map(np.testing.assert_array_equal, loaded, jax.tree.map(np.asarray, run_params))
    corpus = tmp_path / "more.txt"
    corpus.write_text("the quick brown fox jumps over the lazy dog.\n" * 200)
    overrides = {"init_from": f"hf:{out}", "train.steps": 2, "train.eval_every": 0}
    train(tiny_config(corpus, **overrides, **{"model.block_size": 16}), tmp_path / "tuned")
    tuned, _ = restore_params(tmp_path / "tuned")
    assert tuned["h_0"]["attn"]["kv_proj"]["kernel"].shape == (32, 2, 1, 16)


def test_tiny_llama_serves(llama_run):
    """The server's decoder (continuous batching over one KV cache) answers a greedy request
    with what offline generation draws."""
    options = Options(workdir=str(llama_run), max_batch=2, score_rows=0)
    app = create_app(Settings(), lambda metrics: load_backend(options, metrics))
    with TestClient(app) as client:
        deadline = time.monotonic() + 120
        while client.get("/health").status_code != 200:
            assert time.monotonic() < deadline, "the server did not get ready"
            time.sleep(0.2)
        name = client.get("/v1/models").json()["data"][0]["id"]
        body = {"model": name, "prompt": "line 3", "max_tokens": 12, "temperature": 0}
        reply = client.post("/v1/completions", json=body)
        assert reply.status_code == 200, reply.text
        text = reply.json()["choices"][0]["text"]
    run = load_run(llama_run)
    prompt = run.tokenizer.encode("line 3")
    (drawn,) = generate_batch(run.model, run.params, [prompt], 12, jax.random.key(0), 0.0)
    eot = run.tokenizer.eot_id
    drawn = drawn[: drawn.index(eot)] if eot in drawn else drawn  # the server stops there
    assert text == run.tokenizer.decode(drawn)
