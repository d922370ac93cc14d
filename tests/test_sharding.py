"""Sharded training equals single-device training; gradient accumulation equals one big batch."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from jaxgpt.config import run_config
from jaxgpt.configs import base
from jaxgpt.model import GPT, GPTConfig
from jaxgpt.optimizer import OptConfig, make_optimizer, make_schedule
from jaxgpt.sharding import MeshConfig, batch_axis_size, make_mesh, resolve_mesh_shape
from jaxgpt.state import make_trainer

RULES = run_config(base.get_config()).mesh.rules
MODEL = GPTConfig(vocab_size=96, block_size=16, n_layer=2, n_head=4, n_embd=32)
# Adam normalizes updates, so float-summation noise in a tiny gradient can move a weight by
# up to ~lr: a modest lr keeps parameter differences comparable to the 1e-5 tolerance.
OPT = OptConfig(lr=1e-3, warmup_steps=1, weight_decay=0.1)


def run_steps(mesh_cfg: MeshConfig, devices, microbatches=1, steps=2, model_cfg=MODEL):
    """Train `steps` steps on fixed batches; return (per-step metrics, final params) on host."""
    mesh = make_mesh(mesh_cfg, devices)
    trainer = make_trainer(
        GPT(model_cfg), make_optimizer(OPT, 10), make_schedule(OPT, 10), mesh, RULES, microbatches
    )
    state = trainer.init(jax.random.key(0))
    rng = np.random.default_rng(0)
    history = []
    for _ in range(steps):
        batch = rng.integers(0, model_cfg.vocab_size, (16, model_cfg.block_size + 1), np.int32)
        state, metrics = trainer.step(
            state, jax.device_put(batch, trainer.batch_sharding), jax.random.key(1)
        )
        history.append({k: float(v) for k, v in jax.device_get(metrics).items()})
    return history, jax.device_get(state.params), state


def max_abs_diff(a, b) -> float:
    return max(jax.tree.leaves(jax.tree.map(lambda x, y: float(np.abs(x - y).max()), a, b)))


@pytest.fixture(scope="module")
def single_device():
    return run_steps(MeshConfig(1, 1, 1, RULES), jax.devices()[:1])


@pytest.mark.slow
def test_2x2x2_mesh_matches_single_device(single_device):
    """data×fsdp×tensor = 2×2×2: same losses, grad norms and parameters to 1e-5 (float32)."""
    ref_hist, ref_params, _ = single_device
    hist, params, state = run_steps(MeshConfig(2, 2, 2, RULES), jax.devices())
    for ref, got in zip(ref_hist, hist, strict=True):
        assert got["loss"] == pytest.approx(ref["loss"], abs=1e-5)
        assert got["grad_norm"] == pytest.approx(ref["grad_norm"], abs=1e-5)
    assert max_abs_diff(ref_params, params) < 1e-5
    # The state really is distributed: the attention kernel is split over fsdp and tensor.
    kernel = state.params["h_0"]["attn"]["c_attn"]["kernel"]
    assert kernel.sharding.spec == jax.sharding.PartitionSpec("fsdp", None, "tensor", None)
    assert kernel.addressable_shards[0].data.shape == (16, 3, 2, 8)
    mu = state.opt_state[1].mu["h_0"]["mlp"]["c_fc"]["kernel"]
    assert mu.sharding.spec == jax.sharding.PartitionSpec("fsdp", "tensor")


@pytest.mark.slow
def test_fsdp_only_mesh_matches_single_device(single_device):
    ref_hist, ref_params, _ = single_device
    hist, params, _ = run_steps(MeshConfig(1, 8, 1, RULES), jax.devices())
    assert [h["loss"] for h in hist] == pytest.approx([h["loss"] for h in ref_hist], abs=1e-5)
    assert max_abs_diff(ref_params, params) < 1e-5


@pytest.mark.slow
@pytest.mark.parametrize("microbatches", [2, 4])
def test_gradient_accumulation_matches_one_big_batch(single_device, microbatches):
    """k microbatches of B/k give the same step as one batch of B (on a data=2 mesh)."""
    ref_hist, ref_params, _ = single_device
    mesh_cfg = MeshConfig(2, 1, 1, RULES)
    hist, params, _ = run_steps(mesh_cfg, jax.devices()[:2], microbatches=microbatches)
    assert [h["loss"] for h in hist] == pytest.approx([h["loss"] for h in ref_hist], abs=1e-5)
    assert max_abs_diff(ref_params, params) < 1e-5


@pytest.mark.slow
def test_scanned_layers_shard_and_train():
    """scan_layers stacks blocks on a leading 'layers' axis that the rules leave unsharded."""
    cfg = GPTConfig(vocab_size=96, block_size=16, n_layer=2, n_head=4, n_embd=32, scan_layers=True)
    hist, _, state = run_steps(MeshConfig(2, 2, 2, RULES), jax.devices(), model_cfg=cfg)
    kernel = state.params["h"]["block"]["mlp"]["c_fc"]["kernel"]
    assert kernel.shape == (2, 32, 128)
    assert kernel.sharding.spec == jax.sharding.PartitionSpec(None, "fsdp", "tensor")
    assert hist[1]["loss"] < hist[0]["loss"] + 0.5 and np.isfinite(hist[1]["loss"])


def test_mesh_shape_resolution_and_errors():
    assert resolve_mesh_shape(MeshConfig(-1, 2, 2), 8) == (2, 2, 2)
    assert resolve_mesh_shape(MeshConfig(1, -1, 1), 8) == (1, 8, 1)
    with pytest.raises(ValueError, match="at most one mesh axis"):
        resolve_mesh_shape(MeshConfig(-1, -1, 1), 8)
    with pytest.raises(ValueError, match="does not divide 8"):
        resolve_mesh_shape(MeshConfig(-1, 3, 1), 8)
    with pytest.raises(ValueError, match="4 but 8 devices"):
        resolve_mesh_shape(MeshConfig(2, 2, 1), 8)
    with pytest.raises(ValueError, match=r"mesh\.tensor"):
        resolve_mesh_shape(MeshConfig(-1, 1, 0), 8)
    assert batch_axis_size(make_mesh(MeshConfig(2, 2, 2, RULES)), RULES) == 4


def test_vocab_not_divisible_by_tensor_is_replicated_not_refused():
    """vocab 97 over tensor=2: that one dimension stays whole; everything else still splits."""
    cfg = GPTConfig(vocab_size=97, block_size=16, n_layer=1, n_head=4, n_embd=32)
    hist, _, state = run_steps(MeshConfig(2, 2, 2, RULES), jax.devices(), model_cfg=cfg)
    wte = state.params["wte"]["embedding"]
    assert wte.sharding.spec == jax.sharding.PartitionSpec(None, "fsdp")
    kernel = state.params["h_0"]["mlp"]["c_fc"]["kernel"]
    assert kernel.sharding.spec == jax.sharding.PartitionSpec("fsdp", "tensor")
    assert np.isfinite(hist[-1]["loss"])
