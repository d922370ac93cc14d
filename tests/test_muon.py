"""opt.name=muon: which parameters Muon takes, that its update is optax's Muon, orthogonal per
q/k/v part, equal on a 2×2×2 mesh and on one device, and exact through a checkpoint resume."""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxgpt.checkpoint import Checkpointer
from jaxgpt.config import run_config
from jaxgpt.configs import base
from jaxgpt.model import GPT, GPTConfig
from jaxgpt.optimizer import (
    MDN,
    OptConfig,
    make_optimizer,
    make_schedule,
    muon_dims,
    muon_labels,
)
from jaxgpt.run.loop import train
from jaxgpt.sharding import MeshConfig, make_mesh
from jaxgpt.state import make_trainer
from jaxgpt.workdir import restore_params
from tests.helpers import losses, tiny_config

RULES = run_config(base.get_config()).mesh.rules
MODEL = GPTConfig(vocab_size=96, block_size=16, n_layer=2, n_head=4, n_embd=32)
MUON = OptConfig(name="muon", lr=1e-3, muon_lr=0.02, warmup_steps=1, weight_decay=0.1)
# Llama-style switches, where this checkout's GPTConfig has them (set only the fields it knows).
SWITCHES = {
    "position": "rope",
    "norm": "rmsnorm",
    "mlp": "swiglu",
    "n_kv_head": 2,
    "tie_embeddings": False,
    "qk_norm": True,
    "bias": False,
}


def init_shapes(cfg: GPTConfig):
    tokens = jnp.zeros((1, cfg.block_size), jnp.int32)
    return jax.eval_shape(lambda: nn.unbox(GPT(cfg).init(jax.random.key(0), tokens)["params"]))


def flat(tree) -> dict[str, object]:
    return {
        "/".join(str(getattr(k, "key", k)) for k in path): leaf
        for path, leaf in jax.tree_util.tree_leaves_with_path(
            tree, is_leaf=lambda x: x is None or isinstance(x, MDN)
        )
    }


def model_variants() -> list[GPTConfig]:
    """GPT-2 plain and scanned, and the Llama-style block (plain and scanned) when available."""
    fields = {f.name for f in dataclasses.fields(GPTConfig)}
    llama = {k: v for k, v in SWITCHES.items() if k in fields}
    return [
        dataclasses.replace(MODEL, **extra, scan_layers=scan)
        for extra in ({}, llama)
        for scan in (False, True)
    ]


@pytest.mark.parametrize("cfg", model_variants(), ids=lambda c: f"scan={c.scan_layers}")
def test_muon_takes_exactly_the_kernels_inside_blocks(cfg):
    """Hidden kernels (attention and MLP projections) → Muon; embeddings, output layer, norms
    and biases → AdamW. Every hidden kernel has a rule (a new block shape without one fails)."""
    shapes = init_shapes(cfg)
    labels = flat(muon_labels(shapes))
    for name, label in labels.items():
        parts = name.split("/")
        in_block = parts[0] == "h" or parts[0].startswith("h_")
        want = "muon" if in_block and parts[-1] == "kernel" else "adam"
        assert label == want, name
    assert labels["wte/embedding"] == "adam"
    prefix = "h/block" if cfg.scan_layers else "h_0"
    kernels = [n for n in labels if n.startswith(prefix) and n.endswith("kernel")]
    assert len(kernels) >= 4 and all(labels[n] == "muon" for n in kernels)
    # Each spec's input and output axes cover all but the batch axes (q/k/v part, layer).
    for name, spec in flat(muon_dims(shapes)).items():
        if spec is not None:
            assert labels[name] == "muon"
            leaf = flat(shapes)[name]
            named = np.atleast_1d(spec.reduction_axis).tolist()
            named += np.atleast_1d(spec.output_axis).tolist()
            assert len(named) >= 2 and len(leaf.shape) - len(named) <= 2, (name, leaf.shape)


