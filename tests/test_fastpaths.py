"""Every fast path computes the plain path's function: same params, same batch, same loss and
gradients (float32: tight tolerances; bfloat16 compute: loose ones, justified where used)."""

from __future__ import annotations

import dataclasses
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxgpt.loss import chunked_cross_entropy
from jaxgpt.model import GPT, GPTConfig
from jaxgpt.sharding import MeshConfig, make_mesh
from jaxgpt.state import TrainState, make_trainer, next_token_loss, train_step

BASE = GPTConfig(vocab_size=97, block_size=16, n_layer=2, n_head=4, n_embd=32)
RULES = (("batch", "data"),)


def cfg(**overrides) -> GPTConfig:
    return dataclasses.replace(BASE, **overrides)


@functools.cache
def init_params(config: GPTConfig):
    tokens = jnp.zeros((1, config.block_size), jnp.int32)
    return nn.unbox(jax.jit(GPT(config).init)(jax.random.key(0), tokens)["params"])


def batch(config: GPTConfig, rows: int = 4, masked: bool = False, seed: int = 1) -> jax.Array:
    """[rows, T+1] tokens; with masked=True about half the targets are -(t+1) (weight 0)."""
    rng = np.random.default_rng(seed)
    tokens = rng.integers(0, config.vocab_size, (rows, config.block_size + 1))
    if masked:
        keep = rng.random(tokens.shape) < 0.5
        keep[:, 0] = True
        tokens = np.where(keep, tokens, -tokens - 1)
    return jnp.asarray(tokens, jnp.int32)


@functools.cache
def _loss_and_grad(config: GPTConfig):
    model = GPT(config)
    return jax.jit(jax.value_and_grad(lambda p, b: next_token_loss(p, model, b, None)))


def loss_and_grad(config: GPTConfig, params, tokens):
    return _loss_and_grad(config)(params, tokens)


def stack_layers(params, n_layer: int):
    """Unrolled layout h_0..h_{L-1} → the scanned layout h/block with a leading [L] axis."""
    layers = [params[f"h_{i}"] for i in range(n_layer)]
    rest = {k: v for k, v in params.items() if not k.startswith("h_")}
    return {**rest, "h": {"block": jax.tree.map(lambda *xs: jnp.stack(xs), *layers)}}


def assert_trees_close(a, b, atol: float, rtol: float) -> None:
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for (path, x), y in zip(
        jax.tree_util.tree_leaves_with_path(a), jax.tree.leaves(b), strict=True
    ):
        np.testing.assert_allclose(
            np.asarray(x), np.asarray(y), atol=atol, rtol=rtol, err_msg=jax.tree_util.keystr(path)
        )


def assert_relative_norms(a, b, limit: float) -> None:
    """‖a − b‖ / ‖b‖ < limit for every leaf: a tolerance for low-precision arithmetic."""
    for (path, x), y in zip(
        jax.tree_util.tree_leaves_with_path(a), jax.tree.leaves(b), strict=True
    ):
        err = float(jnp.linalg.norm(x - y) / (jnp.linalg.norm(y) + 1e-12))
        assert err < limit, f"{jax.tree_util.keystr(path)}: relative error {err:.4f}"


@functools.cache
def plain_reference(masked: bool = False):
    params = init_params(BASE)
    tokens = batch(BASE, masked=masked)
    loss, grads = loss_and_grad(BASE, params, tokens)
    return params, tokens, loss, grads


