"""Hugging Face ⇄ jaxgpt: the key tables, weights both ways, config.json both ways.

Three HF architectures hold what jaxgpt trains (`hf_family` picks one from a GPTConfig):
GPT-2 (`GPT2LMHeadModel`, the table here), Llama (`LlamaForCausalLM`) and Qwen3
(`Qwen3ForCausalLM`, Llama with QK-norm; both tables in jaxgpt.interop.llama). `import_hf(path)`
reads a HF folder of any of them (config.json plus model.safetensors, a sharded safetensors
index or pytorch_model.bin) as a GPTConfig and numpy params; `params_to_hf` gives the state dict
transformers loads. Writing a training run as a folder is jaxgpt.interop.hf_export.
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

from jaxgpt.interop import llama
from jaxgpt.interop.llama import Row
from jaxgpt.model import GPTConfig

# Shape letters as in model.py, plus P positions (block_size); "3D" means 3·D, "KQ" K·Q. HF
# GPT-2 keeps Conv1D weights as (in, out), the layout of our kernels, so every entry is a rename
# plus a reshape that regroups the same memory order (per-head views of the fused q|k|v columns).
# Rows as in llama.py: (HF key, jaxgpt path, HF shape, jaxgpt shape, part, transpose).
TOP_TABLE: tuple[Row, ...] = (
    ("transformer.wte.weight", "wte/embedding", "V D", "V D", None, False),
    ("transformer.wpe.weight", "wpe/embedding", "P D", "P D", None, False),
    ("transformer.ln_f.weight", "ln_f/scale", "D", "D", None, False),
    ("transformer.ln_f.bias", "ln_f/bias", "D", "D", None, False),
)
BLOCK_TABLE: tuple[Row, ...] = (
    # HF key after transformer.h.{i}.  jaxgpt path after h_{i}/ (or h/block/, layers stacked)
    ("ln_1.weight", "ln_1/scale", "D", "D", None, False),
    ("ln_1.bias", "ln_1/bias", "D", "D", None, False),
    ("attn.c_attn.weight", "attn/c_attn/kernel", "D 3D", "D 3 H Q", None, False),
    ("attn.c_attn.bias", "attn/c_attn/bias", "3D", "3 H Q", None, False),
    ("attn.c_proj.weight", "attn/c_proj/kernel", "D D", "H Q D", None, False),
    ("attn.c_proj.bias", "attn/c_proj/bias", "D", "D", None, False),
    ("ln_2.weight", "ln_2/scale", "D", "D", None, False),
    ("ln_2.bias", "ln_2/bias", "D", "D", None, False),
    ("mlp.c_fc.weight", "mlp/c_fc/kernel", "D F", "D F", None, False),
    ("mlp.c_fc.bias", "mlp/c_fc/bias", "F", "F", None, False),
    ("mlp.c_proj.weight", "mlp/c_proj/kernel", "F D", "F D", None, False),
    ("mlp.c_proj.bias", "mlp/c_proj/bias", "D", "D", None, False),
)
# HF's lm_head is tied to wte; these per-layer buffers (the causal mask) are not weights.
TIED_KEY = "lm_head.weight"
_BUFFER = re.compile(r"^transformer\.h\.\d+\.attn\.(masked_)?bias$")
# Older Llama checkpoints saved the rotary frequencies, which jaxgpt computes from rope_theta.
_LLAMA_BUFFER = re.compile(r"\.rotary_emb\.inv_freq$")
GELU_TANH = ("gelu_new", "gelu_pytorch_tanh")
LABELS = {"gpt2": "GPT-2", "llama": "Llama", "qwen3": "Qwen3"}
EMBED_KEYS = {"gpt2": "transformer.wte.weight", "llama": "model.embed_tokens.weight"}
GPT2_SHAPE = dict(position="learned", norm="layernorm", mlp="gelu", tie_embeddings=True)
LLAMA_SHAPE = dict(position="rope", norm="rmsnorm", mlp="swiglu")


@dataclasses.dataclass(frozen=True)
class Entry:
    """One HF tensor: its key, its jaxgpt path (layer = index into a scanned stack), shapes,
    the part of a fused jaxgpt tensor it is ((axis, index) or None), and whether it is a torch
    Linear weight (out, in): the transpose of a jaxgpt kernel (in, ..., out)."""

    hf_key: str
    path: tuple[str, ...]
    layer: int | None
    hf_shape: tuple[int, ...]
    shape: tuple[int, ...]  # the whole jaxgpt tensor of one layer
    part: tuple[int, int] | None = None
    transpose: bool = False

    @property
    def is_bias(self) -> bool:
        return self.path[-1] == "bias"

    @property
    def part_shape(self) -> tuple[int, ...]:
        """The shape of this entry's part of the jaxgpt tensor."""
        if self.part is None:
            return self.shape
        return self.shape[: self.part[0]] + self.shape[self.part[0] + 1 :]

    def to_hf(self, value: np.ndarray) -> np.ndarray:
        """One layer's jaxgpt tensor → this HF tensor."""
        if self.part is not None:
            value = np.take(value, self.part[1], axis=self.part[0])
        if self.transpose:
            value = value.reshape(self.hf_shape[1], self.hf_shape[0]).T
        return np.ascontiguousarray(value.reshape(self.hf_shape))

    def from_hf(self, value: np.ndarray) -> np.ndarray:
        """This HF tensor → its part of one layer's jaxgpt tensor."""
        return (value.T if self.transpose else value).reshape(self.part_shape)


