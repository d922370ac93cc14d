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


@dataclasses.dataclass(frozen=True)
class GPTConfig:
    """Model hyperparameters; shape letters are defined in jaxgpt/model.py's docstring.

    vocab_size=0 means "the tokenizer's size, padded to vocab_multiple": a config holds that
    until `resolve_vocab` fixes it; a model is only ever built from a resolved config.
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
        ):
            if value not in allowed:
                raise ValueError(f"model.{key}={value!r} is not one of {sorted(allowed)}")
        for key in ("block_size", "n_layer", "n_head", "n_embd"):
            if getattr(self, key) <= 0:
                raise ValueError(f"model.{key} must be positive, got {getattr(self, key)}")
        for key in ("vocab_size", "loss_chunk"):
            if getattr(self, key) < 0:
                raise ValueError(f"model.{key} must be >= 0, got {getattr(self, key)}")
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

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    @property
    def compute_dtype(self) -> Any:
        return DTYPES[self.dtype]

    @property
    def weight_dtype(self) -> Any:
        return DTYPES[self.param_dtype]


def resolve_vocab(model: GPTConfig, tokenizer_vocab: int) -> GPTConfig:
    """`model` with its vocabulary fixed: explicit (checked) or the tokenizer's, padded."""
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
