"""GPT-2 in Flax linen, with logical axis names on every parameter and activation.

Shape letters used in names:
    B batch, T sequence (query positions), S key positions, D model width (n_embd),
    H heads, Q head dim (D / H), F MLP width (4D), V vocabulary, L layers.

Parameter names follow Hugging Face GPT-2 (wte, wpe, h_0/attn/c_attn, ln_f, ...) so that the
export table is a rename plus reshapes; attention kernels are stored per head (D, 3, H, Q) so
tensor parallelism splits whole heads.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.ad_checkpoint import checkpoint_name

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}
REMAT_POLICIES = ("none", "full", "dots", "names")
# Activations tagged with checkpoint_name inside a block; remat="names" keeps those listed in
# GPTConfig.remat_names for the backward pass and recomputes the rest.
REMAT_NAMES = ("qkv", "attn_out", "attn_proj", "mlp_fc", "mlp_gelu", "mlp_proj")
ATTENTION_IMPLS = ("auto", "xla", "cudnn", "einsum")


@dataclasses.dataclass(frozen=True)
class GPTConfig:
    """Model hyperparameters; shape letters are defined in the module docstring."""

    vocab_size: int = 50257
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
        for key in ("vocab_size", "block_size", "n_layer", "n_head", "n_embd"):
            if getattr(self, key) <= 0:
                raise ValueError(f"model.{key} must be positive, got {getattr(self, key)}")
        if self.loss_chunk < 0:
            raise ValueError(f"model.loss_chunk must be >= 0, got {self.loss_chunk}")
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


def _init(names: tuple[str | None, ...], stddev: float = 0.02) -> nn.initializers.Initializer:
    return nn.with_logical_partitioning(nn.initializers.normal(stddev), names)


def _zeros(names: tuple[str | None, ...]) -> nn.initializers.Initializer:
    return nn.with_logical_partitioning(nn.initializers.zeros_init(), names)


def _ones(names: tuple[str | None, ...]) -> nn.initializers.Initializer:
    return nn.with_logical_partitioning(nn.initializers.ones_init(), names)


def _constrain(x: jax.Array, names: tuple[str, ...]) -> jax.Array:
    # A no-op outside a mesh/rules context, so the model also runs unsharded.
    return nn.with_logical_constraint(x, names)


def layer_norm(c: GPTConfig, name: str | None = None) -> nn.LayerNorm:
    return nn.LayerNorm(
        epsilon=1e-5,
        use_bias=c.bias,
        dtype=c.compute_dtype,
        param_dtype=c.weight_dtype,
        scale_init=_ones(("norm",)),
        bias_init=_zeros(("norm",)),
        name=name,
    )


def einsum_attention(q_BTHQ: jax.Array, k_BSHQ: jax.Array, v_BSHQ: jax.Array) -> jax.Array:
    """Causal softmax attention written out; XLA's CPU backend runs it faster than the library
    path (whose per-group vmap leaves strided reductions in the backward pass)."""
    T, S, Q = q_BTHQ.shape[1], k_BSHQ.shape[1], q_BTHQ.shape[-1]
    scores_BHTS = jnp.einsum(
        "bthq,bshq->bhts", q_BTHQ, k_BSHQ, preferred_element_type=jnp.float32
    ) * (1.0 / Q**0.5)
    causal_TS = jnp.tril(jnp.ones((T, S), dtype=bool), k=S - T)
    scores_BHTS = jnp.where(causal_TS, scores_BHTS, jnp.finfo(jnp.float32).min)
    probs_BHTS = jax.nn.softmax(scores_BHTS, axis=-1).astype(v_BSHQ.dtype)
    return jnp.einsum("bhts,bshq->bthq", probs_BHTS, v_BSHQ)


def _check_cudnn(dtype: Any) -> None:
    """Fail at trace time with the fix, not deep inside XLA with "cuDNN is not detected"."""
    backend = jax.default_backend()
    if backend != "gpu":
        raise ValueError(
            f"model.attention='cudnn' (cuDNN flash attention) needs an NVIDIA GPU, but JAX runs "
            f"on {backend}: use model.attention=auto (cuDNN on GPUs, the best path elsewhere)"
        )
    if dtype not in (jnp.bfloat16, jnp.float16):
        raise ValueError(
            f"model.attention='cudnn' takes 16-bit inputs, got {jnp.dtype(dtype).name}: set "
            "model.dtype=bfloat16 (float32 master weights stay) or model.attention=auto"
        )


def attention(q_BTHQ: jax.Array, k_BSHQ: jax.Array, v_BSHQ: jax.Array, impl: str) -> jax.Array:
    """Causal attention. "auto": the written-out form on CPU; cuDNN flash attention on GPU for
    16-bit inputs (jax's implementation=None does not pick it by itself); XLA elsewhere."""
    if impl == "cudnn":
        _check_cudnn(q_BTHQ.dtype)
    if impl == "auto":
        backend = jax.default_backend()
        if backend == "cpu":
            impl = "einsum"
        elif backend == "gpu" and q_BTHQ.dtype in (jnp.bfloat16, jnp.float16):
            impl = "cudnn"
        else:
            impl = None
    if impl == "einsum":
        return einsum_attention(q_BTHQ, k_BSHQ, v_BSHQ)
    return jax.nn.dot_product_attention(q_BTHQ, k_BSHQ, v_BSHQ, is_causal=True, implementation=impl)


@flax.struct.dataclass
class LayerCache:
    """One layer's keys and values for decoding: [B, H, S, Q] buffers of S positions.

    `index` positions are filled; row b's first `pad[b]` positions are left padding that no
    query may attend to (prompts of different lengths share one batch, right-aligned). Heads
    come before positions so both attention einsums read the cache without transposing all of
    it every step (1.6× faster decode steps at batch 16 on CPU than [B, S, H, Q]).
    """

    k_BHSQ: jax.Array
    v_BHSQ: jax.Array
    index: jax.Array
    pad_B: jax.Array

    def attend(self, q_BTHQ, k_BTHQ, v_BTHQ) -> tuple[jax.Array, LayerCache]:
        """Write this step's keys/values at `index`, attend over everything filled so far."""
        T, S = q_BTHQ.shape[1], self.k_BHSQ.shape[2]
        start = (0, 0, self.index, 0)
        new_k = k_BTHQ.astype(self.k_BHSQ.dtype).transpose(0, 2, 1, 3)
        new_v = v_BTHQ.astype(self.v_BHSQ.dtype).transpose(0, 2, 1, 3)
        k_BHSQ = jax.lax.dynamic_update_slice(self.k_BHSQ, new_k, start)
        v_BHSQ = jax.lax.dynamic_update_slice(self.v_BHSQ, new_v, start)
        q_pos_T = self.index + jnp.arange(T)
        k_pos_S = jnp.arange(S)
        visible_BTS = (k_pos_S[None, None, :] <= q_pos_T[None, :, None]) & (
            k_pos_S[None, None, :] >= self.pad_B[:, None, None]
        )
        y_BTHQ = cached_attention(q_BTHQ, k_BHSQ, v_BHSQ, visible_BTS)
        return y_BTHQ, self.replace(k_BHSQ=k_BHSQ, v_BHSQ=v_BHSQ)


def cached_attention(q_BTHQ, k_BHSQ, v_BHSQ, visible_BTS) -> jax.Array:
    """Attention of T new queries over a cache's S positions, where visible_BTS allows."""
    Q = q_BTHQ.shape[-1]
    scores_BHTS = jnp.einsum(
        "bthq,bhsq->bhts", q_BTHQ, k_BHSQ, preferred_element_type=jnp.float32
    ) * (1.0 / Q**0.5)
    scores_BHTS = jnp.where(visible_BTS[:, None], scores_BHTS, jnp.finfo(jnp.float32).min)
    probs_BHTS = jax.nn.softmax(scores_BHTS, axis=-1).astype(v_BHSQ.dtype)
    return jnp.einsum("bhts,bhsq->bthq", probs_BHTS, v_BHSQ).astype(q_BTHQ.dtype)


def init_cache(config: GPTConfig, batch: int, pad_B: jax.Array | None = None) -> list[LayerCache]:
    """Empty per-layer caches for decoding `batch` rows (unrolled layers); config.block_size
    positions (pass a config with a smaller block_size for a shorter cache)."""
    shape = (batch, config.n_head, config.block_size, config.head_dim)
    pad_B = jnp.zeros((batch,), jnp.int32) if pad_B is None else jnp.asarray(pad_B, jnp.int32)
    zeros = jnp.zeros(shape, config.compute_dtype)
    return [
        LayerCache(zeros, zeros, jnp.zeros((), jnp.int32), pad_B) for _ in range(config.n_layer)
    ]


class Projection(nn.Module):
    """x[..., *in_shape] · kernel[*in_shape, *out_shape] + bias[*out_shape].

    Like nn.DenseGeneral, but the kernel is initialized in its full shape so each of its axes
    carries a logical name.
    """

    config: GPTConfig
    in_shape: tuple[int, ...]
    out_shape: tuple[int, ...]
    names: tuple[str, ...]
    stddev: float = 0.02

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        c = self.config
        kernel = self.param(
            "kernel", _init(self.names, self.stddev), self.in_shape + self.out_shape, c.weight_dtype
        )
        # One 2-D matmul on flattened views: the backward pass then needs no transposes of
        # multi-axis operands, which CPU backends handle poorly.
        n_in = len(self.in_shape)
        lead = x.shape[: x.ndim - n_in]
        kernel_2d = kernel.reshape(math.prod(self.in_shape), math.prod(self.out_shape))
        y = jnp.matmul(
            x.reshape(*lead, -1).astype(c.compute_dtype), kernel_2d.astype(c.compute_dtype)
        ).reshape(*lead, *self.out_shape)
        if c.bias:
            bias = self.param("bias", _zeros(self.names[n_in:]), self.out_shape, c.weight_dtype)
            y = y + bias.astype(c.compute_dtype)
        return y


class CausalSelfAttention(nn.Module):
    config: GPTConfig

    @nn.compact
    def __call__(
        self, x_BTD: jax.Array, deterministic: bool, cache: LayerCache | None = None
    ) -> tuple[jax.Array, LayerCache | None]:
        c = self.config
        qkv_BT3HQ = Projection(
            c,
            (c.n_embd,),
            (3, c.n_head, c.head_dim),
            ("embed", "qkv", "heads", "kv"),
            name="c_attn",
        )(x_BTD)
        qkv_BT3HQ = checkpoint_name(qkv_BT3HQ, "qkv")
        q_BTHQ, k_BTHQ, v_BTHQ = (qkv_BT3HQ[:, :, i] for i in range(3))
        q_BTHQ = _constrain(q_BTHQ, ("batch", "act_seq", "act_heads", None))
        if cache is None:
            y_BTHQ = attention(q_BTHQ, k_BTHQ, v_BTHQ, c.attention)
        else:
            y_BTHQ, cache = cache.attend(q_BTHQ, k_BTHQ, v_BTHQ)
        y_BTHQ = checkpoint_name(y_BTHQ, "attn_out")
        # GPT-2 scales residual projections by 1/sqrt(2L) so the residual stream's variance
        # does not grow with depth.
        y_BTD = Projection(
            c,
            (c.n_head, c.head_dim),
            (c.n_embd,),
            ("heads", "kv", "embed"),
            stddev=0.02 / (2 * c.n_layer) ** 0.5,
            name="c_proj",
        )(y_BTHQ)
        y_BTD = checkpoint_name(y_BTD, "attn_proj")
        return nn.Dropout(c.dropout)(y_BTD, deterministic=deterministic), cache


class MLP(nn.Module):
    config: GPTConfig

    @nn.compact
    def __call__(self, x_BTD: jax.Array, deterministic: bool) -> jax.Array:
        c = self.config
        h_BTF = nn.Dense(
            4 * c.n_embd,
            use_bias=c.bias,
            dtype=c.compute_dtype,
            param_dtype=c.weight_dtype,
            kernel_init=_init(("embed", "mlp")),
            bias_init=_zeros(("mlp",)),
            name="c_fc",
        )(x_BTD)
        h_BTF = checkpoint_name(h_BTF, "mlp_fc")
        h_BTF = _constrain(nn.gelu(h_BTF, approximate=True), ("batch", "act_seq", "act_mlp"))
        h_BTF = checkpoint_name(h_BTF, "mlp_gelu")
        y_BTD = nn.Dense(
            c.n_embd,
            use_bias=c.bias,
            dtype=c.compute_dtype,
            param_dtype=c.weight_dtype,
            kernel_init=_init(("mlp", "embed"), 0.02 / (2 * c.n_layer) ** 0.5),
            bias_init=_zeros(("embed",)),
            name="c_proj",
        )(h_BTF)
        y_BTD = checkpoint_name(y_BTD, "mlp_proj")
        return nn.Dropout(c.dropout)(y_BTD, deterministic=deterministic)


class Block(nn.Module):
    config: GPTConfig

    @nn.compact
    def __call__(
        self, x_BTD: jax.Array, deterministic: bool, cache: LayerCache | None = None
    ) -> jax.Array | tuple[jax.Array, LayerCache]:
        c = self.config
        y_BTD, new_cache = CausalSelfAttention(c, name="attn")(
            layer_norm(c, "ln_1")(x_BTD), deterministic, cache
        )
        x_BTD = x_BTD + y_BTD
        x_BTD = x_BTD + MLP(c, name="mlp")(layer_norm(c, "ln_2")(x_BTD), deterministic)
        x_BTD = _constrain(x_BTD, ("batch", "act_seq", "act_embed"))
        return x_BTD if cache is None else (x_BTD, new_cache)


class ScannedBlock(nn.Module):
    """Block with the (carry, out) signature nn.scan needs."""

    config: GPTConfig

    @nn.compact
    def __call__(self, x_BTD: jax.Array, deterministic: bool) -> tuple[jax.Array, None]:
        return Block(self.config, name="block")(x_BTD, deterministic), None


def remat_policy(config: GPTConfig) -> Callable | None:
    """The jax.checkpoint policy of config.remat ("full": None, i.e. save nothing)."""
    if config.remat == "dots":
        # The four weight matmuls' outputs; attention's batched einsums are recomputed.
        return jax.checkpoint_policies.checkpoint_dots_with_no_batch_dims
    if config.remat == "names":
        return jax.checkpoint_policies.save_only_these_names(*config.remat_names)
    return None


def _remat(module_cls: type[nn.Module], config: GPTConfig, static_argnums: tuple[int, ...]):
    if config.remat == "none":
        return module_cls
    return nn.remat(module_cls, policy=remat_policy(config), static_argnums=static_argnums)


class GPT(nn.Module):
    """Decoder-only transformer; returns float32 logits [B, T, V]."""

    config: GPTConfig

    def setup(self):
        c = self.config
        self.wte = nn.Embed(
            c.vocab_size,
            c.n_embd,
            dtype=c.compute_dtype,
            param_dtype=c.weight_dtype,
            embedding_init=_init(("vocab", "embed")),
        )
        self.wpe = nn.Embed(
            c.block_size,
            c.n_embd,
            dtype=c.compute_dtype,
            param_dtype=c.weight_dtype,
            embedding_init=_init(("pos", "embed"), 0.01),
        )
        self.drop = nn.Dropout(c.dropout)
        if c.scan_layers:
            # deterministic (arg 2 counting self) is static under remat: it picks the code path.
            block_cls = _remat(ScannedBlock, c, static_argnums=(2,))
            self.h = nn.scan(
                block_cls,
                variable_axes={"params": 0},
                split_rngs={"params": True, "dropout": True},
                in_axes=nn.broadcast,
                length=c.n_layer,
                metadata_params={nn.PARTITION_NAME: "layers"},
            )(c, name="h")
        else:
            block_cls = _remat(Block, c, static_argnums=(2,))
            self.blocks = [block_cls(c, name=f"h_{i}") for i in range(c.n_layer)]
        self.ln_f = layer_norm(c)

    def __call__(
        self,
        tokens_BT: jax.Array,
        deterministic: bool = True,
        caches: list[LayerCache] | None = None,
    ) -> jax.Array | tuple[jax.Array, list[LayerCache]]:
        """Logits [B, T, V]; with caches (decoding), also the updated caches."""
        x_BTD, new_caches = self._trunk(tokens_BT, deterministic, caches)
        logits_BTV = self.logits(self.ln_f(x_BTD))
        return logits_BTV if caches is None else (logits_BTV, new_caches)

    def hidden_states(self, tokens_BT: jax.Array, deterministic: bool = True) -> jax.Array:
        """The final LayerNorm's output [B, T, D] in the compute dtype: what the tied output
        projection reads. loss.chunked_cross_entropy projects it a chunk at a time, so the
        [B, T, V] logits are never whole in memory (call with apply(..., method=...))."""
        x_BTD, _ = self._trunk(tokens_BT, deterministic, None)
        return self.ln_f(x_BTD)

    def logits(self, x_BTD: jax.Array) -> jax.Array:
        """Tied output projection: logits in the compute dtype, then float32 for the softmax."""
        logits_BTV = self.wte.attend(x_BTD)
        return _constrain(logits_BTV, ("batch", "act_seq", "act_vocab")).astype(jnp.float32)

    def _trunk(
        self, tokens_BT: jax.Array, deterministic: bool, caches: list[LayerCache] | None
    ) -> tuple[jax.Array, list[LayerCache]]:
        """Embeddings and every block: the residual stream [B, T, D] before ln_f."""
        c = self.config
        T = tokens_BT.shape[1]
        if c.block_size < T:
            raise ValueError(f"sequence length {T} exceeds model.block_size {c.block_size}")
        if caches is None:
            pos_BT = jnp.arange(T)[None, :]
        else:
            if c.scan_layers:
                raise ValueError("decode with the unrolled model: see sample.unscan_params")
            # Right-aligned prompts: row b's first real token sits at position pad[b].
            first = caches[0]
            pos_BT = jnp.maximum(first.index + jnp.arange(T)[None, :] - first.pad_B[:, None], 0)
        x_BTD = self.wte(tokens_BT) + self.wpe(pos_BT)
        x_BTD = _constrain(
            self.drop(x_BTD, deterministic=deterministic), ("batch", "act_seq", "act_embed")
        )
        new_caches = []
        if c.scan_layers:
            x_BTD, _ = self.h(x_BTD, deterministic)
        elif caches is None:
            for block in self.blocks:
                x_BTD = block(x_BTD, deterministic)
        else:
            for block, cache in zip(self.blocks, caches, strict=True):
                x_BTD, cache = block(x_BTD, deterministic, cache)
                new_caches.append(cache.replace(index=cache.index + T))
        return x_BTD, new_caches


def count_params(params: Any, exclude_positions: bool = False) -> int:
    """Number of parameters; optionally without the position table (as MFU formulas want)."""
    total = 0
    for path, leaf in jax.tree_util.tree_leaves_with_path(params):
        if exclude_positions and any(getattr(k, "key", None) == "wpe" for k in path):
            continue
        total += int(functools.reduce(lambda a, b: a * b, leaf.shape, 1))
    return total


def flops_per_token(config: GPTConfig, n_params_no_pos: int) -> float:
    """Training FLOPs per token: 6N + 12·L·H·Q·T (PaLM appendix B)."""
    c = config
    return 6.0 * n_params_no_pos + 12.0 * c.n_layer * c.n_head * c.head_dim * c.block_size
