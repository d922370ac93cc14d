"""Choosing tokens: per-row keys, greedy / temperature / top-k / top-p, log-probabilities."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp


def row_keys(rng: jax.Array, n: int) -> jax.Array:
    """One key per batch row: row i draws from fold_in(rng, i), so a row's samples depend only
    on (seed, i), never on which other rows share its batch."""
    return jax.vmap(lambda i: jax.random.fold_in(rng, i))(jnp.arange(n))


def step_keys(keys_B: jax.Array, t: int | jax.Array) -> jax.Array:
    """The keys rows draw their t-th new token with (t = 0 for the token after the prompt)."""
    return jax.vmap(lambda k: jax.random.fold_in(k, t))(keys_B)


def _filter(logits_BV: jax.Array, top_k_B1: jax.Array, top_p_B1: jax.Array) -> jax.Array:
    """Logits with every token outside each row's top-k and top-p set to -inf."""
    V = logits_BV.shape[-1]
    sorted_BV = jnp.sort(logits_BV, axis=-1)[:, ::-1]
    # top-k: drop everything below the k-th largest logit.
    kth_B1 = jnp.take_along_axis(sorted_BV, jnp.clip(top_k_B1 - 1, 0, V - 1), axis=-1)
    kth_B1 = jnp.where(top_k_B1 > 0, kth_B1, -jnp.inf)
    sorted_BV = jnp.where(sorted_BV < kth_B1, -jnp.inf, sorted_BV)
    # top-p: keep the smallest set of tokens whose probability mass reaches top_p, always at
    # least the best one.
    cum_BV = jnp.cumsum(jax.nn.softmax(sorted_BV, axis=-1), axis=-1)
    last_B1 = jnp.minimum(jnp.sum(cum_BV < top_p_B1, axis=-1, keepdims=True), V - 1)
    cutoff_B1 = jnp.take_along_axis(sorted_BV, last_B1, axis=-1)
    cutoff_B1 = jnp.where(top_p_B1 >= 1.0, -jnp.inf, cutoff_B1)
    return jnp.where((logits_BV < kth_B1) | (logits_BV < cutoff_B1), -jnp.inf, logits_BV)


# Jitted so that eager callers compile the branches below once, not on every call.
@functools.partial(jax.jit, static_argnames=("vocab_limit",))
def pick_tokens(
    logits_BV: jax.Array,
    keys_B: jax.Array,
    temperature_B: jax.Array,
    top_k_B: jax.Array,
    top_p_B: jax.Array,
    vocab_limit: int,
) -> jax.Array:
    """Next token per row: argmax at temperature 0, else a sample from the filtered softmax.

    Every setting is per row (so requests with different settings can share a batch): top_k 0
    and top_p 1 switch the filters off. Ids at or past vocab_limit (padded rows) never come out.
    """
    B, V = logits_BV.shape
    per_row = lambda x, dtype: jnp.broadcast_to(jnp.asarray(x, dtype), (B,))[:, None]
    temperature_B1 = per_row(temperature_B, jnp.float32)
    top_k_B1, top_p_B1 = per_row(top_k_B, jnp.int32), per_row(top_p_B, jnp.float32)
    logits_BV = jnp.where(jnp.arange(V) < vocab_limit, logits_BV, -jnp.inf)
    # The filters need a full-vocabulary sort, the costliest op of a decode step on CPU (5 ms
    # for 16 rows × 2048 tokens, more than the model); with no row filtering, the filters would
    # keep every logit as it is, so skip them. (lax.cond runs one branch; under vmap it would
    # run both and select, which is still correct.)
    filtering = jnp.any(top_k_B1 > 0) | jnp.any(top_p_B1 < 1.0)
    logits_BV = jax.lax.cond(filtering, _filter, lambda x, *_: x, logits_BV, top_k_B1, top_p_B1)
    greedy_B = jnp.argmax(logits_BV, axis=-1)

    def sample() -> jax.Array:
        scaled_BV = logits_BV / jnp.maximum(temperature_B1, 1e-6)
        sampled_B = jax.vmap(jax.random.categorical)(keys_B, scaled_BV)
        return jnp.where(temperature_B1[:, 0] > 0, sampled_B, greedy_B)

    # All-greedy batches skip drawing random numbers for every logit.
    picked_B = jax.lax.cond(jnp.any(temperature_B1 > 0), sample, lambda: greedy_B)
    return picked_B.astype(jnp.int32)


def token_logprobs(
    logits_BV: jax.Array, token_B: jax.Array, vocab_limit: int, top: int
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Each row's log-probability of its token under the unfiltered softmax (temperature 1,
    padded ids excluded), and its `top` most likely ids with theirs: (logp_B, ids_BK, logp_BK)."""
    V = logits_BV.shape[-1]
    logp_BV = jax.nn.log_softmax(jnp.where(jnp.arange(V) < vocab_limit, logits_BV, -jnp.inf))
    chosen_B = jnp.take_along_axis(logp_BV, token_B[:, None], axis=-1)[:, 0]
    top_lp_BK, top_id_BK = jax.lax.top_k(logp_BV, min(top, vocab_limit))
    return chosen_B, top_id_BK, top_lp_BK