def _dims(spec: str, cfg: GPTConfig) -> tuple[int, ...]:
    c = cfg
    letters = {
        "V": c.vocab_size, "P": c.block_size, "D": c.n_embd, "H": c.n_head, "Q": c.head_dim,
        "K": c.kv_heads, "F": c.mlp_dim,
    }  # fmt: skip
    dims = []
    for token in spec.split():
        digits = token.rstrip("".join(letters))
        size = int(digits or 1)
        for letter in token[len(digits) :]:
            size *= letters[letter]
        dims.append(size)
    return tuple(dims)


def hf_family(cfg: GPTConfig) -> str:
    """The HF architecture of cfg: "gpt2", "llama" or "qwen3"; a ValueError naming the fields
    when transformers has none that computes what cfg does."""
    name = llama.family(cfg)
    if name is not None:
        return name
    gpt2_off = {k: getattr(cfg, k) for k, v in GPT2_SHAPE.items() if getattr(cfg, k) != v}
    if cfg.kv_heads != cfg.n_head:
        gpt2_off["n_kv_head"] = cfg.n_kv_head
    if cfg.qk_norm:
        gpt2_off["qk_norm"] = True
    if not gpt2_off:
        return "gpt2"
    llama_off = {k: getattr(cfg, k) for k, v in LLAMA_SHAPE.items() if getattr(cfg, k) != v}
    closest, off = ("GPT-2", gpt2_off) if len(gpt2_off) <= len(llama_off) else ("Llama", llama_off)
    fields = ", ".join(f"model.{k}={v!r}" for k, v in off.items())
    raise ValueError(
        f"Hugging Face has no architecture for this model: it is closest to {closest} but has "
        f"{fields}. Export supports GPT-2 (position=learned, norm=layernorm, mlp=gelu, "
        "tie_embeddings=True, no n_kv_head or qk_norm), Llama (position=rope, norm=rmsnorm, "
        "mlp=swiglu) and Qwen3 (Llama with qk_norm=True, bias=False)"
    )


def _tables(cfg: GPTConfig, name: str) -> tuple[list[Row], list[Row], str]:
    if name == "gpt2":
        return list(TOP_TABLE), list(BLOCK_TABLE), "transformer.h.{i}."
    return llama.top_rows(cfg), llama.block_rows(cfg), "model.layers.{i}."