@pytest.mark.parametrize(
    "variant",
    [
        dict(remat="full"),
        dict(remat="dots"),
        dict(remat="names", remat_names=("qkv", "attn_out", "mlp_gelu")),
        # The plain path on CPU is "auto" = the written-out einsum form.
        dict(attention="xla"),
        dict(loss_chunk=4),
    ],
    ids=lambda v: ",".join(f"{k}={val}" for k, val in v.items()),
)
def test_fast_path_matches_plain_loss_and_gradients(variant):
    """float32 fast paths (remat policies, attention implementations, chunked loss) give the
    plain path's loss and gradients to float32 rounding."""
    assert BASE.remat == "none" and BASE.attention == "auto" and BASE.loss_chunk == 0
    params, tokens, loss, grads = plain_reference()
    got_loss, got_grads = loss_and_grad(cfg(**variant), params, tokens)
    np.testing.assert_allclose(got_loss, loss, rtol=1e-6)
    assert_trees_close(got_grads, grads, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("remat", ["none", "full"])
def test_scan_over_layers_matches_unrolled(remat):
    """scan_layers=True on the same weights (restacked) gives the unrolled loss and gradients."""
    params, tokens, loss, grads = plain_reference()
    config = cfg(scan_layers=True, remat=remat)
    stacked = stack_layers(params, BASE.n_layer)
    # The converted weights have exactly the layout the scanned model initializes itself.
    shapes = jax.eval_shape(
        lambda: GPT(config).init(jax.random.key(0), jnp.zeros((1, 16), jnp.int32))["params"]
    )
    assert jax.tree.map(jnp.shape, nn.unbox(shapes)) == jax.tree.map(jnp.shape, stacked)
    got_loss, got_grads = loss_and_grad(config, stacked, tokens)
    np.testing.assert_allclose(got_loss, loss, rtol=1e-6)
    assert_trees_close(got_grads, stack_layers(grads, BASE.n_layer), atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("chunk", [5, 64])
def test_chunked_loss_with_weights(chunk):
    """Loss weights (-(t+1) targets) and the explicit denominator survive chunking, for chunks
    that divide T, that do not (padded tail), and that exceed it."""
    params, tokens, loss, grads = plain_reference(masked=True)
    got_loss, got_grads = loss_and_grad(cfg(loss_chunk=chunk), params, tokens)
    np.testing.assert_allclose(got_loss, loss, rtol=1e-6)
    assert_trees_close(got_grads, grads, atol=1e-6, rtol=1e-5)
    # The denominator is honoured as given (train_step passes the whole batch's count).
    model, plain = GPT(cfg(loss_chunk=chunk)), GPT(BASE)
    d = jnp.float32(1000.0)
    np.testing.assert_allclose(
        next_token_loss(params, model, tokens, None, d),
        next_token_loss(params, plain, tokens, None, d),
        rtol=1e-6,
    )


def test_chunked_cross_entropy_against_direct_formula():
    """The loss module alone: Σ CE·w of hidden·embᵀ computed whole, by a different route."""
    rng = np.random.default_rng(0)
    h = jnp.asarray(rng.normal(size=(3, 10, 8)), jnp.float32)
    emb = jnp.asarray(rng.normal(size=(11, 8)), jnp.float32)
    targets = jnp.asarray(rng.integers(0, 11, (3, 10)))
    weights = jnp.asarray(rng.random((3, 10)) < 0.7, jnp.float32)
    logits = np.asarray(h) @ np.asarray(emb).T
    logz = np.log(np.exp(logits).sum(-1))
    picked = np.take_along_axis(logits, np.asarray(targets)[..., None], -1)[..., 0]
    expected = ((logz - picked) * np.asarray(weights)).sum()
    for chunk in (1, 3, 10):
        got = chunked_cross_entropy(h, emb, targets, weights, chunk)
        np.testing.assert_allclose(got, expected, rtol=1e-5)


def test_chunked_loss_with_microbatches():
    """A train step with 2 microbatches and chunked loss equals the plain 1-microbatch step."""
    params = init_params(BASE)
    tokens = batch(BASE, rows=4, masked=True)
    tx = optax.sgd(0.1)
    state = TrainState.fresh(params, tx.init(params))
    kw = dict(tx=tx, schedule=optax.constant_schedule(0.1), dropout=False)
    s1, m1 = jax.jit(functools.partial(train_step, model=GPT(BASE), microbatches=1, **kw))(
        state, tokens, jax.random.key(0)
    )
    chunked = GPT(cfg(loss_chunk=6))
    s2, m2 = jax.jit(functools.partial(train_step, model=chunked, microbatches=2, **kw))(
        state, tokens, jax.random.key(0)
    )
    np.testing.assert_allclose(m2["loss"], m1["loss"], rtol=1e-5)
    np.testing.assert_allclose(m2["grad_norm"], m1["grad_norm"], rtol=1e-5)
    assert_trees_close(s2.params, s1.params, atol=1e-6, rtol=1e-5)


def _grad_temp_bytes(config: GPTConfig, rows: int) -> int:
    model = GPT(config)
    params = jax.eval_shape(lambda: init_params(dataclasses.replace(config, loss_chunk=0)))
    tokens = jax.ShapeDtypeStruct((rows, config.block_size + 1), jnp.int32)
    grad = jax.jit(jax.grad(lambda p, b: next_token_loss(p, model, b, None)))
    return grad.lower(params, tokens).compile().memory_analysis().temp_size_in_bytes


def test_chunked_loss_never_holds_the_whole_logits():
    """XLA's own memory plan: chunking drops the [B, T, V] float32 logits (and their gradient)
    from the gradient computation's temporaries."""
    big_vocab = cfg(vocab_size=8192, block_size=64, n_layer=1, n_embd=32, n_head=2)
    rows = 8
    logits_bytes = rows * big_vocab.block_size * big_vocab.vocab_size * 4  # 16.8 MB
    plain = _grad_temp_bytes(big_vocab, rows)
    chunked = _grad_temp_bytes(dataclasses.replace(big_vocab, loss_chunk=8), rows)
    assert plain > logits_bytes  # the plain path really does hold them
    assert chunked < logits_bytes / 2, (plain, chunked)


def test_bfloat16_compute_with_float32_master_weights():
    """dtype=bfloat16 keeps float32 weights and float32 gradients, and stays near float32.

    Tolerances: bfloat16 keeps 8 significant bits (relative rounding 2^-9 ≈ 0.2%); over two
    layers of matmuls, LayerNorms and a 97-way softmax the loss (≈ ln 97 = 4.6) moves by
    ~1e-3 and each gradient tensor by a few percent of its norm, so the checks are 1e-2 on the
    loss and 10% of each gradient's norm, far below what a wrong formula gives (≥ 100%).
    """
    params, tokens, loss, grads = plain_reference()
    config = cfg(dtype="bfloat16")
    got_loss, got_grads = loss_and_grad(config, params, tokens)
    assert got_loss.dtype == jnp.float32
    assert all(g.dtype == jnp.float32 for g in jax.tree.leaves(got_grads))
    np.testing.assert_allclose(got_loss, loss, atol=1e-2)
    assert got_loss != loss  # it did compute in bfloat16
    assert_relative_norms(got_grads, grads, 0.1)


def test_bfloat16_chunked_loss_matches_bfloat16_plain():
    """In bfloat16, the chunked loss makes its logits exactly as the plain path does, so the
    loss agrees to float32 rounding. The gradients differ slightly, in the chunked path's
    favour: the plain path's wte gradient of the output projection is one bfloat16 matmul over
    all B·T positions, the chunked one adds per-chunk bfloat16 products in float32. Hence 2% of
    each gradient's norm (bfloat16's rounding is 0.4%; a wrong formula is off by ≥ 100%)."""
    params, tokens, _, _ = plain_reference(masked=True)
    loss, grads = loss_and_grad(cfg(dtype="bfloat16"), params, tokens)
    got_loss, got_grads = loss_and_grad(cfg(dtype="bfloat16", loss_chunk=5), params, tokens)
    np.testing.assert_allclose(got_loss, loss, rtol=1e-5)
    assert_relative_norms(got_grads, grads, 0.02)


def test_cudnn_attention_off_gpu_fails_clearly():
    """attention=cudnn on CPU is refused at trace time with the fix, not a cuDNN error."""
    params, tokens, _, _ = plain_reference()
    with pytest.raises(ValueError, match=r"model\.attention='cudnn'.*needs an NVIDIA GPU"):
        loss_and_grad(cfg(dtype="bfloat16", attention="cudnn"), params, tokens)


def test_unknown_remat_name_fails_naming_the_key():
    with pytest.raises(ValueError, match=r"model\.remat_names.*'mlp'"):
        cfg(remat="names", remat_names=("qkv", "mlp"))
    # A comma-separated string (a command-line override) is accepted.
    assert cfg(remat_names="qkv, mlp_fc").remat_names == ("qkv", "mlp_fc")


def test_train_step_donates_every_state_buffer():
    """make_trainer's step donates the old state: all its buffers are deleted after a step."""
    devices = jax.devices()[:2]
    mesh = make_mesh(MeshConfig(2, 1, 1, RULES), devices)
    opt = optax.adamw(1e-3)
    trainer = make_trainer(GPT(BASE), opt, optax.constant_schedule(1e-3), mesh, RULES)
    state = trainer.init(jax.random.key(0))
    tokens = jax.device_put(batch(BASE), trainer.batch_sharding)
    old_leaves = jax.tree.leaves(state)
    new_state, metrics = trainer.step(state, tokens, jax.random.key(1))
    jax.block_until_ready(metrics)
    assert all(leaf.is_deleted() for leaf in old_leaves)
    assert not any(leaf.is_deleted() for leaf in jax.tree.leaves(new_state))
    assert not tokens.is_deleted()  # the batch is not donated: the loop may still hold it
