"""Tests for jaxgpt/model.py: shapes, causality, parameter counts, variants, errors, FLOPs."""

import functools
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxgpt import config as config_lib
from jaxgpt.model import GPT, GPTConfig, count_params, flops_per_token

REPO = Path(__file__).resolve().parent.parent
TINY = dict(vocab_size=97, block_size=16, n_layer=2, n_head=4, n_embd=32)


def tiny(**overrides) -> GPTConfig:
    return GPTConfig(**{**TINY, **overrides})


@functools.cache
def _init_fn(cfg: GPTConfig):
    tokens = jnp.zeros((1, cfg.block_size), jnp.int32)
    return jax.jit(lambda rng: nn.unbox(GPT(cfg).init(rng, tokens)["params"]))


def init_params(cfg: GPTConfig, seed: int = 0):
    return _init_fn(cfg)(jax.random.key(seed))


def param_shapes(cfg: GPTConfig):
    """Abstract params: shapes and dtypes without allocating or computing anything."""
    return jax.eval_shape(_init_fn(cfg), jax.random.key(0))


@functools.cache
def _apply_fn(cfg: GPTConfig, deterministic: bool):
    def apply(params, tokens, rng):
        rngs = None if deterministic else {"dropout": rng}
        return GPT(cfg).apply({"params": params}, tokens, deterministic, rngs=rngs)

    return jax.jit(apply)


def forward(cfg: GPTConfig, params, tokens, deterministic: bool = True, seed: int = 0):
    return _apply_fn(cfg, deterministic)(params, tokens, jax.random.key(seed))


def random_tokens(cfg: GPTConfig, batch: int = 2, seed: int = 1) -> jax.Array:
    return jax.random.randint(jax.random.key(seed), (batch, cfg.block_size), 0, cfg.vocab_size)


def stack_layers(params, n_layer: int):
    """Per-layer params h_0..h_{L-1} → the scanned layout params['h']['block'] [L, ...]."""
    layers = [params[f"h_{i}"] for i in range(n_layer)]
    rest = {k: v for k, v in params.items() if not k.startswith("h_")}
    return {**rest, "h": {"block": jax.tree.map(lambda *xs: jnp.stack(xs), *layers)}}


def leaf_names(params) -> set[str]:
    return {getattr(path[-1], "key", "") for path, _ in jax.tree_util.tree_leaves_with_path(params)}


def test_output_shape_and_dtype():
    """Logits are float32 [B, T, V], also for a sequence shorter than block_size."""
    cfg = tiny()
    params = init_params(cfg)
    tokens = random_tokens(cfg, batch=3)
    logits = forward(cfg, params, tokens)
    assert logits.shape == (3, cfg.block_size, cfg.vocab_size)
    assert logits.dtype == jnp.float32
    assert np.isfinite(np.asarray(logits)).all()
    short = forward(cfg, params, tokens[:, :5])
    assert short.shape == (3, 5, cfg.vocab_size)
    # A prefix sees the same context, so its logits match the full sequence's.
    np.testing.assert_allclose(np.asarray(short), np.asarray(logits[:, :5]), atol=1e-5)


def test_sequence_longer_than_block_size_fails():
    """More tokens than block_size is a ValueError naming block_size."""
    cfg = tiny()
    params = init_params(cfg)
    too_long = jnp.zeros((1, cfg.block_size + 1), jnp.int32)
    with pytest.raises(ValueError, match="block_size"):
        GPT(cfg).apply({"params": params}, too_long)


def test_causal_changing_later_tokens_keeps_earlier_logits():
    """Logits at positions <= t do not change when tokens after t change."""
    cfg = tiny()
    params = init_params(cfg)
    tokens = random_tokens(cfg)
    t = 6
    changed = tokens.at[:, t + 1 :].set((tokens[:, t + 1 :] + 1) % cfg.vocab_size)
    a = np.asarray(forward(cfg, params, tokens))
    b = np.asarray(forward(cfg, params, changed))
    np.testing.assert_allclose(a[:, : t + 1], b[:, : t + 1], atol=1e-6)
    assert not np.allclose(a[:, t + 1 :], b[:, t + 1 :])


def test_causal_gradient_wrt_later_inputs_is_zero():
    """d logits[b, t] / d input embedding at position s is zero exactly when s > t.

    The position table wpe is added to the input at each position and used nowhere else (the
    output projection is tied to wte, not wpe), so its row s is the input perturbation at s.
    """
    cfg = tiny()
    params = init_params(cfg)
    tokens = random_tokens(cfg)

    @jax.jit
    def jacobian_at(wpe, t):
        def logits_at_t(wpe):
            p = {**params, "wpe": {"embedding": wpe}}
            logits = GPT(cfg).apply({"params": p}, tokens)
            return jax.lax.dynamic_index_in_dim(logits, t, axis=1, keepdims=False).sum(-1)

        return jax.jacobian(logits_at_t)(wpe)  # [B, block, D]

    for t in (0, 5, cfg.block_size - 1):
        jac = jacobian_at(params["wpe"]["embedding"], t)
        per_position = np.abs(np.asarray(jac)).sum(-1)  # [B, block]
        assert (per_position[:, t + 1 :] == 0).all(), f"position {t} sees the future"
        assert (per_position[:, : t + 1] > 0).all(), f"position {t} ignores its past"


