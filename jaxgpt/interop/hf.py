"""Hugging Face GPT-2 ⇄ jaxgpt: the one key table, weights both ways, config.json both ways.

`import_hf(path)` reads a HF GPT-2 folder (config.json plus model.safetensors, a sharded
safetensors index or pytorch_model.bin) as a GPTConfig and numpy params; `params_to_hf` gives
the state dict `transformers.GPT2LMHeadModel` loads. Writing a training run as a folder is
jaxgpt.interop.hf_export.
"""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path
from typing import Any

import flax
import jax
import ml_dtypes  # also names bfloat16 for numpy, so bf16 safetensors files load
import numpy as np

from jaxgpt.model import GPTConfig

# Shape letters as in model.py, plus P positions (block_size); "3D" means 3·D. HF GPT-2 keeps
# Conv1D weights as (in, out), the layout of our kernels, so every entry is a rename plus a
# reshape that regroups the same memory order (per-head views of the fused q|k|v columns).
TOP_TABLE = (
    # HF key                   jaxgpt path         HF shape  jaxgpt shape
    ("transformer.wte.weight", "wte/embedding", "V D", "V D"),
    ("transformer.wpe.weight", "wpe/embedding", "P D", "P D"),
    ("transformer.ln_f.weight", "ln_f/scale", "D", "D"),
    ("transformer.ln_f.bias", "ln_f/bias", "D", "D"),
)
BLOCK_TABLE = (
    # HF key after transformer.h.{i}.  jaxgpt path after h_{i}/ (or h/block/, layers stacked)
    ("ln_1.weight", "ln_1/scale", "D", "D"),
    ("ln_1.bias", "ln_1/bias", "D", "D"),
    ("attn.c_attn.weight", "attn/c_attn/kernel", "D 3D", "D 3 H Q"),
    ("attn.c_attn.bias", "attn/c_attn/bias", "3D", "3 H Q"),
    ("attn.c_proj.weight", "attn/c_proj/kernel", "D D", "H Q D"),
    ("attn.c_proj.bias", "attn/c_proj/bias", "D", "D"),
    ("ln_2.weight", "ln_2/scale", "D", "D"),
    ("ln_2.bias", "ln_2/bias", "D", "D"),
    ("mlp.c_fc.weight", "mlp/c_fc/kernel", "D 4D", "D 4D"),
    ("mlp.c_fc.bias", "mlp/c_fc/bias", "4D", "4D"),
    ("mlp.c_proj.weight", "mlp/c_proj/kernel", "4D D", "4D D"),
    ("mlp.c_proj.bias", "mlp/c_proj/bias", "D", "D"),
)
# HF's lm_head is tied to wte; these per-layer buffers (the causal mask) are not weights.
TIED_KEY = "lm_head.weight"
_BUFFER = re.compile(r"^transformer\.h\.\d+\.attn\.(masked_)?bias$")
GELU_TANH = ("gelu_new", "gelu_pytorch_tanh")


@dataclasses.dataclass(frozen=True)
class Entry:
    """One tensor: its HF key, its jaxgpt path (layer = index into a scanned stack) and shapes."""

    hf_key: str
    path: tuple[str, ...]
    layer: int | None
    hf_shape: tuple[int, ...]
    shape: tuple[int, ...]

    @property
    def is_bias(self) -> bool:
        return self.path[-1] == "bias"


def _dims(spec: str, cfg: GPTConfig) -> tuple[int, ...]:
    c = cfg
    letters = {"V": c.vocab_size, "P": c.block_size, "D": c.n_embd, "H": c.n_head, "Q": c.head_dim}
    dims = []
    for token in spec.split():
        digits = token.rstrip("VPDHQ")
        letter = token[len(digits) :]
        dims.append(int(digits or 1) * (letters[letter] if letter else 1))
    return tuple(dims)


def entries(cfg: GPTConfig) -> list[Entry]:
    """The table expanded for one config: every tensor of a HF GPT-2 of that size."""
    out = [
        Entry(key, tuple(path.split("/")), None, _dims(hf, cfg), _dims(ours, cfg))
        for key, path, hf, ours in TOP_TABLE
    ]
    for i in range(cfg.n_layer):
        prefix = ("h", "block") if cfg.scan_layers else (f"h_{i}",)
        for key, path, hf, ours in BLOCK_TABLE:
            out.append(
                Entry(
                    f"transformer.h.{i}.{key}",
                    prefix + tuple(path.split("/")),
                    i if cfg.scan_layers else None,
                    _dims(hf, cfg),
                    _dims(ours, cfg),
                )
            )
    return out


