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


def _pick(logits_BV, rng, temperature, top_k: int, top_p: float, vocab_limit: int):
    """Next token per row: argmax at temperature 0, else a sample from the filtered softmax."""
    V = logits_BV.shape[-1]
    logits_BV = jnp.where(jnp.arange(V) < vocab_limit, logits_BV, -jnp.inf)  # padded rows
    if top_k > 0:
        kth = jax.lax.top_k(logits_BV, top_k)[0][:, -1:]
        logits_BV = jnp.where(logits_BV < kth, -jnp.inf, logits_BV)
    # top-p (traced, so always applied; top_p=1 keeps everything): keep the smallest set of
    # tokens whose probability mass reaches top_p, always at least the best one.
    sorted_BV = jnp.sort(logits_BV, axis=-1)[:, ::-1]
    cum_BV = jnp.cumsum(jax.nn.softmax(sorted_BV, axis=-1), axis=-1)
    last = jnp.minimum(jnp.sum(cum_BV < top_p, axis=-1, keepdims=True), V - 1)
    cutoff_B = jnp.where(top_p >= 1.0, -jnp.inf, jnp.take_along_axis(sorted_BV, last, axis=-1))
    logits_BV = jnp.where(logits_BV < cutoff_B, -jnp.inf, logits_BV)
    greedy_B = jnp.argmax(logits_BV, axis=-1)
    sampled_B = jax.random.categorical(rng, logits_BV / jnp.maximum(temperature, 1e-6))
    return jnp.where(temperature > 0, sampled_B, greedy_B).astype(jnp.int32)


@functools.partial(jax.jit, static_argnames=("model", "n_new", "top_k", "vocab_limit"))
def _decode(params, prompt_BT, pad_B, rng, temperature, top_p, eot_id, *, model, n_new, top_k,
            vocab_limit):  # fmt: skip
    caches = init_cache(model.config, prompt_BT.shape[0], pad_B)
    logits_BTV, caches = model.apply({"params": params}, prompt_BT, caches=caches)
    pick = functools.partial(
        _pick, temperature=temperature, top_k=top_k, top_p=top_p, vocab_limit=vocab_limit
    )
    rng, first_rng = jax.random.split(rng)
    token_B = pick(logits_BTV[:, -1], first_rng)
    done_B = token_B == eot_id

    def step(carry, _):
        token_B, done_B, caches, rng = carry
        logits_B1V, caches = model.apply({"params": params}, token_B[:, None], caches=caches)
        rng, step_rng = jax.random.split(rng)
        nxt_B = jnp.where(done_B, eot_id, pick(logits_B1V[:, 0], step_rng))
        return (nxt_B, done_B | (nxt_B == eot_id), caches, rng), nxt_B

    _, rest_NB = jax.lax.scan(step, (token_B, done_B, caches, rng), None, length=n_new - 1)
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
        params, jnp.asarray(buffer), jnp.asarray(pad), rng, jnp.float32(temperature),
        jnp.float32(top_p), jnp.int32(eot_id), model=model, n_new=n_new, top_k=top_k,
        vocab_limit=vocab_limit or model.config.vocab_size,
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