def test_gpt2_specs():
    """The GPT-2 kernels' (input, output) axes: q, k, v orthogonalized separately."""
    specs = flat(muon_dims(init_shapes(MODEL)))
    assert specs["h_0/attn/c_attn/kernel"] == MDN(-4, (-2, -1))
    assert specs["h_0/attn/c_proj/kernel"] == MDN((-3, -2), -1)
    assert specs["h_0/mlp/c_fc/kernel"] == MDN(-2, -1)
    assert specs["h_1/mlp/c_proj/kernel"] == MDN(-2, -1)
    assert specs["wte/embedding"] is None and specs["h_0/ln_1/scale"] is None


def test_llama_block_specs():
    """Grouped-query and SwiGLU kernels: q heads, k and v, gate and up each a matrix."""
    fields = {f.name for f in dataclasses.fields(GPTConfig)}
    if not {"n_kv_head", "mlp"} <= fields:
        pytest.skip("this GPTConfig has no grouped-query attention or SwiGLU switch")
    cfg = dataclasses.replace(MODEL, n_kv_head=2, mlp="swiglu")
    specs = flat(muon_dims(init_shapes(cfg)))
    assert specs["h_0/attn/q_proj/kernel"] == MDN(-3, (-2, -1))
    assert specs["h_0/attn/kv_proj/kernel"] == MDN(-4, (-2, -1))
    assert specs["h_0/mlp/c_fc/kernel"] == MDN(-3, -1)


def test_unknown_many_axis_kernel_is_refused_with_the_path():
    params = {"h_0": {"attn": {"mystery": {"kernel": jnp.zeros((4, 2, 3, 5))}}}}
    with pytest.raises(ValueError, match=r"h_0/attn/mystery/kernel.*MUON_AXES"):
        muon_labels(params)


def toy_params():
    k = jax.random.split(jax.random.key(3), 4)
    return {
        "wte": {"embedding": jax.random.normal(k[0], (11, 8))},
        "h_0": {
            "attn": {"c_attn": {"kernel": jax.random.normal(k[1], (8, 3, 2, 4))}},
            "mlp": {
                "c_fc": {"kernel": jax.random.normal(k[2], (8, 32)), "bias": jnp.zeros(32)},
                "c_proj": {"kernel": jax.random.normal(k[3], (32, 8))},
            },
        },
        "ln_f": {"scale": jnp.ones(8)},
    }


def test_update_is_optax_muon():
    """With clipping and decay off and a constant schedule, the hidden kernels' update equals
    optax.contrib.muon's given the same split, and the rest is plain Adam (contrib.muon would
    use Nesterov Adam there; jaxgpt keeps the AdamW every other run uses)."""
    cfg = OptConfig(
        name="muon", lr=3e-3, min_lr=3e-3, muon_lr=0.05, schedule="constant", warmup_steps=0,
        weight_decay=0.0, grad_clip=0.0, b2=0.99,
    )  # fmt: skip
    ours = make_optimizer(cfg, 10)
    ref = optax.contrib.muon(
        learning_rate=0.05,
        adam_learning_rate=3e-3,
        beta=0.95,
        ns_steps=5,
        adam_b1=0.9,
        adam_b2=0.99,
        eps=1e-8,
        muon_weight_dimension_numbers=muon_dims,
    )
    adam = optax.adam(3e-3, b1=0.9, b2=0.99, eps=1e-8)
    params = toy_params()
    labels = flat(muon_labels(params))
    states = [tx.init(params) for tx in (ours, ref, adam)]
    for i in range(3):
        grads = jax.tree.map(lambda p, i=i: jnp.sin(p * (i + 1)), params)
        updates = []
        for n, tx in enumerate((ours, ref, adam)):
            u, states[n] = jax.jit(tx.update)(grads, states[n], params)
            updates.append(flat(u))
        for name, got in updates[0].items():
            want = updates[1 if labels[name] == "muon" else 2][name]
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7, err_msg=name)
        params = optax.apply_updates(params, jax.tree.map(lambda x: 10 * x, grads))


