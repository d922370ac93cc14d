"""GPT-2 in Flax linen, with logical axis names on every parameter and activation.

Shape letters used in names:
    B batch, T sequence (query positions), S key positions, D model width (n_embd),
    H heads, Q head dim (D / H), F MLP width (4D), V vocabulary, L layers.

Parameter names follow Hugging Face GPT-2 (wte, wpe, h_0/attn/c_attn, ln_f, ...) so that the
export table is a rename plus reshapes; attention kernels are stored per head (D, 3, H, Q) so
tensor parallelism splits whole heads.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.ad_checkpoint import checkpoint_name

from jaxgpt.config.model import (  # noqa: F401  (re-exported: jaxgpt.model.GPTConfig)
    ATTENTION_IMPLS,
    DTYPES,
    REMAT_NAMES,
    REMAT_POLICIES,
    GPTConfig,
)

if TYPE_CHECKING:  # decoding only passes caches through: no import of the decode package
    from jaxgpt.decode.cache import KVCache


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
        self, x_BTD: jax.Array, deterministic: bool, cache: KVCache | None = None
    ) -> tuple[jax.Array, KVCache | None]:
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
        self, x_BTD: jax.Array, deterministic: bool, cache: KVCache | None = None
    ) -> jax.Array | tuple[jax.Array, KVCache]:
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
        caches: list[KVCache] | None = None,
    ) -> jax.Array | tuple[jax.Array, list[KVCache]]:
        """Logits [B, T, V]; with caches (decoding), also the updated caches."""
        x_BTD, new_caches = self._trunk(tokens_BT, deterministic, caches)
        logits_BTV = self.logits(self.ln_f(x_BTD))
        return logits_BTV if caches is None else (logits_BTV, new_caches)

    def last_logits(
        self, tokens_BT: jax.Array, caches: list[KVCache], last_B: jax.Array
    ) -> tuple[jax.Array, list[KVCache]]:
        """Decoding a prompt: logits [B, V] at row b's position last_B[b] only, and the updated
        caches. Only those rows go through the output projection, most of a prefill's work for
        a vocabulary larger than the width (call with apply(..., method=...))."""
        x_BTD, new_caches = self._trunk(tokens_BT, True, caches)
        x_BD = jnp.take_along_axis(self.ln_f(x_BTD), last_B[:, None, None], axis=1)[:, 0]
        return self.logits(x_BD), new_caches

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
        self, tokens_BT: jax.Array, deterministic: bool, caches: list[KVCache] | None
    ) -> tuple[jax.Array, list[KVCache]]:
        """Embeddings and every block: the residual stream [B, T, D] before ln_f."""
        c = self.config
        T = tokens_BT.shape[1]
        if c.block_size < T:
            raise ValueError(f"sequence length {T} exceeds model.block_size {c.block_size}")
        if caches is None:
            pos_BT = jnp.arange(T)[None, :]
        else:
            if c.scan_layers:
                raise ValueError("decode the unrolled model: see decode.generate.unscan_params")
            pos_BT = caches[0].positions(T)  # every layer's cache holds the same rows
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
                new_caches.append(cache)
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