def test_small_config_has_124m_params():
    """configs/small.py at vocab 50257 has exactly GPT-2 small's 124,439,808 parameters."""
    c = config_lib.load_config_file(REPO / "configs" / "small.py")
    cfg = config_lib.model_config(config_lib.run_config(c).model, 50257)
    shapes = param_shapes(cfg)
    assert count_params(shapes) == 124_439_808
    assert count_params(shapes, exclude_positions=True) == 124_439_808 - 1024 * 768


@functools.cache
def _plain_reference():
    """Weights, tokens, logits and gradients of a plain 3-layer model (shared by variants)."""
    base = tiny(n_layer=3)
    params = init_params(base)
    tokens = random_tokens(base)
    return params, tokens, forward(base, params, tokens), _grads(base, params, tokens)


def _grads(cfg: GPTConfig, params, tokens):
    return jax.jit(jax.grad(lambda p: GPT(cfg).apply({"params": p}, tokens).mean()))(params)


@pytest.mark.parametrize(
    "variant",
    [
        dict(scan_layers=True),
        dict(remat="full"),
        dict(remat="dots"),
        dict(scan_layers=True, remat="dots"),
    ],
    ids=lambda v: ",".join(f"{k}={val}" for k, val in v.items()),
)
@pytest.mark.slow
def test_scan_and_remat_match_plain_model(variant):
    """Scanned and rematerialized models compute the plain model's logits and gradients."""
    params, tokens, expected, g_plain = _plain_reference()
    cfg = tiny(n_layer=3, **variant)
    if cfg.scan_layers:
        params = stack_layers(params, cfg.n_layer)
        g_plain = stack_layers(g_plain, cfg.n_layer)
    # The converted weights have exactly the layout the variant initializes itself.
    assert jax.tree.map(jnp.shape, param_shapes(cfg)) == jax.tree.map(jnp.shape, params)
    got = forward(cfg, params, tokens)
    np.testing.assert_allclose(np.asarray(got), np.asarray(expected), atol=1e-5, rtol=1e-5)
    # Remat changes only what is stored for the backward pass, so gradients agree too.
    g_variant = _grads(cfg, params, tokens)
    for a, b in zip(jax.tree.leaves(g_variant), jax.tree.leaves(g_plain), strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-6, rtol=1e-4)


def test_dropout_only_in_training_mode():
    """deterministic=True ignores the rng; deterministic=False with dropout>0 depends on it."""
    cfg = tiny(dropout=0.5)
    params = init_params(cfg)
    tokens = random_tokens(cfg)

    def run(seed: int, deterministic: bool) -> np.ndarray:
        return np.asarray(forward(cfg, params, tokens, deterministic, seed))

    np.testing.assert_array_equal(run(0, True), run(1, True))
    train_a, train_b = run(0, False), run(1, False)
    assert not np.allclose(train_a, train_b)
    assert not np.allclose(train_a, run(0, True))
    np.testing.assert_array_equal(train_a, run(0, False))  # same rng, same mask


def test_dropout_zero_is_deterministic_in_training_mode():
    """With dropout=0 training mode equals eval mode."""
    cfg = tiny(dropout=0.0)
    params = init_params(cfg)
    tokens = random_tokens(cfg)
    train = forward(cfg, params, tokens, deterministic=False, seed=3)
    np.testing.assert_array_equal(np.asarray(train), np.asarray(forward(cfg, params, tokens)))


def test_no_bias_model_has_no_bias_params():
    """bias=False drops every bias (Dense and LayerNorm) and still runs."""
    assert "bias" in leaf_names(param_shapes(tiny()))
    cfg = tiny(bias=False)
    params = init_params(cfg)
    assert "bias" not in leaf_names(params)
    assert {"kernel", "scale", "embedding"} <= leaf_names(params)
    d, L, v, t = cfg.n_embd, cfg.n_layer, cfg.vocab_size, cfg.block_size
    assert count_params(params) == v * d + t * d + L * (12 * d * d + 2 * d) + d
    assert np.isfinite(np.asarray(forward(cfg, params, random_tokens(cfg)))).all()


def test_bfloat16_compute_gives_float32_logits():
    """dtype=bfloat16 runs with float32 master weights and returns float32 logits near fp32."""
    params = init_params(tiny())
    tokens = random_tokens(tiny())
    cfg = tiny(dtype="bfloat16")
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(param_shapes(cfg)))
    logits = forward(cfg, params, tokens)
    assert logits.dtype == jnp.float32
    reference = forward(tiny(), params, tokens)
    np.testing.assert_allclose(np.asarray(logits), np.asarray(reference), atol=0.05)
    assert not np.array_equal(np.asarray(logits), np.asarray(reference))