def _to_numpy(value: Any) -> np.ndarray:
    """numpy view of a numpy/JAX array or torch tensor, bf16 kept bit for bit."""
    if type(value).__module__.startswith("torch"):
        import torch  # lazy: torch is optional, and a torch tensor here means it is loaded

        value = value.detach().cpu()
        if value.dtype == torch.bfloat16:  # numpy has no bf16: go through the raw bits
            return value.view(torch.int16).numpy().view(ml_dtypes.bfloat16)
        return value.numpy()
    return np.asarray(value)


def _flat(params: Any) -> dict[tuple[str, ...], Any]:
    params = flax.core.unfreeze(params) if hasattr(params, "unfreeze") else params
    flat = flax.traverse_util.flatten_dict(dict(params))
    # Boxed (nn.Partitioned) leaves from model.init carry their array in .value.
    return {k: getattr(v, "value", v) for k, v in flat.items()}


def params_to_hf(params: Any, cfg: GPTConfig) -> dict[str, np.ndarray]:
    """jaxgpt params → HF GPT2LMHeadModel state dict (numpy; lm_head omitted: it is tied to wte).

    bias=False models get zero biases, which HF GPT-2 (always biased) computes identically.
    """
    flat = _flat(params)
    used, out = set(), {}
    for e in entries(cfg):
        if e.is_bias and not cfg.bias:
            out[e.hf_key] = np.zeros(e.hf_shape, _to_numpy(flat[("wte", "embedding")]).dtype)
            continue
        if e.path not in flat:
            raise ValueError(f"params have no {'/'.join(e.path)} (needed for {e.hf_key})")
        value = _to_numpy(flat[e.path])
        used.add(e.path)
        stacked = (cfg.n_layer, *e.shape) if e.layer is not None else e.shape
        if value.shape != stacked:
            raise ValueError(
                f"{'/'.join(e.path)} has shape {value.shape}, but the config needs {stacked}"
            )
        value = value[e.layer] if e.layer is not None else value
        out[e.hf_key] = np.ascontiguousarray(value.reshape(e.hf_shape))
    extra = sorted("/".join(k) for k in set(flat) - used)
    if extra:
        raise ValueError(f"params the HF GPT-2 table does not know (config mismatch?): {extra}")
    return out


def _hf_name(key: str) -> str:
    # GPT2Model checkpoints (e.g. the original OpenAI ones) name keys without "transformer.".
    return key if key.startswith(("transformer.", "lm_head.")) else f"transformer.{key}"


def hf_to_params(state_dict: dict[str, Any], cfg: GPTConfig) -> dict[str, Any]:
    """HF GPT-2 state dict (numpy arrays or torch tensors) → jaxgpt params, dtypes kept."""
    sd = {_hf_name(k): v for k, v in state_dict.items() if not _BUFFER.match(_hf_name(k))}
    head = sd.pop(TIED_KEY, None)
    missing = [e.hf_key for e in entries(cfg) if e.hf_key not in sd]
    if missing:
        raise ValueError(f"state dict lacks {len(missing)} GPT-2 weights: {missing[:8]}")
    layers: dict[tuple[str, ...], list[np.ndarray]] = {}
    flat = {}
    for e in entries(cfg):
        value = _to_numpy(sd.pop(e.hf_key))
        if value.shape != e.hf_shape:
            raise ValueError(
                f"{e.hf_key}: the weights have shape {tuple(value.shape)}, "
                f"the config expects {e.hf_shape}"
            )
        if e.is_bias and not cfg.bias:
            if np.any(value != 0):
                raise ValueError(f"{e.hf_key} is nonzero, but the config has bias=False")
            continue
        value = value.reshape(e.shape)
        if e.layer is None:
            flat[e.path] = value
        else:
            layers.setdefault(e.path, []).append(value)
    flat.update({path: np.stack(values) for path, values in layers.items()})
    if sd:
        raise ValueError(f"unexpected keys for a GPT-2 model: {sorted(sd)[:8]}")
    if head is not None and not np.array_equal(_to_numpy(head), flat[("wte", "embedding")]):
        raise ValueError(f"{TIED_KEY} differs from transformer.wte.weight: jaxgpt ties them")
    return flax.traverse_util.unflatten_dict(flat)


