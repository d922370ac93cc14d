"""Sampling with a KV cache: one prefill over the (right-aligned) prompts, then one jitted
decode step per token; greedy, temperature, top-k and top-p; stops rows at end-of-text.
Generation may run past the context: when the cache is full the rows slide to a window of their
latest tokens (see window_size)."""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxgpt.model import GPT, GPTConfig, init_cache


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


def step_keys(keys_B: jax.Array, t: int | jax.Array) -> jax.Array:
    """The keys rows draw their t-th new token with (t = 0 for the token after the prompt)."""
    return jax.vmap(lambda k: jax.random.fold_in(k, t))(keys_B)


def window_size(block_size: int) -> int:
    """Tokens a row keeps when its cache is full and generation goes on: half the context.

    Each slide re-runs the model over the kept tokens (one prefill), then decodes block_size − W
    tokens one by one before the next. Half keeps at least half a context of history in view
    while the re-prefill costs about one token's forward per generated token, spread out.
    """
    return max(block_size // 2, 1)


def _cache_len(config: GPTConfig, longest: int, n_new: int) -> int:
    """Cache positions a call needs: the prompt and the tokens fed back, at most the context.

    A shorter buffer makes every decode step cheaper: attention reads the whole buffer.
    """
    return min(config.block_size, longest + max(n_new - 1, 0))


@functools.partial(jax.jit, static_argnames=("model", "n_new", "vocab_limit", "cache_len"))
def _decode(params, prompt_BP, pad_B, keys_B, temperature_B, top_k_B, top_p_B, eot_id, *, model,
            n_new, vocab_limit, cache_len):  # fmt: skip
    # init_cache sizes its buffers by block_size; the model itself keeps its full config.
    cache_cfg = dataclasses.replace(model.config, block_size=cache_len)
    B, P = prompt_BP.shape
    S, W = cache_len, window_size(model.config.block_size)
    apply = lambda tokens_BT, caches: model.apply({"params": params}, tokens_BT, caches=caches)
    logits_BPV, caches = apply(prompt_BP, init_cache(cache_cfg, B, pad_B))
    pick = functools.partial(
        pick_tokens,
        temperature_B=temperature_B,
        top_k_B=top_k_B,
        top_p_B=top_p_B,
        vocab_limit=vocab_limit,
    )
    token_B = pick(logits_BPV[:, -1], step_keys(keys_B, 0))
    done_B = token_B == eot_id
    # Past the context the sampler re-reads the kept tokens, so it keeps the ids it fed.
    slides = P + n_new - 1 > S
    ids_BS = jnp.zeros((B, S), jnp.int32).at[:, :P].set(prompt_BP) if slides else None

    def advance(token_B, caches, ids_BS):
        index = caches[0].index
        logits_B1V, caches = apply(token_B[:, None], caches)
        if slides:
            ids_BS = jax.lax.dynamic_update_slice(ids_BS, token_B[:, None], (0, index))
        return logits_B1V[:, 0], caches, ids_BS

    def slide(token_B, caches, ids_BS):
        # The cache is full: every row keeps its last W tokens (this one included, fewer if the
        # row is shorter) right-aligned at the start of a fresh cache, and the model re-reads
        # them, so their positions start again at 0 as in a forward pass over the window.
        kept_BW = jnp.concatenate([ids_BS[:, S - W + 1 :], token_B[:, None]], axis=1)
        pad_B = jnp.maximum(caches[0].pad_B - (S - W + 1), 0)
        logits_BWV, caches = apply(kept_BW, init_cache(cache_cfg, B, pad_B))
        return logits_BWV[:, -1], caches, jnp.zeros_like(ids_BS).at[:, :W].set(kept_BW)

    def step(carry, t):
        token_B, done_B, caches, ids_BS = carry
        if slides:
            full = caches[0].index == S
            logits_BV, caches, ids_BS = jax.lax.cond(full, slide, advance, token_B, caches, ids_BS)
        else:
            logits_BV, caches, ids_BS = advance(token_B, caches, ids_BS)
        nxt_B = jnp.where(done_B, eot_id, pick(logits_BV, step_keys(keys_B, t)))
        return (nxt_B, done_B | (nxt_B == eot_id), caches, ids_BS), nxt_B

    carry = (token_B, done_B, caches, ids_BS)
    _, rest_NB = jax.lax.scan(step, carry, jnp.arange(1, n_new))
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

    Prompts may fill the context (block_size tokens); n_new may go past it. When the cache is
    full, every row keeps its last `window_size(block_size)` tokens, the model re-reads them and
    decoding goes on. Rows share one cache, so they slide together, when the longest row is
    full: past the context, a shorter row's text can depend on the longest prompt in its batch
    (within the context, and for prompts of equal length, it never does).
    """
    params, model = unscan_params(params, model)
    T = model.config.block_size
    if not prompts or not all(prompts):
        raise ValueError("every prompt needs at least one token (use the end-of-text id)")
    longest = max(map(len, prompts))
    if longest > T:
        raise ValueError(
            f"prompt ({longest} tokens) exceeds the model's context of {T} tokens: a prompt may "
            f"be at most {T} tokens (generation may run past the context); shorten the prompt"
        )
    buffer = np.zeros((len(prompts), longest), np.int32)
    pad = np.array([longest - len(p) for p in prompts], np.int32)
    for row, prompt in enumerate(prompts):
        buffer[row, pad[row] :] = prompt
    out = _decode(
        params, jnp.asarray(buffer), jnp.asarray(pad), row_keys(rng, len(prompts)),
        jnp.float32(temperature), jnp.int32(top_k), jnp.float32(top_p), jnp.int32(eot_id),
        model=model, n_new=n_new, vocab_limit=vocab_limit or model.config.vocab_size,
        cache_len=_cache_len(model.config, longest, n_new),
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
    """Continue one prompt by n_new tokens; the prompt is cut from the left to fit the context,
    and generation slides past it as generate_batch does.

    Tokens at or past vocab_limit (the tokenizer's size, when the model's table is padded) are
    never sampled; 0 means no limit.
    """
    prompt = prompt[-model.config.block_size :] if prompt else [0]
    return generate_batch(
        model, params, [prompt], n_new, rng, temperature, top_k, vocab_limit=vocab_limit
    )[0]
