"""Supervised fine-tuning: masked targets carry no loss and no gradient; the data path; a run
that learns a planted prompt → completion mapping."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxgpt.model import GPT, GPTConfig
from jaxgpt.state import TrainState, next_token_loss, split_targets, train_step

CFG = GPTConfig(vocab_size=50, block_size=12, n_layer=2, n_head=2, n_embd=16)


def masked(tokens: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Targets where mask is False become -(t+1): not trained on."""
    return np.where(mask, tokens, -tokens - 1).astype(np.int32)


def setup():
    model = GPT(CFG)
    params = nn.unbox(model.init(jax.random.key(0), jnp.zeros((1, 12), jnp.int32))["params"])
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, CFG.vocab_size, (4, 13))
    mask = rng.random((4, 13)) < 0.5
    mask[:, -1] = False  # every row's last target is a prompt/pad token
    return model, params, tokens, mask


def test_split_targets_decodes_the_sign():
    _, _, tokens, mask = setup()
    inputs, targets, weights = map(np.asarray, split_targets(jnp.asarray(masked(tokens, mask))))
    np.testing.assert_array_equal(inputs, tokens[:, :-1])
    np.testing.assert_array_equal(targets, tokens[:, 1:])
    np.testing.assert_array_equal(weights, mask[:, 1:].astype(np.float32))


def test_masked_targets_get_zero_loss_and_zero_gradient():
    model, params, tokens, mask = setup()
    batch = masked(tokens, mask)
    loss = next_token_loss(params, model, jnp.asarray(batch), None)
    logits = model.apply({"params": params}, jnp.asarray(tokens[:, :-1]))
    ce = np.asarray(optax.softmax_cross_entropy_with_integer_labels(logits, tokens[:, 1:]))
    np.testing.assert_allclose(loss, ce[mask[:, 1:]].mean(), rtol=1e-6)
    # The last position is only ever a target: if it is masked, what it holds cannot matter.
    other = tokens.copy()
    other[:, -1] = (other[:, -1] + 7) % CFG.vocab_size
    grad = jax.grad(next_token_loss)
    g1 = grad(params, model, jnp.asarray(batch), None)
    g2 = grad(params, model, jnp.asarray(masked(other, mask)), None)
    jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)), g1, g2)
    # ...while an unmasked last target does change the gradient.
    unmasked = mask.copy()
    unmasked[:, -1] = True
    g3 = grad(params, model, jnp.asarray(masked(tokens, unmasked)), None)
    g4 = grad(params, model, jnp.asarray(masked(other, unmasked)), None)
    assert not np.allclose(np.asarray(g3["wte"]["embedding"]), np.asarray(g4["wte"]["embedding"]))


def test_microbatches_average_over_all_targets_of_the_batch():
    """Rows with very different numbers of targets: 2 microbatches give the 1-microbatch step."""
    model, params, tokens, mask = setup()
    mask[0, 1:] = True  # row 0: all targets; row 1: one target; others random
    mask[1, 1:] = False
    mask[1, 5] = True
    batch = jnp.asarray(masked(tokens, mask))
    tx = optax.sgd(0.1)
    state = TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params))
    kw = dict(model=model, tx=tx, schedule=optax.constant_schedule(0.1), dropout=False)
    s1, m1 = train_step(state, batch, jax.random.key(0), microbatches=1, **kw)
    s2, m2 = train_step(state, batch, jax.random.key(0), microbatches=2, **kw)
    np.testing.assert_allclose(m1["loss"], m2["loss"], rtol=1e-5)
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-6),
        s1.params,
        s2.params,
    )
