"""Tests for jaxgpt/optimizer.py: schedules, weight-decay mask, optimizers, clipping, errors."""

import itertools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxgpt.model import GPT, GPTConfig
from jaxgpt.optimizer import OptConfig, decay_mask, make_optimizer, make_schedule

LR, MIN_LR, WARMUP, TOTAL = 1e-3, 1e-4, 10, 110


def schedule(name: str, **overrides) -> optax.Schedule:
    cfg = OptConfig(lr=LR, min_lr=MIN_LR, schedule=name, warmup_steps=WARMUP, **overrides)
    return make_schedule(cfg, TOTAL)


def lr_at(sched: optax.Schedule, step: int) -> float:
    return float(sched(jnp.asarray(step)))


@pytest.mark.parametrize("name", ["cosine", "linear", "constant", "wsd"])
def test_warmup_then_peak(name):
    """Step s < warmup uses lr·(s+1)/(warmup+1); the first step after warmup is at the peak."""
    sched = schedule(name)
    for s in range(WARMUP):
        assert lr_at(sched, s) == pytest.approx(LR * (s + 1) / (WARMUP + 1), rel=1e-5)
    assert lr_at(sched, 0) > 0
    assert lr_at(sched, WARMUP) == pytest.approx(LR, rel=1e-5)
    assert max(lr_at(sched, s) for s in range(TOTAL + 20)) == pytest.approx(LR, rel=1e-5)


@pytest.mark.parametrize("name", ["cosine", "linear", "wsd"])
def test_decay_ends_at_min_lr_and_stays(name):
    """Decaying schedules reach min_lr at the last step, never go below, and stay there."""
    sched = schedule(name)
    assert lr_at(sched, TOTAL) == pytest.approx(MIN_LR, rel=1e-4)
    assert lr_at(sched, TOTAL + 50) == pytest.approx(MIN_LR, rel=1e-4)
    values = [lr_at(sched, s) for s in range(WARMUP, TOTAL + 1)]
    assert all(a >= b - 1e-12 for a, b in itertools.pairwise(values))  # monotone
    assert min(values) >= MIN_LR * (1 - 1e-5)


def test_cosine_midpoint():
    """Cosine is halfway between lr and min_lr halfway through the decay."""
    sched = schedule("cosine")
    mid = WARMUP + (TOTAL - WARMUP) // 2
    assert lr_at(sched, mid) == pytest.approx((LR + MIN_LR) / 2, rel=1e-4)


def test_linear_midpoint():
    """Linear decay is a straight line from lr to min_lr."""
    sched = schedule("linear")
    quarter = WARMUP + (TOTAL - WARMUP) // 4
    assert lr_at(sched, quarter) == pytest.approx(LR - 0.25 * (LR - MIN_LR), rel=1e-4)