def hf_config(
    cfg: GPTConfig, bos_token_id: int | None = None, eos_token_id: int | None = None
) -> dict[str, Any]:
    """GPT2Config fields for cfg (jaxgpt has one dropout rate; HF gets it everywhere)."""
    return {
        "architectures": ["GPT2LMHeadModel"],
        "model_type": "gpt2",
        "vocab_size": cfg.vocab_size,
        "n_positions": cfg.block_size,
        "n_embd": cfg.n_embd,
        "n_layer": cfg.n_layer,
        "n_head": cfg.n_head,
        "n_inner": None,
        "activation_function": "gelu_new",  # tanh approximation, as nn.gelu(approximate=True)
        "layer_norm_epsilon": 1e-5,
        "resid_pdrop": cfg.dropout,
        "embd_pdrop": cfg.dropout,
        "attn_pdrop": cfg.dropout,
        "initializer_range": 0.02,
        "scale_attn_weights": True,
        "scale_attn_by_inverse_layer_idx": False,
        "reorder_and_upcast_attn": False,
        "tie_word_embeddings": True,
        "use_cache": True,
        "bos_token_id": bos_token_id,
        "eos_token_id": eos_token_id,
    }


def gpt_config_from_hf(config: dict[str, Any], **overrides: Any) -> GPTConfig:
    """GPTConfig for a HF GPT-2 config.json; refuses variants jaxgpt computes differently."""
    if config.get("model_type") != "gpt2":
        raise ValueError(f"model_type is {config.get('model_type')!r}, not 'gpt2'")
    n_embd = config.get("n_embd", 768)
    checks = (
        ("activation_function", config.get("activation_function", "gelu_new") in GELU_TANH),
        ("n_inner", config.get("n_inner") in (None, 4 * n_embd)),
        ("layer_norm_epsilon", abs(config.get("layer_norm_epsilon", 1e-5) - 1e-5) < 1e-12),
        ("scale_attn_weights", config.get("scale_attn_weights", True)),
        ("scale_attn_by_inverse_layer_idx", not config.get("scale_attn_by_inverse_layer_idx")),
        ("add_cross_attention", not config.get("add_cross_attention")),
        ("tie_word_embeddings", config.get("tie_word_embeddings", True)),
    )
    bad = [f"{key}={config.get(key)!r}" for key, ok in checks if not ok]
    if bad:
        raise ValueError(f"unsupported GPT-2 variant: {', '.join(bad)}")
    fields = {
        "vocab_size": config.get("vocab_size", 50257),
        "block_size": config.get("n_positions", 1024),
        "n_layer": config.get("n_layer", 12),
        "n_head": config.get("n_head", 12),
        "n_embd": n_embd,
        "dropout": config.get("resid_pdrop", 0.1),
        "bias": True,
    }
    return GPTConfig(**{**fields, **overrides})


def load_state_dict(path: Path) -> dict[str, Any]:
    """A HF folder's weights: safetensors (one file or a sharded index) or pytorch_model.bin."""
    index = path / "model.safetensors.index.json"
    files = (
        sorted(set(json.loads(index.read_text())["weight_map"].values()))
        if index.is_file()
        else ["model.safetensors"]
    )
    if all((path / f).is_file() for f in files):
        from safetensors import safe_open  # lazy: it comes with the optional transformers

        sd = {}
        for name in files:
            with safe_open(path / name, framework="np") as f:
                sd.update({k: f.get_tensor(k) for k in f.keys()})  # noqa: SIM118
        return sd
    if (path / "pytorch_model.bin").is_file():
        import torch  # lazy: optional; only old-style folders need it

        return torch.load(path / "pytorch_model.bin", map_location="cpu", weights_only=True)
    raise FileNotFoundError(f"{path} has no model.safetensors or pytorch_model.bin")


def import_hf(path: str | Path, **overrides: Any) -> tuple[GPTConfig, dict[str, Any]]:
    """Load a HF GPT-2 folder (any size) as (GPTConfig, numpy params in its param_dtype).

    Args:
        path: a folder with config.json and model.safetensors (or pytorch_model.bin).
        **overrides: GPTConfig fields to set, e.g. scan_layers=True for the stacked layout.
    """
    path = Path(path)
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"{path} is not a Hugging Face model folder: no config.json")
    try:
        cfg = gpt_config_from_hf(json.loads((path / "config.json").read_text()), **overrides)
    except ValueError as e:
        raise ValueError(f"{path} is not a GPT-2 model jaxgpt can load: {e}") from e
    try:
        params = hf_to_params(load_state_dict(path), cfg)
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from e
    return cfg, jax.tree.map(lambda a: np.asarray(a, cfg.weight_dtype), params)
