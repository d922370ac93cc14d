"""The KV cache: one layer's keys and values with a fill count per row, and attention over it."""

from __future__ import annotations

from typing import TYPE_CHECKING

import flax
import jax
import jax.numpy as jnp

if TYPE_CHECKING:
    from jaxgpt.config.model import GPTConfig


@flax.struct.dataclass
class KVCache:
    """One layer's keys and values for decoding: [B, K, S, Q] buffers of S positions (K key/value
    heads: fewer than the H query heads under grouped-query attention; rotary models store keys
    already rotated, so a decode step rotates only its own).

    Row b holds its tokens at positions 0 .. length_B[b] − 1 (left-aligned), and a token's
    position id is its place in the cache. So prompts of different lengths share a batch with
    no padding in front, and rows that started at different steps (the server's continuous
    batching) decode side by side. Positions at or past a row's length are stale (the tail of a
    shorter prompt, a freed server slot) and never attended to, so nothing needs clearing.
    Heads come before positions so both attention einsums read the cache without transposing
    all of it every step (1.6× faster decode steps at batch 16 on CPU than [B, S, H, Q]).

    Under doc_mask (model.doc_mask) the cache also keeps where each position's document starts:
    a token attends to its own document only, and the next token's document is the last one's
    unless it is an end-of-text token (jaxgpt.model.doc_starts). Without doc_mask that array
    is empty ([B, 0]) and costs nothing.
    """

    k_BHSQ: jax.Array
    v_BHSQ: jax.Array
    length_B: jax.Array  # int32 [B]: tokens row b holds; its next token goes there
    start_BS: jax.Array  # int32 [B, S]: the document start of each position (doc_mask; else S=0)
    # Static: every row is empty (a new cache), so a prefill writes all rows from position 0
    # with one slice update. The scatter that writes at per-row positions costs more on CPU
    # (2-3 ms per 64-token prefill at batch 16, 2.5% of generating 300 tokens; at batch 1,
    # 3% of every decode step, so one row always takes the slice update), and choosing
    # between the two at run time (lax.cond) costs more than the scatter.
    fresh: bool = flax.struct.field(pytree_node=False, default=False)

    @classmethod
    def empty(
        cls, config: GPTConfig, batch: int, length: int | None = None, fresh: bool = True
    ) -> KVCache:
        """A cache of `length` positions (default: the context) with every row empty; fresh=False
        for one whose rows will fill one by one (the server's slots)."""
        length = config.block_size if length is None else length
        shape = (batch, config.kv_heads, length, config.head_dim)
        # Separate k and v buffers: the server donates its caches, and a buffer is donated once.
        k, v = (jnp.zeros(shape, config.compute_dtype) for _ in range(2))
        starts = jnp.zeros((batch, length if config.doc_mask else 0), jnp.int32)
        return cls(k, v, jnp.zeros((batch,), jnp.int32), starts, fresh)

    def positions(self, T: int) -> jax.Array:
        """Position ids [B, T] of T new tokens: each row goes on from its own length."""
        return self.length_B[:, None] + jnp.arange(T)[None, :]

    def doc_start(self) -> jax.Array:
        """Where each row's current document starts [B] (doc_mask): that of its last token, 0
        for an empty row. A row's positions past its length are stale, so they are not read."""
        last_B = jnp.maximum(self.length_B - 1, 0)
        start_B = jnp.take_along_axis(self.start_BS, last_B[:, None], axis=1)[:, 0]
        return jnp.where(self.length_B > 0, start_B, 0)

    def attend(self, q_BTHQ, k_BTKQ, v_BTKQ, start_BT=None) -> tuple[jax.Array, KVCache]:
        """Write T new keys/values after each row's tokens, attend over each row's filled part
        (from each token's document start when start_BT, cache positions [B, T], is given);
        returns the output and the cache with every row T longer."""
        T, S = q_BTHQ.shape[1], self.k_BHSQ.shape[2]
        # Heads before positions, as the buffers keep them.
        k_BHSQ = self._write(self.k_BHSQ, k_BTKQ.transpose(0, 2, 1, 3))
        v_BHSQ = self._write(self.v_BHSQ, v_BTKQ.transpose(0, 2, 1, 3))
        s_11S = jnp.arange(S)[None, None, :]
        visible_BTS = s_11S <= self.positions(T)[:, :, None]
        start_BS = self.start_BS
        if start_BT is not None:
            visible_BTS = visible_BTS & (s_11S >= start_BT[:, :, None])
            # With a head axis and a feature axis of one, the starts are written as keys are.
            start_B1S1 = self._write(start_BS[:, None, :, None], start_BT[:, None, :, None])
            start_BS = start_B1S1[:, 0, :, 0]
        y_BTHQ = cached_attention(q_BTHQ, k_BHSQ, v_BHSQ, visible_BTS)
        return y_BTHQ, KVCache(k_BHSQ, v_BHSQ, self.length_B + T, start_BS, fresh=False)

    def _write(self, buf_BHSQ: jax.Array, new_BHTQ: jax.Array) -> jax.Array:
        """buf with row b's positions length_B[b] .. + T - 1 set to its T new entries."""
        new_BHTQ = new_BHTQ.astype(buf_BHSQ.dtype)
        if self.fresh or buf_BHSQ.shape[0] == 1:  # one start for all rows: one slice update
            return jax.lax.dynamic_update_slice(buf_BHSQ, new_BHTQ, (0, 0, self.length_B[0], 0))
        at_row = jax.vmap(lambda buf, new, i: jax.lax.dynamic_update_slice(buf, new, (0, i, 0)))
        return at_row(buf_BHSQ, new_BHTQ, self.length_B)