def test_constant_stays_at_peak():
    """The constant schedule holds lr after warmup, long past the end."""
    sched = schedule("constant")
    for s in (WARMUP, WARMUP + 1, TOTAL // 2, TOTAL, 10 * TOTAL):
        assert lr_at(sched, s) == pytest.approx(LR, rel=1e-6)


def test_wsd_flat_until_decay_start():
    """wsd holds the peak until its last wsd_decay_fraction of steps, then decays linearly."""
    sched = schedule("wsd", wsd_decay_fraction=0.2)
    decay_start = TOTAL - int(0.2 * (TOTAL - WARMUP))  # 100 - 20 → step 90
    assert decay_start == 90
    for s in range(WARMUP, decay_start + 1):
        assert lr_at(sched, s) == pytest.approx(LR, rel=1e-6), s
    assert lr_at(sched, decay_start + 1) < LR
    assert lr_at(sched, decay_start + 10) == pytest.approx((LR + MIN_LR) / 2, rel=1e-4)
    assert lr_at(sched, TOTAL) == pytest.approx(MIN_LR, rel=1e-4)


def test_decay_steps_shorter_than_training():
    """decay_steps, when set, is where min_lr is reached instead of the total steps."""
    sched = make_schedule(
        OptConfig(lr=LR, min_lr=MIN_LR, schedule="cosine", warmup_steps=WARMUP, decay_steps=50),
        TOTAL,
    )
    assert lr_at(sched, 50) == pytest.approx(MIN_LR, rel=1e-4)
    assert lr_at(sched, TOTAL) == pytest.approx(MIN_LR, rel=1e-4)
    assert lr_at(sched, 30) > MIN_LR * 1.5


def test_no_warmup_starts_at_peak():
    """warmup_steps=0 starts at lr on step 0."""
    sched = make_schedule(OptConfig(lr=LR, min_lr=MIN_LR, warmup_steps=0), TOTAL)
    assert lr_at(sched, 0) == pytest.approx(LR, rel=1e-6)
    assert lr_at(sched, TOTAL) == pytest.approx(MIN_LR, rel=1e-4)


def model_like_params():
    """A parameter tree shaped like the GPT's (names matter for the decay mask)."""
    return {
        "wte": {"embedding": jnp.ones((11, 4))},
        "wpe": {"embedding": jnp.ones((8, 4))},
        "h_0": {
            "ln_1": {"scale": jnp.ones(4), "bias": jnp.ones(4)},
            "attn": {
                "c_attn": {"kernel": jnp.ones((4, 3, 2, 2)), "bias": jnp.ones((3, 2, 2))},
                "c_proj": {"kernel": jnp.ones((2, 2, 4)), "bias": jnp.ones(4)},
            },
            "mlp": {"c_fc": {"kernel": jnp.ones((4, 16)), "bias": jnp.ones(16)}},
        },
        "h": {"block": {"mlp": {"c_proj": {"kernel": jnp.ones((3, 16, 4))}}}},  # scanned layout
        "ln_f": {"scale": jnp.ones(4), "bias": jnp.ones(4)},
    }


def flat(tree) -> dict[str, object]:
    return {
        "/".join(k.key for k in path): leaf
        for path, leaf in jax.tree_util.tree_leaves_with_path(tree)
    }


@pytest.mark.parametrize("decay_embeddings", [False, True])
def test_decay_mask(decay_embeddings):
    """Only kernels (and embeddings when asked) are decayed; biases and norm scales never."""
    mask = flat(decay_mask(model_like_params(), decay_embeddings))
    for name, decayed in mask.items():
        leaf = name.rsplit("/", 1)[-1]
        want = leaf == "kernel" or (decay_embeddings and leaf == "embedding")
        assert decayed is want, name
    assert sum(mask.values()) == 4 + (2 if decay_embeddings else 0)


def test_decay_mask_on_gpt_params():
    """On the real GPT tree (plain and scanned) exactly the Dense/attention kernels decay."""
    tokens = jnp.zeros((1, 8), jnp.int32)
    for scan in (False, True):
        cfg = GPTConfig(
            vocab_size=64, block_size=8, n_layer=2, n_head=2, n_embd=16, scan_layers=scan
        )
        shapes = jax.eval_shape(
            lambda cfg=cfg: nn.unbox(GPT(cfg).init(jax.random.key(0), tokens)["params"])
        )
        decayed = {name for name, on in flat(decay_mask(shapes)).items() if on}
        prefix = "h/block" if scan else "h_0"
        assert f"{prefix}/attn/c_attn/kernel" in decayed
        assert len(decayed) == (4 if scan else 8)  # c_attn, c_proj, c_fc, mlp c_proj per layer
        with_embeddings = {n for n, on in flat(decay_mask(shapes, True)).items() if on}
        assert with_embeddings - decayed == {"wte/embedding", "wpe/embedding"}


def step_with_zero_grads(name: str, weight_decay: float = 0.1):
    cfg = OptConfig(
        name=name,
        lr=0.1,
        min_lr=0.1,
        schedule="constant",
        warmup_steps=0,
        weight_decay=weight_decay,
    )
    tx = make_optimizer(cfg, total_steps=10)
    params = model_like_params()
    grads = jax.tree.map(jnp.zeros_like, params)
    updates, _ = tx.update(grads, tx.init(params), params)
    return params, flat(optax.apply_updates(params, updates))


@pytest.mark.slow
def test_adamw_decays_only_kernels():
    """With zero gradients adamw shrinks kernels by lr·wd and leaves the rest unchanged."""
    _, new = step_with_zero_grads("adamw")
    for name, value in new.items():
        expected = 1 - 0.1 * 0.1 if name.endswith("kernel") else 1.0
        np.testing.assert_allclose(np.asarray(value), expected, rtol=1e-6, err_msg=name)


def test_adabelief_decays_like_adamw():
    """adabelief applies the same decoupled weight decay."""
    _, new = step_with_zero_grads("adabelief")
    np.testing.assert_allclose(np.asarray(new["h_0/mlp/c_fc/kernel"]), 0.99, rtol=1e-6)
    np.testing.assert_allclose(np.asarray(new["h_0/mlp/c_fc/bias"]), 1.0)


@pytest.mark.parametrize(("name", "wd"), [("adam", 0.1), ("adamw", 0.0)])
def test_no_decay_leaves_params_unchanged(name, wd):
    """adam (or adamw with weight_decay=0) leaves every parameter unchanged under zero grads."""
    _, new = step_with_zero_grads(name, weight_decay=wd)
    for key, value in new.items():
        np.testing.assert_array_equal(np.asarray(value), 1.0, err_msg=key)


@pytest.mark.parametrize("name", ["adamw", "adam", "adabelief"])
def test_optimizers_minimize_a_quadratic(name):
    """Every optimizer runs jitted and drives a simple quadratic loss down."""
    cfg = OptConfig(name=name, lr=0.05, min_lr=0.005, warmup_steps=5, weight_decay=0.01)
    tx = make_optimizer(cfg, total_steps=100)
    target = jnp.linspace(-1.0, 1.0, 12).reshape(3, 4)
    params = {"dense": {"kernel": jnp.zeros((3, 4)), "bias": jnp.zeros(4)}}

    def loss(p):
        return jnp.sum((p["dense"]["kernel"] - target) ** 2) + jnp.sum(
            (p["dense"]["bias"] - 1) ** 2
        )

    @jax.jit
    def step(p, s):
        g = jax.grad(loss)(p)
        u, s = tx.update(g, s, p)
        return optax.apply_updates(p, u), s

    state = tx.init(params)
    start = float(loss(params))
    for _ in range(100):
        params, state = step(params, state)
    assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(params))
    assert float(loss(params)) < 0.05 * start


