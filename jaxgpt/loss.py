"""Chunked cross-entropy: the tied output projection and the loss a slice of positions at a time.

With a 50k vocabulary the float32 logits of a batch ([B, T, V], plus their gradient and a 16-bit
copy) are often the largest activation of the whole step: 3.3 GB for 16 × 1024 tokens of GPT-2.
Here the positions are cut into chunks of C; each chunk's logits [B, C, V] are computed, reduced
to a loss and dropped, and jax.checkpoint makes the backward pass recompute them chunk by chunk
instead of keeping all of them. The result is the plain path's function (same weights, same
denominator), summed in a different order.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax


def chunk_losses(
    emb_VD: jax.Array, h_BCD: jax.Array, targets_BC: jax.Array, weights_BC: jax.Array
) -> jax.Array:
    """Σ CE·weight of one chunk (float32), with logits made exactly as GPT.logits makes them."""
    # As nn.Embed.attend: both operands in the compute dtype, then float32 for the softmax.
    logits_BCV = jnp.dot(h_BCD, emb_VD.astype(h_BCD.dtype).T)
    logits_BCV = nn.with_logical_constraint(logits_BCV, ("batch", "act_seq", "act_vocab"))
    losses_BC = optax.softmax_cross_entropy_with_integer_labels(
        logits_BCV.astype(jnp.float32), targets_BC
    )
    return jnp.sum(losses_BC * weights_BC)


def chunked_cross_entropy(
    hidden_BTD: jax.Array,
    emb_VD: jax.Array,
    targets_BT: jax.Array,
    weights_BT: jax.Array,
    chunk: int,
) -> jax.Array:
    """Σ over positions of CE(hidden · embᵀ, target) · weight, `chunk` positions at a time.

    Args:
        hidden_BTD: the final LayerNorm's output (GPT.hidden_states), in the compute dtype.
        emb_VD: the token embedding table, tied to the output projection.
        targets_BT: next-token ids.
        weights_BT: float32 loss weights (0 for targets that are not trained on).
        chunk: sequence positions per chunk; every row of the batch is in every chunk, so the
            batch axis keeps its sharding. T need not be a multiple: the tail is padded with
            zero-weight positions.

    Returns:
        The weighted sum of the losses (float32 scalar); divide by the denominator you want.
    """
    B, T, _ = hidden_BTD.shape
    chunk = max(1, min(chunk, T))
    n_chunks = -(-T // chunk)
    pad = n_chunks * chunk - T
    if pad:
        hidden_BTD = jnp.pad(hidden_BTD, ((0, 0), (0, pad), (0, 0)))
        targets_BT = jnp.pad(targets_BT, ((0, 0), (0, pad)))
        weights_BT = jnp.pad(weights_BT, ((0, 0), (0, pad)))

    def by_chunk(x: jax.Array) -> jax.Array:
        # [B, K·C, ...] → [K, B, C, ...]: scan walks the leading axis.
        return jnp.swapaxes(x.reshape(B, n_chunks, chunk, *x.shape[2:]), 0, 1)

    # Without the checkpoint, scan's autodiff would stack every chunk's logits as residuals:
    # the whole [B, T, V] again. With it, only the chunk's inputs are kept.
    loss_fn = jax.checkpoint(chunk_losses)

    def body(total: jax.Array, xs: tuple[Any, ...]) -> tuple[jax.Array, None]:
        return total + loss_fn(emb_VD, *xs), None

    total, _ = jax.lax.scan(
        body,
        jnp.zeros((), jnp.float32),
        (by_chunk(hidden_BTD), by_chunk(targets_BT), by_chunk(weights_BT)),
    )
    return total
