"""Sampling during training: padded vocabulary rows are never produced; seeds reproduce."""

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxgpt.model import GPT, GPTConfig
from jaxgpt.sample import generate


def test_padded_vocab_rows_are_never_sampled():
    """With a table padded past the tokenizer (vocab_limit), samples stay below the limit even
    when the padded rows have the largest logits."""
    model = GPT(GPTConfig(vocab_size=64, block_size=16, n_layer=1, n_head=2, n_embd=16))
    params = nn.unbox(model.init(jax.random.key(0), jnp.zeros((1, 16), jnp.int32))["params"])
    # Make rows 40..63 of the tied embedding dominate every logit.
    table = params["wte"]["embedding"]
    params["wte"]["embedding"] = table.at[40:].set(table[40:] * 50.0)
    unlimited = generate(model, params, [1, 2], 12, jax.random.key(1), vocab_limit=0)
    assert max(unlimited) >= 40  # the setup really favours padded rows
    limited = generate(model, params, [1, 2], 12, jax.random.key(1), vocab_limit=40)
    assert len(limited) == 12 and max(limited) < 40


def test_same_seed_same_sample_and_prompt_is_cut_to_fit():
    model = GPT(GPTConfig(vocab_size=32, block_size=8, n_layer=1, n_head=2, n_embd=16))
    params = nn.unbox(model.init(jax.random.key(0), jnp.zeros((1, 8), jnp.int32))["params"])
    a = generate(model, params, list(range(20)), 5, jax.random.key(3), temperature=1.0)
    b = generate(model, params, list(range(20)), 5, jax.random.key(3), temperature=1.0)
    assert a == b and len(a) == 5 and all(0 <= t < 32 for t in a)
