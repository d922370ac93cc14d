"""Hugging Face Llama and Qwen3 ⇄ jaxgpt: the key tables and config.json both ways.

A jaxgpt model with position="rope", norm="rmsnorm" and mlp="swiglu" is a `LlamaForCausalLM`;
with qk_norm as well (and no biases), a `Qwen3ForCausalLM`, whose q_norm/k_norm are RMSNorms
over each head's Q applied before the rotation, as jaxgpt's. jaxgpt rotates in HF's half-split
convention (model.apply_rope), so every entry is a rename, a transpose (torch Linear weights are
(out, in), our kernels (in, ..., out)) and a reshape; no rotary permutation. Fused kernels
(c_attn's q|k|v, kv_proj's k|v, swiglu's gate|up) give one HF tensor per part.

The tables here are plain data; jaxgpt.interop.hf expands and applies them (shared with GPT-2).
"""

from __future__ import annotations

from typing import Any

from jaxgpt.config.model import GPTConfig

# A table row: (HF key, jaxgpt path, HF shape, jaxgpt shape, part, transpose). Shapes in the
# letters of model.py ("KQ" = K·Q); part = (axis, index) of a fused jaxgpt tensor, or None;
# transpose: the HF tensor is a torch Linear weight (out, in).
Row = tuple[str, str, str, str, tuple[int, int] | None, bool]

FAMILIES = {
    # family: (architectures entry, model_type)
    "llama": ("LlamaForCausalLM", "llama"),
    "qwen3": ("Qwen3ForCausalLM", "qwen3"),
}


def top_rows(cfg: GPTConfig) -> list[Row]:
    rows: list[Row] = [
        ("model.embed_tokens.weight", "wte/embedding", "V D", "V D", None, False),
        ("model.norm.weight", "ln_f/scale", "D", "D", None, False),
    ]
    if not cfg.tie_embeddings:
        rows.append(("lm_head.weight", "lm_head/kernel", "V D", "D V", None, True))
    return rows


def _attention_rows(cfg: GPTConfig) -> list[Row]:
    """q, k, v from c_attn (D, 3, H, Q) when K == H, else from q_proj and kv_proj (D, 2, K, Q)."""
    if cfg.kv_heads == cfg.n_head:
        sources = {
            "q": ("attn/c_attn", "D 3 H Q", "3 H Q", 0),
            "k": ("attn/c_attn", "D 3 H Q", "3 H Q", 1),
            "v": ("attn/c_attn", "D 3 H Q", "3 H Q", 2),
        }
    else:
        sources = {
            "q": ("attn/q_proj", "D H Q", "H Q", None),
            "k": ("attn/kv_proj", "D 2 K Q", "2 K Q", 0),
            "v": ("attn/kv_proj", "D 2 K Q", "2 K Q", 1),
        }
    rows: list[Row] = []
    for name, (path, kernel, bias, index) in sources.items():
        width = "D" if name == "q" else "KQ"
        rows.append(
            (f"self_attn.{name}_proj.weight", f"{path}/kernel", f"{width} D", kernel,
             None if index is None else (1, index), True)
        )  # fmt: skip
        if cfg.bias:
            rows.append(
                (f"self_attn.{name}_proj.bias", f"{path}/bias", width, bias,
                 None if index is None else (0, index), False)
            )  # fmt: skip
    rows.append(("self_attn.o_proj.weight", "attn/c_proj/kernel", "D D", "H Q D", None, True))
    if cfg.bias:
        rows.append(("self_attn.o_proj.bias", "attn/c_proj/bias", "D", "D", None, False))
    if cfg.qk_norm:
        rows.append(("self_attn.q_norm.weight", "attn/q_norm/scale", "Q", "Q", None, False))
        rows.append(("self_attn.k_norm.weight", "attn/k_norm/scale", "Q", "Q", None, False))
    return rows


def block_rows(cfg: GPTConfig) -> list[Row]:
    """Rows of one layer: HF keys after model.layers.{i}., jaxgpt paths after h_{i}/."""
    rows = [
        ("input_layernorm.weight", "ln_1/scale", "D", "D", None, False),
        ("post_attention_layernorm.weight", "ln_2/scale", "D", "D", None, False),
        *_attention_rows(cfg),
        ("mlp.gate_proj.weight", "mlp/c_fc/kernel", "F D", "D 2 F", (1, 0), True),
        ("mlp.up_proj.weight", "mlp/c_fc/kernel", "F D", "D 2 F", (1, 1), True),
        ("mlp.down_proj.weight", "mlp/c_proj/kernel", "D F", "F D", None, True),
    ]
    if cfg.bias:
        rows += [
            ("mlp.gate_proj.bias", "mlp/c_fc/bias", "F", "2 F", (0, 0), False),
            ("mlp.up_proj.bias", "mlp/c_fc/bias", "F", "2 F", (0, 1), False),
            ("mlp.down_proj.bias", "mlp/c_proj/bias", "D", "D", None, False),
        ]
    return rows


