"""Sampling from a trained model (full forward per token; used for samples during training)."""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxgpt.model import GPT


@functools.partial(jax.jit, static_argnames=("model", "n_new", "top_k", "vocab_limit"))
def _generate(
    params: Any,
    buffer_BT: jax.Array,
    start: jax.Array,
    rng: jax.Array,
    *,
    model: GPT,
    n_new: int,
    temperature: float,
    top_k: int,
    vocab_limit: int,
) -> jax.Array:
    def body(i, carry):
        buffer_BT, rng = carry
        pos = start + i
        logits_BTV = model.apply({"params": params}, buffer_BT, deterministic=True)
        logits_BV = jax.lax.dynamic_index_in_dim(logits_BTV, pos - 1, axis=1, keepdims=False)
        # Rows past the tokenizer's vocabulary only pad the embedding table: never sample them.
        logits_BV = jnp.where(jnp.arange(logits_BV.shape[-1]) < vocab_limit, logits_BV, -jnp.inf)
        if top_k > 0:
            kth = jax.lax.top_k(logits_BV, top_k)[0][:, -1:]
            logits_BV = jnp.where(logits_BV < kth, -jnp.inf, logits_BV)
        rng, step_rng = jax.random.split(rng)
        next_B = jax.random.categorical(step_rng, logits_BV / jnp.maximum(temperature, 1e-6))
        buffer_BT = jax.lax.dynamic_update_index_in_dim(buffer_BT, next_B[:, None], pos, axis=1)
        return buffer_BT, rng

    buffer_BT, _ = jax.lax.fori_loop(0, n_new, body, (buffer_BT, rng))
    return buffer_BT


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
    buffer = np.zeros((1, T), np.int32)
    buffer[0, : len(prompt)] = prompt
    out = _generate(
        params,
        jnp.asarray(buffer),
        jnp.asarray(len(prompt)),
        rng,
        model=model,
        n_new=n_new,
        temperature=temperature,
        top_k=top_k,
        vocab_limit=vocab_limit or model.config.vocab_size,
    )
    if not out.is_fully_addressable:  # multi-process: the result may live partly elsewhere
        from jax.experimental import multihost_utils

        out = multihost_utils.process_allgather(out, tiled=True)
    return np.asarray(out)[0, len(prompt) : len(prompt) + n_new].tolist()