def test_attention_update_is_orthogonal_per_part():
    """The first update of c_attn (D, 3, H, Q) is, for q, k and v each, a (D, H·Q) matrix with
    singular values near 1 (Newton-Schulz lands in about [0.5, 1.5]), times muon_lr."""
    cfg = OptConfig(name="muon", muon_lr=0.1, schedule="constant", warmup_steps=0, grad_clip=0)
    tx = make_optimizer(cfg, 10)
    params = toy_params()
    grads = jax.tree.map(lambda p: jax.random.normal(jax.random.key(7), p.shape), params)
    updates, _ = tx.update(grads, tx.init(params), params)
    u = np.asarray(updates["h_0"]["attn"]["c_attn"]["kernel"]) / -0.1
    for part in range(3):
        sv = np.linalg.svd(u[:, part].reshape(8, 8), compute_uv=False)
        assert sv.min() > 0.5 and sv.max() < 1.5, (part, sv)
    # c_fc (8, 32): fan_out/fan_in = 4, so its orthogonal update is scaled by 2.
    sv = np.linalg.svd(np.asarray(updates["h_0"]["mlp"]["c_fc"]["kernel"]) / -0.1, False, False)
    assert sv.min() > 1.0 and sv.max() < 3.0, sv


def test_weight_decay_of_each_branch():
    """Zero gradients: Muon kernels shrink by muon_lr·muon_weight_decay; AdamW's share keeps
    its own mask (here: nothing outside blocks is a kernel, so nothing else moves)."""
    cfg = OptConfig(
        name="muon", lr=0.1, min_lr=0.1, muon_lr=0.2, schedule="constant", warmup_steps=0,
        weight_decay=0.5, muon_weight_decay=0.25,
    )  # fmt: skip
    tx = make_optimizer(cfg, 10)
    params = jax.tree.map(jnp.ones_like, toy_params())
    updates, _ = tx.update(jax.tree.map(jnp.zeros_like, params), tx.init(params), params)
    for name, value in flat(optax.apply_updates(params, updates)).items():
        want = 1 - 0.2 * 0.25 if name.endswith("kernel") else 1.0
        np.testing.assert_allclose(np.asarray(value), want, rtol=1e-6, err_msg=name)


def test_muon_schedule_has_the_same_shape_scaled():
    cfg = OptConfig(name="muon", lr=1e-3, min_lr=1e-4, muon_lr=0.02, warmup_steps=10)
    adam, muon = make_schedule(cfg, 100), make_schedule(cfg, 100, cfg.muon_lr)
    for step in (0, 5, 10, 50, 100, 150):
        assert float(muon(step)) == pytest.approx(20 * float(adam(step)), rel=1e-5)


@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        (dict(muon_lr=0.0), "opt.muon_lr"),
        (dict(muon_momentum=1.0), "opt.muon_momentum"),
        (dict(muon_ns_steps=0), "opt.muon_ns_steps"),
        (dict(muon_weight_decay=-0.1), "opt.muon_weight_decay"),
    ],
)
def test_bad_muon_settings_name_the_key(overrides, key):
    with pytest.raises(ValueError, match=key.replace(".", r"\.")):
        OptConfig(name="muon", **overrides)


def run_steps(mesh_cfg: MeshConfig, devices, steps=3, model_cfg=MODEL, opt=MUON):
    """Train `steps` Muon steps on fixed batches; (losses, host params, state)."""
    mesh = make_mesh(mesh_cfg, devices)
    tx, schedule = make_optimizer(opt, 10), make_schedule(opt, 10)
    trainer = make_trainer(GPT(model_cfg), tx, schedule, mesh, RULES)
    state = trainer.init(jax.random.key(0))
    rng = np.random.default_rng(0)
    history = []
    for _ in range(steps):
        batch = rng.integers(0, model_cfg.vocab_size, (16, model_cfg.block_size + 1), np.int32)
        state, metrics = trainer.step(
            state, jax.device_put(batch, trainer.batch_sharding), jax.random.key(1)
        )
        history.append(float(metrics["loss"]))
    return history, jax.device_get(state.params), state, trainer


