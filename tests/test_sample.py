"""Sampling during training: padded vocabulary rows are never produced; seeds reproduce;
the generate command's sampling goes past the context."""

from types import SimpleNamespace

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxgpt.decode.generate import generate, generate_batch
from jaxgpt.model import GPT, GPTConfig


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
    longer = generate(model, params, list(range(20)), 30, jax.random.key(3), temperature=1.0)
    assert len(longer) == 30  # past the context of 8: the window slides


def test_generate_command_samples_past_the_context():
    """--max_tokens beyond block_size gives that many tokens (no end-of-text in this vocab)."""
    from jaxgpt.data.tokenizer import train_tokenizer
    from jaxgpt.generate import parse_args, sample_texts

    tok = train_tokenizer(["abcdefgh ijk lmnop\n" * 50], 0, "char")
    model = GPT(GPTConfig(vocab_size=tok.vocab_size, block_size=16, n_layer=1, n_head=2, n_embd=16))
    params = nn.unbox(model.init(jax.random.key(0), jnp.zeros((1, 16), jnp.int32))["params"])
    run = SimpleNamespace(model=model, params=params, tokenizer=tok)
    args = parse_args(["--workdir", "unused", "--max_tokens", "50", "--temperature", "0"])
    (text,) = sample_texts(run, ["abc"], args)
    (ids,) = generate_batch(
        model, params, [tok.encode("abc")], 50, jax.random.key(0), temperature=0.0,
        vocab_limit=tok.vocab_size, eot_id=tok.eot_id,
    )  # fmt: skip
    assert text == tok.decode([t for t in ids if t != tok.eot_id])
    assert len(ids) == 50 or ids[-1] == tok.eot_id
    assert len(ids) > 16, ids  # this seed's greedy text runs past the context of 16
