"""Sampling with a KV cache: one prefill over the (right-aligned) prompts, then one jitted
decode step per token; greedy, temperature, top-k and top-p; stops rows at end-of-text."""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxgpt.model import GPT, init_cache


def unscan_params(params: Any, model: GPT) -> tuple[Any, GPT]:
    """Scanned-layer params as h_0..h_{L-1}, with the matching unrolled model (for decoding)."""
    if not model.config.scan_layers:
        return params, model
    stacked = params["h"]["block"]
    unrolled = {k: v for k, v in params.items() if k != "h"}
    for i in range(model.config.n_layer):
        unrolled[f"h_{i}"] = jax.tree.map(lambda x, i=i: x[i], stacked)
    cfg = dataclasses.replace(model.config, scan_layers=False, remat="none")
    return unrolled, GPT(cfg)


def row_keys(rng: jax.Array, n: int) -> jax.Array:
    """One key per batch row: row i draws from fold_in(rng, i), so a row's samples depend only
    on (seed, i), never on which other rows share its batch."""
    return jax.vmap(lambda i: jax.random.fold_in(rng, i))(jnp.arange(n))


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
    logits_BV = jnp.where((logits_BV < kth_B1) | (logits_BV < cutoff_B1), -jnp.inf, logits_BV)
    greedy_B = jnp.argmax(logits_BV, axis=-1)
    scaled_BV = logits_BV / jnp.maximum(temperature_B1, 1e-6)
    sampled_B = jax.vmap(jax.random.categorical)(keys_B, scaled_BV)
    return jnp.where(temperature_B1[:, 0] > 0, sampled_B, greedy_B).astype(jnp.int32)


def step_keys(keys_B: jax.Array, t: int | jax.Array) -> jax.Array:
    """The keys rows draw their t-th new token with (t = 0 for the token after the prompt)."""
    return jax.vmap(lambda k: jax.random.fold_in(k, t))(keys_B)


@functools.partial(jax.jit, static_argnames=("model", "n_new", "vocab_limit"))
def _decode(params, prompt_BT, pad_B, keys_B, temperature_B, top_k_B, top_p_B, eot_id, *, model,
            n_new, vocab_limit):  # fmt: skip
    caches = init_cache(model.config, prompt_BT.shape[0], pad_B)
    logits_BTV, caches = model.apply({"params": params}, prompt_BT, caches=caches)
    pick = functools.partial(
        pick_tokens,
        temperature_B=temperature_B,
        top_k_B=top_k_B,
        top_p_B=top_p_B,
        vocab_limit=vocab_limit,
    )
    token_B = pick(logits_BTV[:, -1], step_keys(keys_B, 0))
    done_B = token_B == eot_id

    def step(carry, t):
        token_B, done_B, caches = carry
        logits_B1V, caches = model.apply({"params": params}, token_B[:, None], caches=caches)
        nxt_B = jnp.where(done_B, eot_id, pick(logits_B1V[:, 0], step_keys(keys_B, t)))
        return (nxt_B, done_B | (nxt_B == eot_id), caches), nxt_B

    _, rest_NB = jax.lax.scan(step, (token_B, done_B, caches), jnp.arange(1, n_new))
    return jnp.concatenate([token_B[None], rest_NB], axis=0).T


def generate_batch(
    model: GPT,
    params: Any,
    prompts: list[list[int]],
    n_new: int,
    rng: jax.Array,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    vocab_limit: int = 0,
    eot_id: int = -1,
) -> list[list[int]]:
    """Continue each prompt by up to n_new tokens (cut after end-of-text when eot_id >= 0).

    Prompts of different lengths are right-aligned in one batch; the pad positions are masked
    and position ids start at each prompt's first token, so every row matches decoding alone.
    Row i samples with the keys of `row_keys(rng, n)[i]`, so its text depends on (rng, i) and
    the settings only, not on the other rows.
    """
    params, model = unscan_params(params, model)
    T = model.config.block_size
    longest = max(map(len, prompts))
    if not all(prompts):
        raise ValueError("every prompt needs at least one token (use the end-of-text id)")
    if longest + n_new > T:
        raise ValueError(
            f"prompt ({longest} tokens) + max_tokens ({n_new}) exceeds the model's context of "
            f"{T} tokens; shorten the prompt or ask for fewer tokens"
        )
    buffer = np.zeros((len(prompts), longest), np.int32)
    pad = np.array([longest - len(p) for p in prompts], np.int32)
    for row, prompt in enumerate(prompts):
        buffer[row, pad[row] :] = prompt
    out = _decode(
        params, jnp.asarray(buffer), jnp.asarray(pad), row_keys(rng, len(prompts)),
        jnp.float32(temperature), jnp.int32(top_k), jnp.float32(top_p), jnp.int32(eot_id),
        model=model, n_new=n_new, vocab_limit=vocab_limit or model.config.vocab_size,
    )  # fmt: skip
    if not out.is_fully_addressable:  # multi-process: the result may live partly elsewhere
        from jax.experimental import multihost_utils

        out = multihost_utils.process_allgather(out, tiled=True)
    rows = np.asarray(out).tolist()
    if eot_id >= 0:
        rows = [r[: r.index(eot_id) + 1] if eot_id in r else r for r in rows]
    return rows


def generate(
    model: GPT,
    params: Any,
    prompt: list[int],
    n_new: int,
    rng: jax.Array,
    temperature: float = 1.0,
    top_k: int = 0,
    vocab_limit: int = 0,
) -> list[int]:
    """Continue one prompt by n_new tokens; the prompt is cut from the left to fit the context.

    Tokens at or past vocab_limit (the tokenizer's size, when the model's table is padded) are
    never sampled; 0 means no limit.
    """
    T = model.config.block_size
    n_new = min(n_new, T - 1)
    prompt = prompt[-(T - n_new) :] if prompt else [0]
    return generate_batch(
        model, params, [prompt], n_new, rng, temperature, top_k, vocab_limit=vocab_limit
    )[0]