def max_abs_diff(a, b) -> float:
    return max(jax.tree.leaves(jax.tree.map(lambda x, y: float(np.abs(x - y).max()), a, b)))


@pytest.mark.slow
@pytest.mark.parametrize("scan", [False, True])
def test_2x2x2_mesh_step_matches_one_device(scan):
    """data×fsdp×tensor = 2×2×2: Newton-Schulz on fsdp- and tensor-split matrices (jit
    gathers what each matmul needs) gives the same losses and parameters as one device."""
    cfg = dataclasses.replace(MODEL, scan_layers=scan)
    ref_hist, ref_params, _, _ = run_steps(MeshConfig(1, 1, 1, RULES), jax.devices()[:1], 3, cfg)
    hist, params, state, _ = run_steps(MeshConfig(2, 2, 2, RULES), jax.devices(), 3, cfg)
    assert hist == pytest.approx(ref_hist, abs=1e-5)
    assert max_abs_diff(ref_params, params) < 1e-5
    # The Muon momentum really is split like its kernel (fsdp on D, tensor on heads).
    mu = state.opt_state[1].inner_states["muon"].inner_state[0].mu
    kernel = mu["h"]["block"] if scan else mu["h_0"]
    spec = kernel["attn"]["c_attn"]["kernel"].sharding.spec
    assert ("fsdp" in spec) and ("tensor" in spec), spec


def test_checkpoint_round_trip_is_exact(tmp_path):
    """The Muon state (momenta, masked nodes, counters) survives save/restore bit for bit, and
    the step after a restore equals the step without one."""
    _, _, state, trainer = run_steps(MeshConfig(1, 1, 1, RULES), jax.devices()[:1], 2)
    ckpt = Checkpointer(tmp_path, every=1, keep=2, async_save=False)
    ckpt.save(2, state, force=True)
    ckpt.wait()
    restored = ckpt.restore(trainer.abstract_state(), 2)
    same = jax.tree.map(lambda a, b: bool(np.array_equal(a, b)), state, restored)
    assert all(jax.tree.leaves(same))
    assert jax.tree.structure(restored) == jax.tree.structure(state)
    batch = np.random.default_rng(5).integers(0, 96, (16, 17), np.int32)
    batch = jax.device_put(batch, trainer.batch_sharding)
    a, _ = trainer.step(state, batch, jax.random.key(1))
    b, _ = trainer.step(restored, batch, jax.random.key(1))
    assert all(jax.tree.leaves(jax.tree.map(lambda x, y: bool(np.array_equal(x, y)), a, b)))
    ckpt.close()


@pytest.mark.slow
def test_resume_with_muon_is_bitwise(small_corpus, tmp_path):
    """A Muon run of 10 steps == 6 steps + restart + 4 steps: identical losses and params."""
    overrides = {"opt.name": "muon", "train.steps": 10, "ckpt.every": 3}
    full, split = tmp_path / "full", tmp_path / "split"
    train(tiny_config(small_corpus, **overrides), full)
    train(tiny_config(small_corpus, **overrides), split, stop_at=6)
    resumed = train(tiny_config(small_corpus, **overrides), split)
    assert resumed.start_step == 6 and resumed.steps == 10
    a, b = losses(full), losses(split)
    assert sorted(a) == sorted(b) == list(range(1, 11))
    assert all(a[s] == b[s] for s in a), {s: (a[s], b[s]) for s in a if a[s] != b[s]}
    params = [restore_params(d, 10)[0] for d in (full, split)]
    assert all(jax.tree.leaves(jax.tree.map(lambda x, y: bool(np.array_equal(x, y)), *params)))