def cached_attention(q_BTHQ, k_BHSQ, v_BHSQ, visible_BTS) -> jax.Array:
    """Attention of T new queries over a cache's S positions, where visible_BTS allows."""
    if k_BHSQ.shape[1] != q_BTHQ.shape[2]:
        return grouped_cached_attention(q_BTHQ, k_BHSQ, v_BHSQ, visible_BTS)
    Q = q_BTHQ.shape[-1]
    scores_BHTS = jnp.einsum(
        "bthq,bhsq->bhts", q_BTHQ, k_BHSQ, preferred_element_type=jnp.float32
    ) * (1.0 / Q**0.5)
    scores_BHTS = jnp.where(visible_BTS[:, None], scores_BHTS, jnp.finfo(jnp.float32).min)
    probs_BHTS = jax.nn.softmax(scores_BHTS, axis=-1).astype(v_BHSQ.dtype)
    return jnp.einsum("bhts,bhsq->bthq", probs_BHTS, v_BHSQ).astype(q_BTHQ.dtype)


def grouped_cached_attention(q_BTHQ, k_BKSQ, v_BKSQ, visible_BTS) -> jax.Array:
    """cached_attention with K < H cached heads: query head h = k·G + g reads kv head k."""
    B, T, H, Q = q_BTHQ.shape
    K = k_BKSQ.shape[1]
    q_BTKGQ = q_BTHQ.reshape(B, T, K, H // K, Q)
    scores_BKGTS = jnp.einsum(
        "btkgq,bksq->bkgts", q_BTKGQ, k_BKSQ, preferred_element_type=jnp.float32
    ) * (1.0 / Q**0.5)
    scores_BKGTS = jnp.where(visible_BTS[:, None, None], scores_BKGTS, jnp.finfo(jnp.float32).min)
    probs_BKGTS = jax.nn.softmax(scores_BKGTS, axis=-1).astype(v_BKSQ.dtype)
    y_BTKGQ = jnp.einsum("bkgts,bksq->btkgq", probs_BKGTS, v_BKSQ)
    return y_BTKGQ.reshape(B, T, H, Q).astype(q_BTHQ.dtype)


def init_cache(
    config: GPTConfig, batch: int, length: int | None = None, fresh: bool = True
) -> list[KVCache]:
    """Empty caches for every layer of the (unrolled) model, `length` positions each."""
    return [KVCache.empty(config, batch, length, fresh) for _ in range(config.n_layer)]


def set_lengths(caches: list[KVCache], length_B: jax.Array) -> list[KVCache]:
    """The caches with each row's length set: after a prefill of right-padded prompts, a row
    holds only its own prompt (the padding behind it becomes stale)."""
    return [c.replace(length_B=jnp.asarray(length_B, jnp.int32), fresh=False) for c in caches]