def test_bfloat16_params():
    """param_dtype=bfloat16 stores bfloat16 weights; logits stay float32."""
    cfg = tiny(dtype="bfloat16", param_dtype="bfloat16")
    params = init_params(cfg)
    assert all(x.dtype == jnp.bfloat16 for x in jax.tree.leaves(params))
    assert forward(cfg, params, random_tokens(cfg)).dtype == jnp.float32


@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        (dict(n_embd=30, n_head=4), "n_embd"),
        (dict(dtype="float64"), "dtype"),
        (dict(param_dtype="int8"), "param_dtype"),
        (dict(remat="some"), "remat"),
        (dict(attention="flash"), "attention"),
        (dict(n_layer=0), "n_layer"),
        (dict(vocab_size=-1), "vocab_size"),
    ],
)
def test_config_errors_name_the_key(overrides, key):
    """Invalid GPTConfig values raise ValueError naming the offending model.* key."""
    with pytest.raises(ValueError, match=rf"model\.{key}\b"):
        tiny(**overrides)


def test_config_is_frozen():
    """GPTConfig is immutable once built."""
    cfg = tiny()
    with pytest.raises(AttributeError):
        cfg.n_layer = 3  # type: ignore[misc]


def test_count_params_matches_formula():
    """count_params equals the GPT-2 formula; exclude_positions drops exactly wpe."""
    cfg = tiny()
    params = init_params(cfg)
    d, L, v, t = cfg.n_embd, cfg.n_layer, cfg.vocab_size, cfg.block_size
    per_layer = 12 * d * d + 13 * d  # qkv, proj, fc, fc-proj weights and biases, two norms
    expected_no_pos = v * d + L * per_layer + 2 * d
    assert count_params(params, exclude_positions=True) == expected_no_pos
    assert count_params(params) == expected_no_pos + t * d


def test_flops_per_token_by_hand():
    """flops_per_token = 6N + 12·L·H·Q·T with N excluding position embeddings."""
    cfg = GPTConfig(vocab_size=100, block_size=8, n_layer=2, n_head=2, n_embd=16)
    n = count_params(param_shapes(cfg), exclude_positions=True)
    # N = 100·16 + 2·(12·16² + 13·16) + 2·16 = 1600 + 6560 + 32 = 8192
    assert n == 8192
    # 6·8192 + 12·2·2·8·8 = 49152 + 3072
    assert flops_per_token(cfg, n) == 52224.0
    # Attention FLOPs scale with the context length; the 6N part does not.
    longer = GPTConfig(vocab_size=100, block_size=16, n_layer=2, n_head=2, n_embd=16)
    assert flops_per_token(longer, n) == 49152.0 + 6144.0


# ---------------------------------------------------------------- golden: the GPT-2 path


def tree_digest(tree) -> str:
    """sha256 over every leaf's path, dtype, shape and bytes, in path order."""
    import hashlib

    h = hashlib.sha256()
    for path, leaf in sorted(
        jax.tree_util.tree_leaves_with_path(tree), key=lambda kv: jax.tree_util.keystr(kv[0])
    ):
        a = np.asarray(leaf)
        h.update(f"{jax.tree_util.keystr(path)}|{a.dtype}|{a.shape}|".encode())
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()[:16]


# Architecture switches (rope, rmsnorm, swiglu, GQA, untied head, qk-norm) must leave the GPT-2
# path bit for bit as it was: same parameter tree from the same seed, same logits, same
# gradients. These digests were recorded before the switches existed (jax 0.10.2, CPU). A JAX
# or XLA upgrade may change float results legitimately: then check that no model code changed
# in the same commit, and record the new digests the failure message prints.
GOLDEN = {
    "tiny": dict(TINY),
    "tiny_nobias_scan": dict(TINY, bias=False, scan_layers=True),
    "shakespeare_char": dict(vocab_size=65, block_size=64, n_layer=4, n_head=4, n_embd=128),
}
GOLDEN_DIGESTS = {
    "tiny": ("cc286f3f49166780", "869e956a3eae78c1", "5520cdcfe05d6957"),
    "tiny_nobias_scan": ("e304fbbcb3783eef", "4ff1c099b751c34f", "79d2dc99f3de1ed7"),
    "shakespeare_char": ("99570b404ee28911", "7039aa6181f063ee", "0ede1c8f7cd33509"),
}


@pytest.mark.parametrize("name", sorted(GOLDEN))
def test_gpt2_path_is_bitwise_unchanged(name):
    """Params (seed 0), logits and gradients of GPT-2-shaped configs hash as recorded."""
    cfg = GPTConfig(**GOLDEN[name])
    params = init_params(cfg)
    tokens = random_tokens(cfg)
    got = (
        tree_digest(params),
        tree_digest(forward(cfg, params, tokens)),
        tree_digest(_grads(cfg, params, tokens)),
    )
    assert got == GOLDEN_DIGESTS[name], f"{name}: digests now {got}"