def entries(cfg: GPTConfig) -> list[Entry]:
    """The table expanded for one config: every tensor of its HF model."""
    top, block, prefix = _tables(cfg, hf_family(cfg))

    def entry(key: str, path: tuple[str, ...], layer: int | None, row: Row) -> Entry:
        _, _, hf, ours, part, transpose = row
        return Entry(key, path, layer, _dims(hf, cfg), _dims(ours, cfg), part, transpose)

    out = [entry(row[0], tuple(row[1].split("/")), None, row) for row in top]
    for i in range(cfg.n_layer):
        layer_path = ("h", "block") if cfg.scan_layers else (f"h_{i}",)
        for row in block:
            path = layer_path + tuple(row[1].split("/"))
            out.append(
                entry(prefix.format(i=i) + row[0], path, i if cfg.scan_layers else None, row)
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
    """jaxgpt params → the state dict of cfg's HF model (numpy; a tied lm_head is omitted).

    bias=False GPT-2 models get zero biases, which HF GPT-2 (always biased) computes identically.
    """
    name = hf_family(cfg)
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
        out[e.hf_key] = e.to_hf(value[e.layer] if e.layer is not None else value)
    extra = sorted("/".join(k) for k in set(flat) - used)
    if extra:
        raise ValueError(
            f"params the HF {LABELS[name]} table does not know (config mismatch?): {extra}"
        )
    return out


def _hf_name(key: str) -> str:
    # GPT2Model checkpoints (e.g. the original OpenAI ones) name keys without "transformer.".
    return key if key.startswith(("transformer.", "lm_head.")) else f"transformer.{key}"


def _weights_only(state_dict: dict[str, Any], name: str) -> dict[str, Any]:
    """The state dict's weights under the table's key names (buffers dropped)."""
    if name == "gpt2":
        renamed = {_hf_name(k): v for k, v in state_dict.items()}
        return {k: v for k, v in renamed.items() if not _BUFFER.match(k)}
    return {k: v for k, v in state_dict.items() if not _LLAMA_BUFFER.search(k)}


def _assemble(parts_by_layer: dict[int | None, dict[int | None, np.ndarray]], axis: int) -> Any:
    """One jaxgpt tensor from its entries: parts stacked on their axis, layers on axis 0."""

    def whole(parts: dict[int | None, np.ndarray]) -> np.ndarray:
        return parts[None] if None in parts else np.stack([parts[i] for i in sorted(parts)], axis)

    if None in parts_by_layer:
        return whole(parts_by_layer[None])
    return np.stack([whole(parts_by_layer[i]) for i in sorted(parts_by_layer)])


def hf_to_params(state_dict: dict[str, Any], cfg: GPTConfig) -> dict[str, Any]:
    """HF state dict (numpy arrays or torch tensors) of cfg's family → jaxgpt params, dtypes
    kept bit for bit."""
    name = hf_family(cfg)
    sd = _weights_only(state_dict, name)
    head = sd.pop(TIED_KEY, None) if cfg.tie_embeddings else None
    missing = [e.hf_key for e in entries(cfg) if e.hf_key not in sd]
    if missing:
        raise ValueError(f"state dict lacks {len(missing)} {LABELS[name]} weights: {missing[:8]}")
    pieces: dict[tuple[str, ...], dict] = {}
    axes = {}
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
        part = None if e.part is None else e.part[1]
        pieces.setdefault(e.path, {}).setdefault(e.layer, {})[part] = e.from_hf(value)
        axes[e.path] = 0 if e.part is None else e.part[0]
    if sd:
        raise ValueError(f"unexpected keys for a {LABELS[name]} model: {sorted(sd)[:8]}")
    flat = {path: _assemble(layers, axes[path]) for path, layers in pieces.items()}
    if head is not None and not np.array_equal(_to_numpy(head), flat[("wte", "embedding")]):
        embed = EMBED_KEYS.get(name, EMBED_KEYS["llama"])
        raise ValueError(f"{TIED_KEY} differs from {embed}: the config ties them")
    return flax.traverse_util.unflatten_dict(flat)


def hf_config(
    cfg: GPTConfig, bos_token_id: int | None = None, eos_token_id: int | None = None
) -> dict[str, Any]:
    """config.json fields of cfg's HF architecture (see hf_family)."""
    name = hf_family(cfg)
    if name != "gpt2":
        return llama.hf_config(cfg, name, bos_token_id, eos_token_id)
    # GPT2Config: jaxgpt has one dropout rate; HF gets it everywhere.
    return {
        "architectures": ["GPT2LMHeadModel"],
        "model_type": "gpt2",
        "vocab_size": cfg.vocab_size,
        "n_positions": cfg.block_size,
        "n_embd": cfg.n_embd,
        "n_layer": cfg.n_layer,
        "n_head": cfg.n_head,
        "n_inner": None if cfg.mlp_dim == 4 * cfg.n_embd else cfg.mlp_dim,
        "activation_function": "gelu_new",  # tanh approximation, as nn.gelu(approximate=True)
        "layer_norm_epsilon": cfg.norm_eps,
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


def transformers_model(params: Any, cfg: GPTConfig) -> Any:
    """The transformers model of cfg's family (GPT2LMHeadModel, LlamaForCausalLM or
    Qwen3ForCausalLM; float32, eval mode) holding params: what an ONNX export traces."""
    import torch  # lazy: optional, slow to import
    import transformers  # lazy: optional, slow to import

    fields = hf_config(cfg)
    config = transformers.AutoConfig.for_model(
        **{k: v for k, v in fields.items() if k != "architectures"}
    )
    model = getattr(transformers, fields["architectures"][0])(config).eval()
    state = {
        k: torch.from_numpy(np.array(v, np.float32)) for k, v in params_to_hf(params, cfg).items()
    }
    missing, unexpected = model.load_state_dict(state, strict=False)
    # A tied lm_head is the one key the state dict leaves out.
    if set(missing) - ({TIED_KEY} if cfg.tie_embeddings else set()) or unexpected:
        raise ValueError(
            f"{fields['architectures'][0]} did not take the weights: missing {missing}, "
            f"extra {unexpected}"
        )
    if cfg.tie_embeddings:
        model.tie_weights()
    return model


def gpt_config_from_hf(config: dict[str, Any], **overrides: Any) -> GPTConfig:
    """GPTConfig for a HF GPT-2, Llama or Qwen3 config.json; refuses variants jaxgpt computes
    differently."""
    model_type = config.get("model_type")
    # The end-of-text id (model.eot_id, which doc_mask reads): jaxgpt exports it as eos.
    eos, vocab = config.get("eos_token_id"), config.get("vocab_size", 50257)
    if isinstance(eos, int) and 0 <= eos < vocab and "eot_id" not in overrides:
        overrides = {**overrides, "eot_id": eos}
    if model_type in ("llama", "qwen3"):
        return llama.config_from_hf(config, **overrides)
    if model_type != "gpt2":
        raise ValueError(f"model_type is {model_type!r}; jaxgpt loads 'gpt2', 'llama', 'qwen3'")
    n_embd = config.get("n_embd", 768)
    checks = (
        ("activation_function", config.get("activation_function", "gelu_new") in GELU_TANH),
        ("scale_attn_weights", config.get("scale_attn_weights", True)),
        ("scale_attn_by_inverse_layer_idx", not config.get("scale_attn_by_inverse_layer_idx")),
        ("add_cross_attention", not config.get("add_cross_attention")),
        ("tie_word_embeddings", config.get("tie_word_embeddings", True)),
    )
    bad = [f"{key}={config.get(key)!r}" for key, ok in checks if not ok]
    if bad:
        raise ValueError(f"unsupported GPT-2 variant: {', '.join(bad)}")
    n_inner = config.get("n_inner")
    fields = {
        "vocab_size": config.get("vocab_size", 50257),
        "block_size": config.get("n_positions", 1024),
        "n_layer": config.get("n_layer", 12),
        "n_head": config.get("n_head", 12),
        "n_embd": n_embd,
        "mlp_hidden": 0 if n_inner in (None, 4 * n_embd) else n_inner,
        "norm_eps": float(config.get("layer_norm_epsilon", 1e-5)),
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


def read_hf_config(path: Path, **overrides: Any) -> GPTConfig:
    """The GPTConfig of a HF folder's config.json; errors name the folder and the problem."""
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"{path} is not a Hugging Face model folder: no config.json")
    try:
        return gpt_config_from_hf(json.loads((path / "config.json").read_text()), **overrides)
    except ValueError as e:
        raise ValueError(f"{path} is not a GPT-2, Llama or Qwen3 model jaxgpt can load: {e}") from e


def import_hf(path: str | Path, **overrides: Any) -> tuple[GPTConfig, dict[str, Any]]:
    """Load a HF GPT-2, Llama or Qwen3 folder (any size) as (GPTConfig, numpy params in its
    param_dtype).

    Args:
        path: a folder with config.json and model.safetensors (or a sharded index of them, or
            pytorch_model.bin).
        **overrides: GPTConfig fields to set, e.g. scan_layers=True for the stacked layout.
    """
    path = Path(path)
    cfg = read_hf_config(path, **overrides)
    try:
        params = hf_to_params(load_state_dict(path), cfg)
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from e
    return cfg, jax.tree.map(lambda a: np.asarray(a, cfg.weight_dtype), params)
