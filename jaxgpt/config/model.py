"""Model hyperparameters: the `model` section of a config, typed."""

from __future__ import annotations

import dataclasses
from typing import Any

import jax.numpy as jnp

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}
REMAT_POLICIES = ("none", "full", "dots", "names")
# Activations tagged with checkpoint_name inside a block; remat="names" keeps those listed in
# GPTConfig.remat_names for the backward pass and recomputes the rest.
REMAT_NAMES = ("qkv", "attn_out", "attn_proj", "mlp_fc", "mlp_gelu", "mlp_proj")
ATTENTION_IMPLS = ("auto", "xla", "cudnn", "einsum")
# Architecture switches: the first of each is GPT-2's; Llama-style models use rope, rmsnorm,
# swiglu (relu2 = ReLU squared, the speedrun MLP).
POSITIONS = ("learned", "rope")
NORMS = ("layernorm", "rmsnorm")
MLPS = ("gelu", "swiglu", "relu2")


@dataclasses.dataclass(frozen=True)
class GPTConfig:
    """Model hyperparameters; shape letters are defined in jaxgpt/model.py's docstring.

    vocab_size=0 means "the tokenizer's size, padded to vocab_multiple" and eot_id=-1 "the
    tokenizer's end-of-text id": a config holds those until `resolve_vocab` fixes them; a model
    is only ever built from a resolved config.
    """

    vocab_size: int = 0
    vocab_multiple: int = 64  # pads a derived vocab size (faster matmuls); unused once resolved
    block_size: int = 1024
    n_layer: int = 12
    n_head: int = 12
    n_embd: int = 768
    dropout: float = 0.0
    bias: bool = True
    dtype: str = "float32"
    param_dtype: str = "float32"
    remat: str = "none"
    remat_names: tuple[str, ...] = ("qkv", "attn_out")  # kept by remat="names"
    scan_layers: bool = False
    attention: str = "auto"
    loss_chunk: int = 0  # tokens per chunk of the output projection + loss (0 = all at once)
    # Architecture switches (defaults = GPT-2); see configs/base.py for each.
    position: str = "learned"
    rope_theta: float = 10000.0
    norm: str = "layernorm"
    norm_eps: float = 1e-5
    mlp: str = "gelu"
    mlp_hidden: int = 0  # F; 0 = the MLP's usual width (see mlp_dim)
    n_kv_head: int = 0  # K; 0 = n_head (no grouped-query attention)
    tie_embeddings: bool = True
    qk_norm: bool = False
    # Document masking for packed rows: attention stops at end-of-text tokens, positions restart.
    doc_mask: bool = False
    eot_id: int = -1  # the end-of-text token; -1 = the tokenizer's (resolved at setup)

    def __post_init__(self):
        if self.n_embd % self.n_head:
            raise ValueError(
                f"model.n_embd ({self.n_embd}) must be divisible by model.n_head ({self.n_head})"
            )
        for key, value, allowed in (
            ("dtype", self.dtype, DTYPES),
            ("param_dtype", self.param_dtype, DTYPES),
            ("remat", self.remat, REMAT_POLICIES),
            ("attention", self.attention, ATTENTION_IMPLS),
            ("position", self.position, POSITIONS),
            ("norm", self.norm, NORMS),
            ("mlp", self.mlp, MLPS),
        ):
            if value not in allowed:
                raise ValueError(f"model.{key}={value!r} is not one of {sorted(allowed)}")
        for key in ("block_size", "n_layer", "n_head", "n_embd"):
            if getattr(self, key) <= 0:
                raise ValueError(f"model.{key} must be positive, got {getattr(self, key)}")
        for key in ("vocab_size", "loss_chunk", "mlp_hidden", "n_kv_head"):
            if getattr(self, key) < 0:
                raise ValueError(f"model.{key} must be >= 0, got {getattr(self, key)}")
        self._check_architecture()
        # A ConfigDict may hand over a list or a comma-separated string; keep a hashable tuple.
        names = self.remat_names
        if isinstance(names, str):
            names = tuple(n.strip() for n in names.split(",") if n.strip())
        object.__setattr__(self, "remat_names", tuple(names))
        unknown = sorted(set(self.remat_names) - set(REMAT_NAMES))
        if unknown:
            raise ValueError(
                f"model.remat_names has unknown names {unknown}; known: {list(REMAT_NAMES)}"
            )

    def _check_architecture(self) -> None:
        if self.n_head % self.kv_heads:
            raise ValueError(
                f"model.n_kv_head ({self.n_kv_head}) must divide model.n_head ({self.n_head}): "
                "each key/value head serves a whole group of query heads"
            )
        if self.position == "rope" and self.head_dim % 2:
            raise ValueError(
                f"model.position='rope' rotates pairs of the head dim, which is odd "
                f"({self.head_dim} = n_embd / n_head): change model.n_embd or model.n_head"
            )
        if self.eot_id < -1 or (self.vocab_size and self.eot_id >= self.vocab_size):
            raise ValueError(
                f"model.eot_id={self.eot_id} is not a token id of the {self.vocab_size}-token "
                "vocabulary: set model.eot_id=-1 to take the tokenizer's end-of-text id"
            )
        if self.rope_theta <= 0 or self.norm_eps <= 0:
            raise ValueError(
                f"model.rope_theta ({self.rope_theta}) and model.norm_eps ({self.norm_eps}) "
                "must be positive"
            )

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    @property
    def kv_heads(self) -> int:
        """K: key/value heads (each serves n_head / K query heads)."""
        return self.n_kv_head or self.n_head

    @property
    def mlp_dim(self) -> int:
        """F: the MLP's hidden width. mlp_hidden, else 4·D, or for swiglu (three matrices, not
        two) 8·D/3 rounded up to a multiple of 64, about the same parameters as 4·D."""
        if self.mlp_hidden:
            return self.mlp_hidden
        if self.mlp == "swiglu":
            return -(-8 * self.n_embd // 3 // 64) * 64
        return 4 * self.n_embd

    @property
    def compute_dtype(self) -> Any:
        return DTYPES[self.dtype]

    @property
    def weight_dtype(self) -> Any:
        return DTYPES[self.param_dtype]


def resolve_vocab(model: GPTConfig, tokenizer_vocab: int, tokenizer_eot: int = -1) -> GPTConfig:
    """`model` with its vocabulary fixed: explicit (checked) or the tokenizer's, padded; and its
    end-of-text id: explicit (checked) or the tokenizer's (-1: unknown here)."""
    model = resolve_eot(model, tokenizer_eot)
    if model.vocab_size == 0:
        if tokenizer_vocab <= 0:
            raise ValueError("model.vocab_size=0 follows the tokenizer, but its size is unknown")
        multiple = max(model.vocab_multiple, 1)
        return dataclasses.replace(model, vocab_size=-(-tokenizer_vocab // multiple) * multiple)
    if model.vocab_size < tokenizer_vocab:
        raise ValueError(
            f"model.vocab_size={model.vocab_size} is smaller than the tokenizer's "
            f"{tokenizer_vocab} tokens; set model.vocab_size=0 to follow the tokenizer"
        )
    return model


def resolve_eot(model: GPTConfig, tokenizer_eot: int) -> GPTConfig:
    """`model` with eot_id the tokenizer's (when it follows it and the tokenizer's is known)."""
    if tokenizer_eot < 0:
        return model
    if model.eot_id == -1:
        return dataclasses.replace(model, eot_id=tokenizer_eot)
    if model.eot_id != tokenizer_eot:
        raise ValueError(
            f"model.eot_id={model.eot_id}, but the tokenizer's end-of-text id is {tokenizer_eot}: "
            "set model.eot_id=-1 to follow the tokenizer"
        )
    return model