def test_grad_clip_limits_a_gradient_spike():
    """A huge gradient is clipped to grad_clip before it reaches the moments.

    After some steps along g, a spike of -1e6·g would (unclipped) swamp the momentum and make a
    full-size step backwards; clipped to norm 1 it only cancels part of the momentum.
    """
    params = {"w": {"kernel": jnp.zeros(8)}}
    g = {"w": {"kernel": jnp.full(8, 0.5 / np.sqrt(8))}}  # global norm 0.5 < clip
    spike = jax.tree.map(lambda x: -1e6 * x, g)

    def run(grad_clip: float):
        cfg = OptConfig(
            name="adam",
            lr=1.0,
            min_lr=1.0,
            schedule="constant",
            warmup_steps=0,
            grad_clip=grad_clip,
        )
        tx = make_optimizer(cfg, total_steps=10)
        state = tx.init(params)
        for _ in range(3):
            _, state = tx.update(g, state, params)
        update, state = tx.update(spike, state, params)
        return np.asarray(update["w"]["kernel"]), state

    clipped, clipped_state = run(1.0)
    unclipped, unclipped_state = run(0.0)
    assert np.abs(unclipped).max() > 0.5  # the spike dominates: a full step along +g
    assert np.abs(clipped).max() < 0.25 * np.abs(unclipped).max()

    def mu_norm(state) -> float:
        mus = [
            s.mu
            for s in jax.tree.leaves(state, is_leaf=lambda x: hasattr(x, "mu"))
            if hasattr(s, "mu")
        ]
        return float(optax.tree.norm(mus))

    # First moment after 3 steps of g and one clipped spike (norm 1, b1 = 0.9):
    # |0.9·(1 - 0.9³)·0.5 - 0.1·1| = 0.02195; unclipped it would be about 0.1·5e5.
    assert mu_norm(clipped_state) == pytest.approx(abs(0.9 * (1 - 0.9**3) * 0.5 - 0.1), rel=1e-4)
    assert mu_norm(unclipped_state) > 1e4


@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        (dict(name="sgd"), "opt.name"),
        (dict(schedule="exponential"), "opt.schedule"),
        (dict(warmup_steps=-1), "opt.warmup_steps"),
        (dict(wsd_decay_fraction=1.5), "opt.wsd_decay_fraction"),
    ],
)
def test_bad_settings_name_the_key(overrides, key):
    """Unknown optimizer or schedule names (and bad numbers) raise ValueError naming the key."""
    with pytest.raises(ValueError, match=key.replace(".", r"\.")):
        OptConfig(**overrides)
