"""Batched generation with a KV cache: one prefill over the prompts, then a jitted loop of
one-token decode steps; greedy, temperature, top-k and top-p; stops rows at end-of-text.

Generation may run past the context: when the longest row's cache is full, every row slides to
its window of latest tokens (window.slide) and decoding goes on in a fresh cache.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxgpt.config.model import GPTConfig
from jaxgpt.decode.cache import init_cache, set_lengths
from jaxgpt.decode.sampling import pick_tokens, row_keys, step_keys
from jaxgpt.decode.window import slide
from jaxgpt.model import GPT


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


def _cache_len(config: GPTConfig, longest: int, n_new: int) -> int:
    """Cache positions a call needs: the prompt and the tokens fed back, at most the context.

    A shorter buffer makes every decode step cheaper: attention reads the whole buffer.
    """
    return min(config.block_size, longest + max(n_new - 1, 0))


@functools.partial(jax.jit, static_argnames=("model", "vocab_limit", "cache_len", "max_steps"))
def _segment(params, prompt_BP, len_B, keys_B, t0, n_steps, done_B, settings, *, model,
             vocab_limit, cache_len, max_steps):  # fmt: skip
    """Prefill left-aligned prompts (row b: its first len_B[b] tokens) into a fresh cache, draw
    each row's next token with step key t0, then feed tokens back and draw n_steps <= max_steps
    more. Returns tokens [B, 1 + max_steps] (the first 1 + n_steps drawn) and the rows done: a
    row that drew end-of-text (here or before: done_B) draws it from then on."""
    temperature, top_k, top_p, eot_id = settings
    B = prompt_BP.shape[0]
    apply = lambda tokens_BT, caches: model.apply({"params": params}, tokens_BT, caches=caches)
    last_BV, caches = model.apply(
        {"params": params}, prompt_BP, init_cache(model.config, B, cache_len), len_B - 1,
        method=GPT.last_logits,
    )  # fmt: skip
    caches = set_lengths(caches, len_B)

    def draw(logits_BV, done_B, t):
        picked_B = pick_tokens(logits_BV, step_keys(keys_B, t), temperature, top_k, top_p,
                               vocab_limit)  # fmt: skip
        token_B = jnp.where(done_B, eot_id, picked_B)
        return token_B, done_B | (token_B == eot_id)

    token_B, done_B = draw(last_BV, done_B, t0)
    out_NB = jnp.zeros((1 + max_steps, B), jnp.int32).at[0].set(token_B)

    def step(i, carry):
        token_B, done_B, caches, out_NB = carry
        logits_B1V, caches = apply(token_B[:, None], caches)
        token_B, done_B = draw(logits_B1V[:, 0], done_B, t0 + i)
        return token_B, done_B, caches, out_NB.at[i].set(token_B)

    carry = jax.lax.fori_loop(1, 1 + n_steps, step, (token_B, done_B, caches, out_NB))
    return carry[3].T, carry[1]


def _on_host(x: jax.Array) -> np.ndarray:
    if not x.is_fully_addressable:  # multi-process: the result may live partly elsewhere
        from jax.experimental import multihost_utils

        x = multihost_utils.process_allgather(x, tiled=True)
    return np.asarray(x)


def _left_aligned(rows: list[list[int]]) -> tuple[np.ndarray, np.ndarray]:
    """Rows as one [B, longest] buffer (zeros after each row) and their lengths."""
    lens = np.array([len(r) for r in rows], np.int32)
    buffer = np.zeros((len(rows), lens.max()), np.int32)
    for i, row in enumerate(rows):
        buffer[i, : len(row)] = row
    return buffer, lens


def _check_prompts(prompts: list[list[int]], block_size: int) -> None:
    if not prompts or not all(prompts):
        raise ValueError("every prompt needs at least one token (use the end-of-text id)")
    longest = max(map(len, prompts))
    if longest > block_size:
        T = block_size
        raise ValueError(
            f"prompt ({longest} tokens) exceeds the model's context of {T} tokens: a prompt may "
            f"be at most {T} tokens (generation may run past the context); shorten the prompt"
        )


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

    Prompts of different lengths share one batch, each at the start of its cache row with its
    own positions, so every row matches decoding alone. Row i samples with the keys of
    `row_keys(rng, n)[i]`, so its text depends on (rng, i) and the settings only, not on the
    other rows.

    Prompts may fill the context (block_size tokens); n_new may go past it. When the longest
    row's cache is full, every row slides (window.slide: it keeps its last
    `window_size(block_size)` tokens, which the model re-reads) and decoding goes on. Rows
    slide together, so past the context a shorter row's text can depend on the longest prompt
    in its batch (within the context, and for prompts of equal length, it never does).
    """
    params, model = unscan_params(params, model)
    T = model.config.block_size
    _check_prompts(prompts, T)
    if n_new < 1:
        return [[] for _ in prompts]
    cache_len = _cache_len(model.config, max(map(len, prompts)), n_new)
    keys_B = row_keys(rng, len(prompts))
    settings = (jnp.float32(temperature), jnp.int32(top_k), jnp.float32(top_p), jnp.int32(eot_id))
    run = functools.partial(
        _segment, params, keys_B=keys_B, settings=settings, model=model,
        vocab_limit=vocab_limit or model.config.vocab_size, cache_len=cache_len,
    )  # fmt: skip
    texts = [list(p) for p in prompts]  # each row's prompt and drawn tokens
    inputs, drawn, done_B = prompts, 0, jnp.zeros((len(prompts),), bool)
    while True:
        prompt_BP, len_B = _left_aligned(inputs)
        # The first token, then one per free cache position of the longest row.
        room = cache_len - prompt_BP.shape[1]
        n_steps = min(n_new - 1 - drawn, room)
        out_BN, done_B = run(prompt_BP, len_B, t0=jnp.int32(drawn), n_steps=jnp.int32(n_steps),
                             done_B=done_B, max_steps=min(n_new - 1, room))  # fmt: skip
        for text, row in zip(texts, _on_host(out_BN)[:, : 1 + n_steps].tolist(), strict=True):
            text.extend(row)
        drawn += 1 + n_steps
        if drawn == n_new or (eot_id >= 0 and bool(_on_host(done_B).all())):
            break
        inputs = [slide(text, T) for text in texts]  # the longest row's cache is full
    rows = [text[len(p) :] for text, p in zip(texts, prompts, strict=True)]
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