def family(cfg: GPTConfig) -> str | None:
    """ "llama" or "qwen3" when cfg is one of them, None when it is no Llama-style model at all;
    a ValueError naming the fields when it is Llama-style but neither."""
    if (cfg.position, cfg.norm, cfg.mlp) != ("rope", "rmsnorm", "swiglu"):
        return None
    if not cfg.qk_norm:
        return "llama"
    if cfg.bias:
        raise ValueError(
            "model.qk_norm=True with model.bias=True has no Hugging Face architecture: Qwen3 "
            "(the one with QK-norm) has no MLP biases; train with model.bias=False"
        )
    return "qwen3"


def hf_config(
    cfg: GPTConfig, name: str, bos_token_id: int | None, eos_token_id: int | None
) -> dict[str, Any]:
    """LlamaConfig / Qwen3Config fields for cfg. rope_theta is written twice: transformers 5
    reads rope_parameters, transformers 4, vLLM and llama.cpp read the top-level rope_theta
    (without it they silently use 10000)."""
    architecture, model_type = FAMILIES[name]
    config = {
        "architectures": [architecture],
        "model_type": model_type,
        "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.n_embd,
        "intermediate_size": cfg.mlp_dim,
        "num_hidden_layers": cfg.n_layer,
        "num_attention_heads": cfg.n_head,
        "num_key_value_heads": cfg.kv_heads,
        "head_dim": cfg.head_dim,
        "hidden_act": "silu",
        "max_position_embeddings": cfg.block_size,
        "rms_norm_eps": cfg.norm_eps,
        "tie_word_embeddings": cfg.tie_embeddings,
        "attention_bias": cfg.bias,
        "attention_dropout": 0.0,
        "rope_theta": cfg.rope_theta,
        "rope_parameters": {"rope_theta": cfg.rope_theta, "rope_type": "default"},
        "initializer_range": 0.02,
        "use_cache": True,
        "bos_token_id": bos_token_id,
        "eos_token_id": eos_token_id,
    }
    if name == "llama":
        config.update(mlp_bias=cfg.bias, pretraining_tp=1)
    else:  # Qwen3: every layer full attention (no sliding window)
        config.update(
            use_sliding_window=False,
            sliding_window=None,
            max_window_layers=cfg.n_layer,
            layer_types=["full_attention"] * cfg.n_layer,
        )
    return config


def _rope_theta(config: dict[str, Any]) -> float:
    """θ from rope_parameters (transformers 5) or rope_theta (older files); scaled RoPE refused."""
    params = config.get("rope_parameters") or {}
    scaling = config.get("rope_scaling")
    kind = params.get("rope_type", params.get("type", "default"))
    if scaling or kind != "default":
        raise ValueError(
            f"rope scaling ({scaling or params}) is not supported: jaxgpt computes plain RoPE "
            "(rope_type 'default'), so the logits would differ"
        )
    return float(params.get("rope_theta", config.get("rope_theta", 10000.0)))


def _check(config: dict[str, Any], model_type: str) -> None:
    heads = config["num_attention_heads"]
    head_dim = config.get("head_dim") or config["hidden_size"] // heads
    checks = [
        ("hidden_act", config.get("hidden_act", "silu") == "silu"),
        ("head_dim", head_dim * heads == config["hidden_size"]),
        ("pretraining_tp", config.get("pretraining_tp", 1) in (1, None)),
    ]
    if model_type == "llama":
        checks.append(("mlp_bias", config.get("mlp_bias", False) == config.get("attention_bias")))
    else:
        checks += [
            ("attention_bias", not config.get("attention_bias", False)),
            ("use_sliding_window", not config.get("use_sliding_window", False)),
            ("layer_types", set(config.get("layer_types") or ["full_attention"])
             == {"full_attention"}),
        ]  # fmt: skip
    bad = [f"{key}={config.get(key)!r}" for key, ok in checks if not ok]
    if bad:
        raise ValueError(
            f"unsupported {model_type} variant: {', '.join(bad)} (jaxgpt computes SiLU, head_dim "
            "= hidden_size / heads, one bias flag for attention and MLP, full attention)"
        )


def config_from_hf(config: dict[str, Any], **overrides: Any) -> GPTConfig:
    """GPTConfig for a HF Llama or Qwen3 config.json; refuses variants jaxgpt computes otherwise."""
    model_type = config.get("model_type")
    if model_type not in ("llama", "qwen3"):
        raise ValueError(f"model_type is {model_type!r}, not 'llama' or 'qwen3'")
    required = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers")
    missing = [k for k in (*required, "num_attention_heads") if k not in config]
    if missing:
        raise ValueError(f"config.json of a {model_type!r} model lacks {', '.join(missing)}")
    _check(config, model_type)
    heads = config["num_attention_heads"]
    fields = {
        "vocab_size": config["vocab_size"],
        "block_size": config.get("max_position_embeddings", 2048),
        "n_layer": config["num_hidden_layers"],
        "n_head": heads,
        "n_embd": config["hidden_size"],
        "n_kv_head": config.get("num_key_value_heads") or heads,
        "mlp_hidden": config["intermediate_size"],
        "dropout": 0.0,
        "bias": bool(config.get("attention_bias", False)),
        "position": "rope",
        "rope_theta": _rope_theta(config),
        "norm": "rmsnorm",
        "norm_eps": float(config.get("rms_norm_eps", 1e-6)),
        "mlp": "swiglu",
        "tie_embeddings": bool(config.get("tie_word_embeddings", False)),
        "qk_norm": model_type == "qwen3",
    }
    return GPTConfig(**{**fields, **overrides})
