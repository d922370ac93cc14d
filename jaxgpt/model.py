"""GPT-2 in Flax linen, with logical axis names on every parameter and activation, and the
switches that make it a Llama-style model (one model, not two).

Shape letters used in names:
    B batch, T sequence (query positions), S key positions, D model width (n_embd),
    H heads, K key/value heads (H under plain attention, fewer under grouped-query attention),
    G = H / K query heads per key/value head, Q head dim (D / H), F MLP width (4D by default),
    V vocabulary, L layers.

Parameter names follow Hugging Face GPT-2 (wte, wpe, h_0/attn/c_attn, ln_f, ...) so that the
export table is a rename plus reshapes; attention kernels are stored per head (D, 3, H, Q) so
tensor parallelism splits whole heads. The switches (GPTConfig: position, norm, mlp, n_kv_head,
tie_embeddings, qk_norm, bias) add or drop leaves, never rename the GPT-2 ones:
    position="rope"   no wpe; queries and keys rotated (HF's half-split convention)
    norm="rmsnorm"    ln_1, ln_2, ln_f have a scale only
    mlp="swiglu"      mlp/c_fc/kernel (D, 2, F): gate and up in one matmul; "relu2": ReLU²
    n_kv_head=K < H   attn/q_proj (D, H, Q) and attn/kv_proj (D, 2, K, Q) instead of c_attn
    qk_norm           attn/q_norm, attn/k_norm: RMSNorm over each head's Q (Qwen3's placement)
    tie_embeddings=False   lm_head/kernel (D, V)
    doc_mask          no new leaves: attention stays inside each document of a packed row, and
                      positions (rope or learned) count from the document's start (doc_starts)
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


def layer_norm(c: GPTConfig, name: str | None = None) -> nn.Module:
    """The block and final norm: LayerNorm (GPT-2) or RMSNorm (scale only)."""
    if c.norm == "rmsnorm":
        return rms_norm(c, name)
    return nn.LayerNorm(
        epsilon=c.norm_eps,
        use_bias=c.bias,
        dtype=c.compute_dtype,
        param_dtype=c.weight_dtype,
        scale_init=_ones(("norm",)),
        bias_init=_zeros(("norm",)),
        name=name,
    )


def rms_norm(c: GPTConfig, name: str | None = None) -> nn.RMSNorm:
    """RMSNorm over the last axis, statistics in float32 (as HF's LlamaRMSNorm)."""
    return nn.RMSNorm(
        epsilon=c.norm_eps,
        dtype=c.compute_dtype,
        param_dtype=c.weight_dtype,
        scale_init=_ones(("norm",)),
        name=name,
    )


def apply_rope(x_BTHQ: jax.Array, pos_BT: jax.Array, theta: float) -> jax.Array:
    """Rotary position embedding in Hugging Face's convention (pairs i and i + Q/2, frequencies
    theta^(-2i/Q)), so Llama checkpoints load with no permutation. Angles in float32."""
    Q = x_BTHQ.shape[-1]
    inv_freq = 1.0 / (theta ** (jnp.arange(0, Q, 2, dtype=jnp.float32) / Q))
    angles_BTq = pos_BT[..., None].astype(jnp.float32) * inv_freq
    angles_BT1Q = jnp.concatenate([angles_BTq, angles_BTq], axis=-1)[:, :, None, :]
    x = x_BTHQ.astype(jnp.float32)
    half = Q // 2
    rotated = jnp.concatenate([-x[..., half:], x[..., :half]], axis=-1)
    return (x * jnp.cos(angles_BT1Q) + rotated * jnp.sin(angles_BT1Q)).astype(x_BTHQ.dtype)


def doc_starts(
    tokens_BT: jax.Array, eot_id: int, pos_BT: jax.Array, before_B: jax.Array | None = None
) -> jax.Array:
    """Where each token's document starts [B, T]: the position (from pos_BT) of the last
    end-of-text token at or before it, else before_B (a cached row's current start; None: 0).

    An end-of-text token opens the next document: data/build.py appends one after every
    document, and prompts and samples start with one. So row [5, 6, E, 7, 8, E, 3] has starts
    [0, 0, 2, 2, 2, 5, 5] and positions within its documents [0, 1, 0, 1, 2, 0, 1].
    """
    before = 0 if before_B is None else before_B[:, None]
    return jax.lax.cummax(jnp.where(tokens_BT == eot_id, pos_BT, before), axis=1)


def visible_mask(T: int, S: int, start_BT: jax.Array | None) -> jax.Array:
    """Keys each of the last T of S positions may attend to: causal [T, S]; with document starts
    [B, T, S], also only keys at or after the query's document start."""
    causal_TS = jnp.tril(jnp.ones((T, S), dtype=bool), k=S - T)
    if start_BT is None:
        return causal_TS
    return causal_TS & (jnp.arange(S)[None, None, :] >= start_BT[:, :, None])


def einsum_attention(
    q_BTHQ: jax.Array, k_BSKQ: jax.Array, v_BSKQ: jax.Array, start_BT: jax.Array | None = None
) -> jax.Array:
    """Causal softmax attention written out; XLA's CPU backend runs it faster than the library
    path (whose per-group vmap leaves strided reductions in the backward pass). start_BT: each
    query's document start (doc_mask), None for plain causal attention."""
    if k_BSKQ.shape[2] != q_BTHQ.shape[2]:
        return grouped_einsum_attention(q_BTHQ, k_BSKQ, v_BSKQ, start_BT)
    k_BSHQ, v_BSHQ = k_BSKQ, v_BSKQ
    T, S, Q = q_BTHQ.shape[1], k_BSHQ.shape[1], q_BTHQ.shape[-1]
    scores_BHTS = jnp.einsum(
        "bthq,bshq->bhts", q_BTHQ, k_BSHQ, preferred_element_type=jnp.float32
    ) * (1.0 / Q**0.5)
    visible = visible_mask(T, S, start_BT)  # [T, S], or [B, T, S]: add the head axis
    visible = visible if start_BT is None else visible[:, None]
    scores_BHTS = jnp.where(visible, scores_BHTS, jnp.finfo(jnp.float32).min)
    probs_BHTS = jax.nn.softmax(scores_BHTS, axis=-1).astype(v_BSHQ.dtype)
    return jnp.einsum("bhts,bshq->bthq", probs_BHTS, v_BSHQ)


def grouped_einsum_attention(
    q_BTHQ: jax.Array, k_BSKQ: jax.Array, v_BSKQ: jax.Array, start_BT: jax.Array | None = None
) -> jax.Array:
    """einsum_attention with K < H key/value heads: query head h = k·G + g reads kv head k (the
    grouping of HF's repeat_kv and of jax.nn.dot_product_attention), without repeating k, v."""
    B, T, H, Q = q_BTHQ.shape
    S, K = k_BSKQ.shape[1], k_BSKQ.shape[2]
    q_BTKGQ = q_BTHQ.reshape(B, T, K, H // K, Q)
    scores_BKGTS = jnp.einsum(
        "btkgq,bskq->bkgts", q_BTKGQ, k_BSKQ, preferred_element_type=jnp.float32
    ) * (1.0 / Q**0.5)
    visible = visible_mask(T, S, start_BT)  # [T, S], or [B, T, S]: add the K and G axes
    visible = visible if start_BT is None else visible[:, None, None]
    scores_BKGTS = jnp.where(visible, scores_BKGTS, jnp.finfo(jnp.float32).min)
    probs_BKGTS = jax.nn.softmax(scores_BKGTS, axis=-1).astype(v_BSKQ.dtype)
    return jnp.einsum("bkgts,bskq->btkgq", probs_BKGTS, v_BSKQ).reshape(B, T, H, Q)


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


def attention(
    q_BTHQ: jax.Array,
    k_BSKQ: jax.Array,
    v_BSKQ: jax.Array,
    impl: str,
    start_BT: jax.Array | None = None,
) -> jax.Array:
    """Causal attention (K <= H key/value heads), within documents when start_BT (each query's
    document start) is given. "auto": the written-out form on CPU; cuDNN flash attention on GPU
    for 16-bit inputs (jax's implementation=None does not pick it by itself); XLA elsewhere."""
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
        return einsum_attention(q_BTHQ, k_BSKQ, v_BSKQ, start_BT)
    # Documents: a boolean mask [B, 1, T, S] on top of is_causal (jax hands it to cuDNN as an
    # additive bias, next to the causal mask type).
    mask = None
    if start_BT is not None:
        mask = visible_mask(q_BTHQ.shape[1], k_BSKQ.shape[1], start_BT)[:, None]
    return jax.nn.dot_product_attention(
        q_BTHQ, k_BSKQ, v_BSKQ, mask=mask, is_causal=True, implementation=impl
    )


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


def project_qkv(
    c: GPTConfig, x_BTD: jax.Array, pos_BT: jax.Array | None
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Queries [B, T, H, Q], keys and values [B, T, K, Q]: projected, then QK-normed and rotated
    when those switches are on. Called inside CausalSelfAttention, whose submodules these are.

    K == H keeps GPT-2's one fused c_attn (D, 3, H, Q). Under grouped-query attention K < H,
    so queries and key/values are separate kernels; both name their head axis "heads", so the
    tensor axis splits q heads and kv heads into the same number of contiguous blocks, and
    query head h (kv head h // G) finds its kv head on its own device.
    """
    D, H, K, Q = c.n_embd, c.n_head, c.kv_heads, c.head_dim
    if K == H:
        c_attn = Projection(c, (D,), (3, H, Q), ("embed", "qkv", "heads", "kv"), name="c_attn")
        qkv_BT3HQ = checkpoint_name(c_attn(x_BTD), "qkv")
        q_BTHQ, k_BTKQ, v_BTKQ = (qkv_BT3HQ[:, :, i] for i in range(3))
    else:
        q_proj = Projection(c, (D,), (H, Q), ("embed", "heads", "kv"), name="q_proj")
        kv_proj = Projection(c, (D,), (2, K, Q), ("embed", "qkv", "heads", "kv"), name="kv_proj")
        q_BTHQ = checkpoint_name(q_proj(x_BTD), "qkv")
        kv_BT2KQ = checkpoint_name(kv_proj(x_BTD), "qkv")
        k_BTKQ, v_BTKQ = kv_BT2KQ[:, :, 0], kv_BT2KQ[:, :, 1]
    if c.qk_norm:  # over each head's Q, before the rotation (as Qwen3)
        q_BTHQ = rms_norm(c, "q_norm")(q_BTHQ)
        k_BTKQ = rms_norm(c, "k_norm")(k_BTKQ)
    if c.position == "rope":
        q_BTHQ = apply_rope(q_BTHQ, pos_BT, c.rope_theta)
        k_BTKQ = apply_rope(k_BTKQ, pos_BT, c.rope_theta)
    return q_BTHQ, k_BTKQ, v_BTKQ


class CausalSelfAttention(nn.Module):
    config: GPTConfig

    @nn.compact
    def __call__(
        self,
        x_BTD: jax.Array,
        deterministic: bool,
        cache: KVCache | None = None,
        pos_BT: jax.Array | None = None,
        start_BT: jax.Array | None = None,
    ) -> tuple[jax.Array, KVCache | None]:
        """pos_BT: each token's position id, which the rotary embedding reads (None for
        learned positions: they were added to the input). start_BT: where each token's document
        starts (doc_mask; positions in the row or the cache), None for plain causal attention."""
        c = self.config
        q_BTHQ, k_BTKQ, v_BTKQ = project_qkv(c, x_BTD, pos_BT)
        q_BTHQ = _constrain(q_BTHQ, ("batch", "act_seq", "act_heads", None))
        if cache is None:
            y_BTHQ = attention(q_BTHQ, k_BTKQ, v_BTKQ, c.attention, start_BT)
        else:  # keys are cached rotated: a decode step rotates only its new ones
            y_BTHQ, cache = cache.attend(q_BTHQ, k_BTKQ, v_BTKQ, start_BT)
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
        if c.mlp == "swiglu":  # gate and up in one matmul; both split the same way over F
            h_BT2F = Projection(
                c, (c.n_embd,), (2, c.mlp_dim), ("embed", None, "mlp"), name="c_fc"
            )(x_BTD)
            h_BT2F = checkpoint_name(h_BT2F, "mlp_fc")
            h_BTF = nn.silu(h_BT2F[:, :, 0]) * h_BT2F[:, :, 1]
        else:
            h_BTF = nn.Dense(
                c.mlp_dim,
                use_bias=c.bias,
                dtype=c.compute_dtype,
                param_dtype=c.weight_dtype,
                kernel_init=_init(("embed", "mlp")),
                bias_init=_zeros(("mlp",)),
                name="c_fc",
            )(x_BTD)
            h_BTF = checkpoint_name(h_BTF, "mlp_fc")
            h_BTF = nn.gelu(h_BTF, approximate=True) if c.mlp == "gelu" else nn.relu(h_BTF) ** 2
        h_BTF = _constrain(h_BTF, ("batch", "act_seq", "act_mlp"))
        h_BTF = checkpoint_name(h_BTF, "mlp_gelu")  # the activation's output, whichever it is
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
        self,
        x_BTD: jax.Array,
        deterministic: bool,
        cache: KVCache | None = None,
        pos_BT: jax.Array | None = None,
        start_BT: jax.Array | None = None,
    ) -> jax.Array | tuple[jax.Array, KVCache]:
        c = self.config
        y_BTD, new_cache = CausalSelfAttention(c, name="attn")(
            layer_norm(c, "ln_1")(x_BTD), deterministic, cache, pos_BT, start_BT
        )
        x_BTD = x_BTD + y_BTD
        x_BTD = x_BTD + MLP(c, name="mlp")(layer_norm(c, "ln_2")(x_BTD), deterministic)
        x_BTD = _constrain(x_BTD, ("batch", "act_seq", "act_embed"))
        return x_BTD if cache is None else (x_BTD, new_cache)


class ScannedBlock(nn.Module):
    """Block with the (carry, out) signature nn.scan needs."""

    config: GPTConfig

    @nn.compact
    def __call__(
        self,
        x_BTD: jax.Array,
        deterministic: bool,
        pos_BT: jax.Array | None = None,
        start_BT: jax.Array | None = None,
    ) -> tuple[jax.Array, None]:
        block = Block(self.config, name="block")
        return block(x_BTD, deterministic, None, pos_BT, start_BT), None


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
        if c.position == "learned":
            self.wpe = nn.Embed(
                c.block_size,
                c.n_embd,
                dtype=c.compute_dtype,
                param_dtype=c.weight_dtype,
                embedding_init=_init(("pos", "embed"), 0.01),
            )
        if not c.tie_embeddings:
            self.lm_head = nn.Dense(
                c.vocab_size,
                use_bias=False,
                dtype=c.compute_dtype,
                param_dtype=c.weight_dtype,
                kernel_init=_init(("embed", "vocab")),
            )
        self.drop = nn.Dropout(c.dropout)
        if c.scan_layers:
            # deterministic (arg 2 counting self) is static under remat: it picks the code path.
            block_cls = _remat(ScannedBlock, c, static_argnums=(2,))
            self.h = nn.scan(
                block_cls,
                variable_axes={"params": 0},
                split_rngs={"params": True, "dropout": True},
                in_axes=(nn.broadcast, nn.broadcast, nn.broadcast),
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
        """The final norm's output [B, T, D] in the compute dtype: what the output projection
        (output_table) reads. loss.chunked_cross_entropy projects it a chunk at a time, so the
        [B, T, V] logits are never whole in memory (call with apply(..., method=...))."""
        x_BTD, _ = self._trunk(tokens_BT, deterministic, None)
        return self.ln_f(x_BTD)

    def logits(self, x_BTD: jax.Array) -> jax.Array:
        """Output projection (tied to wte, or lm_head): logits in the compute dtype, then
        float32 for the softmax."""
        logits_BTV = self.wte.attend(x_BTD) if self.config.tie_embeddings else self.lm_head(x_BTD)
        return _constrain(logits_BTV, ("batch", "act_seq", "act_vocab")).astype(jnp.float32)

    def _trunk(
        self, tokens_BT: jax.Array, deterministic: bool, caches: list[KVCache] | None
    ) -> tuple[jax.Array, list[KVCache]]:
        """Embeddings and every block: the residual stream [B, T, D] before ln_f."""
        c = self.config
        pos_BT, start_BT = self._positions(tokens_BT, caches)
        x_BTD = self.wte(tokens_BT)
        if c.position == "learned":
            x_BTD = x_BTD + self.wpe(pos_BT)
        # Rotary positions are read by every attention layer; learned ones were added above.
        pos_BT = pos_BT if c.position == "rope" else None
        x_BTD = _constrain(
            self.drop(x_BTD, deterministic=deterministic), ("batch", "act_seq", "act_embed")
        )
        new_caches = []
        if c.scan_layers:
            x_BTD, _ = self.h(x_BTD, deterministic, pos_BT, start_BT)
        elif caches is None:
            for block in self.blocks:
                x_BTD = block(x_BTD, deterministic, None, pos_BT, start_BT)
        else:
            for block, cache in zip(self.blocks, caches, strict=True):
                x_BTD, cache = block(x_BTD, deterministic, cache, pos_BT, start_BT)
                new_caches.append(cache)
        return x_BTD, new_caches

    def _positions(
        self, tokens_BT: jax.Array, caches: list[KVCache] | None
    ) -> tuple[jax.Array, jax.Array | None]:
        """Each token's position id [B or 1, T] and, under doc_mask, where its document starts
        [B, T] (None otherwise). Positions count from the row's start, or under doc_mask from
        the document's; cached rows go on from their length (and their current document)."""
        c = self.config
        T = tokens_BT.shape[1]
        if c.block_size < T:
            raise ValueError(f"sequence length {T} exceeds model.block_size {c.block_size}")
        if caches is None:
            pos_BT, before_B = jnp.arange(T)[None, :], None
        else:
            if c.scan_layers:
                raise ValueError("decode the unrolled model: see decode.generate.unscan_params")
            pos_BT = caches[0].positions(T)  # every layer's cache holds the same rows
            before_B = caches[0].doc_start() if c.doc_mask else None
        if not c.doc_mask:
            return pos_BT, None
        if c.eot_id < 0:
            raise ValueError(
                "model.doc_mask=True finds documents at end-of-text tokens, but model.eot_id is "
                "-1 (not resolved from a tokenizer): build the config with "
                "config.model_config(model, vocab_size, tokenizer_eot), or set model.eot_id"
            )
        start_BT = doc_starts(tokens_BT, c.eot_id, pos_BT, before_B)
        return pos_BT - start_BT, start_BT


def output_table(params: Any) -> jax.Array:
    """The output projection as a [V, D] table (logits = hidden · tableᵀ): the token embedding
    when tied, else lm_head's kernel transposed. What chunked losses pass for emb_VD."""
    if "lm_head" in params:
        return params["lm_head"]["kernel"].T
    return params["wte"]["embedding"]


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
