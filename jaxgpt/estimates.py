"""Per-device memory estimates from shapes alone: parameters, optimizer state, FSDP-gathered
weights and activations. The planner (jaxgpt.plan) adds them up and judges the fit.

Nothing is allocated and no device need exist: parameter and optimizer shapes come from
jax.eval_shape, shardings from the config's logical-axis rules on a jax.sharding.AbstractMesh.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.sharding import AbstractMesh, AxisType, NamedSharding, PartitionSpec

from jaxgpt import sharding as sharding_lib
from jaxgpt.model import GPT, GPTConfig
from jaxgpt.optimizer import OptConfig, make_optimizer
from jaxgpt.state import opt_state_specs

_is_sharding = lambda x: isinstance(x, NamedSharding)


@dataclasses.dataclass(frozen=True)
class Activations:
    """Per-device activation bytes of one microbatch, by kind (see activation_bytes)."""

    saved_per_layer: int
    layer_working: int
    logits: int
    other: int
    n_layer: int

    @property
    def total(self) -> int:
        return self.n_layer * self.saved_per_layer + self.layer_working + self.logits + self.other


@dataclasses.dataclass(frozen=True)
class StateBytes:
    """Per-device bytes that follow from the parameter shapes and the mesh."""

    params: int
    opt: int
    gathered: int  # FSDP: weights (and their unreduced gradients) all-gathered at once


def abstract_mesh(shape: tuple[int, ...]) -> AbstractMesh:
    """A mesh of this shape with no devices behind it; Auto axes, as make_mesh builds."""
    return AbstractMesh(tuple(shape), sharding_lib.MESH_AXES, axis_types=(AxisType.Auto,) * 3)


@functools.lru_cache(maxsize=16)
def abstract_state(model: GPTConfig, opt: OptConfig) -> tuple[Any, Any, Any]:
    """(param shapes, their logical specs, optimizer-state shapes), via eval_shape only."""
    # Shapes do not depend on remat or the attention kernel, so one trace serves every remat
    # suggestion, and a cuDNN-attention config can be planned on a machine without a GPU.
    model = dataclasses.replace(model, remat="none", attention="einsum", loss_chunk=0)
    tokens = jax.ShapeDtypeStruct((1, min(8, model.block_size)), jnp.int32)
    boxed = jax.eval_shape(lambda t: GPT(model).init(jax.random.key(0), t)["params"], tokens)
    params = nn.unbox(boxed)
    # The schedule's length does not change the state's shapes.
    opt_shapes = jax.eval_shape(make_optimizer(opt, 1).init, params)
    return params, nn.get_partition_spec(boxed), opt_shapes


def state_shardings(
    params: Any, logical: Any, opt_shapes: Any, mesh: AbstractMesh, rules: sharding_lib.Rules
) -> tuple[Any, Any]:
    """Parameter and optimizer-state NamedShardings by the rules state.make_trainer uses."""
    param_sh = sharding_lib.fit_to_shapes(
        sharding_lib.logical_to_shardings(logical, mesh, rules), params
    )
    flat_sh = jax.tree_util.tree_leaves_with_path(param_sh, is_leaf=_is_sharding)
    specs = {jax.tree_util.keystr(p): s.spec for p, s in flat_sh}
    flat = jax.tree_util.tree_leaves_with_path(params)
    shapes = {jax.tree_util.keystr(p): leaf.shape for p, leaf in flat}
    opt_specs = opt_state_specs(opt_shapes, specs, shapes)
    return param_sh, jax.tree.map(lambda s: NamedSharding(mesh, s), opt_specs)


def shard_bytes(shape: tuple[int, ...], dtype: Any, sharding: NamedSharding) -> int:
    """Bytes of one device's shard; an uneven split is counted padded up to whole shards."""
    try:
        local = sharding.shard_shape(shape)
    except ValueError:  # IndivisibleError: jit refuses these, but the size still informs a plan
        spec = tuple(sharding.spec) + (None,) * (len(shape) - len(sharding.spec))
        local = tuple(
            -(-d // _split(sharding.mesh.shape, s)) for d, s in zip(shape, spec, strict=True)
        )
    return math.prod(local) * jnp.dtype(dtype).itemsize


def tree_shard_bytes(shapes: Any, shardings: Any) -> int:
    """Per-device bytes of a tree of ShapeDtypeStructs under a matching tree of shardings."""
    leaves = jax.tree.leaves(shapes)
    shs = jax.tree.leaves(shardings, is_leaf=_is_sharding)
    return sum(shard_bytes(x.shape, x.dtype, s) for x, s in zip(leaves, shs, strict=True))


def _split(mesh_shape: dict[str, int], axes: Any) -> int:
    """How many ways a dimension mapped onto these mesh axes is split."""
    if axes is None or axes is PartitionSpec.UNCONSTRAINED:
        return 1
    axes = (axes,) if isinstance(axes, str) else axes
    return math.prod(mesh_shape[a] for a in axes)


def logical_split(mesh_shape: dict[str, int], rules: sharding_lib.Rules, name: str) -> int:
    """How many ways the rules split a dimension with this logical name."""
    return _split(mesh_shape, dict(rules).get(name))


@functools.lru_cache(maxsize=64)
def state_memory(
    model: GPTConfig, opt: OptConfig, shape: tuple[int, int, int], rules: sharding_lib.Rules
) -> StateBytes:
    """Per-device parameter, optimizer-state and FSDP-gathered bytes on a mesh of this shape."""
    params, logical, opt_shapes = abstract_state(model, opt)
    param_sh, opt_sh = state_shardings(params, logical, opt_shapes, abstract_mesh(shape), rules)
    param_bytes = tree_shard_bytes(params, param_sh)
    opt_bytes = tree_shard_bytes(opt_shapes, opt_sh)
    fsdp = shape[sharding_lib.MESH_AXES.index("fsdp")]
    if fsdp == 1:
        return StateBytes(param_bytes, opt_bytes, 0)
    # The weights as one device holds them once the fsdp axis is gathered (tensor split kept).
    unsharded = dict(zip(sharding_lib.MESH_AXES, shape, strict=True), fsdp=1)
    # Fitted as the trainer's are: a dimension the tensor axis does not divide stays whole.
    gathered_sh = sharding_lib.fit_to_shapes(
        sharding_lib.logical_to_shardings(logical, abstract_mesh(tuple(unsharded.values())), rules),
        params,
    )
    per_key = {k: tree_shard_bytes(params[k], gathered_sh[k]) for k in params}
    layer = sum(v for k, v in per_key.items() if k.startswith("h")) // model.n_layer
    # Scanned, one layer is gathered at a time (weights and unreduced gradients), plus the tied
    # embedding. Unrolled, XLA shares each forward all-gather with the backward pass, so every
    # gathered weight stays live through the step: why large FSDP runs want scan_layers.
    gathered = 2 * layer + per_key["wte"] if model.scan_layers else sum(per_key.values()) + layer
    return StateBytes(param_bytes, opt_bytes, gathered)


def activation_bytes(
    model: GPTConfig, seqs: int, mesh_shape: dict[str, int], rules: sharding_lib.Rules
) -> Activations:
    """Analytic per-device activation bytes of one microbatch of `seqs` sequences.

    With b = seqs, a = bytes of model.dtype, F = model.mlp_dim (4D for GPT-2), P = b·H·T²
    attention probabilities, and t_h, t_f, t_v the tensor splits of act_heads, act_mlp and
    act_vocab, each layer keeps (the q, k, v terms are (H + 2K)/H · b·T·D with K key/value heads
    instead of 3·b·T·D, and SwiGLU's first matmul output is 2·b·T·F, its gate and up):
      none: b·T·D·a·(4 + 4/t_h) + 2·b·T·F·a/t_f + P·(4 + a')/t_h      (unrolled layers)
            block input, ln_1 out, residual, ln_2 out; q, k, v and attention output; GELU
            input and output (SwiGLU: gate, up, silu(gate) and their product); float32
            softmax output plus its model.dtype cast (a' = a if a < 4 else 0). XLA fuses the
            rest of the elementwise work away.
      none, scan_layers: b·T·D·(3a + 24) + 4·b·T·D·a/t_h + 6·b·T·F·a/t_f + P·(9 + a)/t_h
            the loop must store every residual autodiff names, fused or not: LayerNorm's
            float32 intermediates, GELU's five, the causal mask and scores before softmax.
      dots: b·T·D·a·(3 + 3/t_h) + b·T·F·a/t_f   (block input + outputs of the weight matmuls)
      names: b·T·D·a + the tensors named in model.remat_names: qkv 3·b·T·D·a/t_h, attn_out
            b·T·D·a/t_h, attn_proj and mlp_proj b·T·D·a each, mlp_fc and mlp_gelu b·T·F·a/t_f
      full: b·T·D·a                             (the block input only)
    attention="cudnn" (flash) stores a float32 log-sum-exp b·H·T instead of any P term;
    dropout > 0 adds three boolean masks 3·b·T·D to `none` (remat recomputes them).
    On top: one layer's unrolled `none` set as the working set of the layer being
    differentiated (re-run first under remat); the logits b·T·V/t_v in float32 with their
    float32 gradient (and the model.dtype copy when a < 4), or with model.loss_chunk = C only
    one chunk's b·C·V/t_v of them; embedding and ln_f outputs 2·b·T·D·a.
    """
    splits = (logical_split(mesh_shape, rules, n) for n in ("act_heads", "act_mlp", "act_vocab"))
    t = _Terms(model, seqs, jnp.dtype(model.compute_dtype).itemsize, *splits)
    logit_positions = (
        min(model.loss_chunk, model.block_size) if model.loss_chunk > 0 else model.block_size
    )
    logits = seqs * logit_positions * model.vocab_size * (8 + t.cast) // t.t_v
    return Activations(
        _saved_per_layer(t), _unrolled_layer(t), logits, 2 * t.btd * t.a, model.n_layer
    )


@dataclasses.dataclass(frozen=True)
class _Terms:
    """One microbatch's sizes, in the symbols of activation_bytes' formulas."""

    model: GPTConfig
    seqs: int  # b
    a: int  # bytes of an element of model.dtype
    t_h: int  # tensor splits of act_heads, act_mlp and act_vocab
    t_f: int
    t_v: int

    @property
    def cast(self) -> int:
        """a': the model.dtype copy of a float32 tensor, which does not exist when a = 4."""
        return self.a if self.a < 4 else 0

    @property
    def btd(self) -> int:
        return self.seqs * self.model.block_size * self.model.n_embd

    @property
    def btf(self) -> int:
        return self.seqs * self.model.block_size * self.model.mlp_dim

    @property
    def qkv(self) -> int:
        """q, k and v of a layer: (H + 2K)·Q per position, 3·D without grouped-query attention."""
        c = self.model
        return self.btd * (c.n_head + 2 * c.kv_heads) // c.n_head

    @property
    def fc(self) -> int:
        """The MLP's first matmul output: gate and up (2F) for SwiGLU, else F."""
        return self.btf * (2 if self.model.mlp == "swiglu" else 1)

    @property
    def masks(self) -> int:
        """Dropout's three boolean masks, kept only without remat."""
        return 3 * self.btd if self.model.dropout > 0 else 0

    def probs(self, per_element: int) -> int:
        """The attention probabilities P at per_element bytes each; flash attention keeps only
        a float32 log-sum-exp per row."""
        c = self.model
        if c.attention == "cudnn":
            return self.seqs * c.n_head * c.block_size * 4 // self.t_h
        return self.seqs * c.n_head * c.block_size**2 * per_element // self.t_h


def _unrolled_layer(t: _Terms) -> int:
    """What an unrolled layer keeps without remat: also the working set of any layer."""
    btd, btf, a = t.btd, t.btf, t.a
    attention = (t.qkv + btd) * a // t.t_h
    # GELU: its input and output; SwiGLU: gate and up, silu(gate) and the product.
    mlp = (t.fc + btf * (2 if t.model.mlp == "swiglu" else 1)) * a // t.t_f
    return btd * a * 4 + attention + mlp + t.probs(4 + t.cast) + t.masks


def _saved_per_layer(t: _Terms) -> int:
    """What each layer keeps for the backward pass, by model.remat."""
    c, btd, btf, a = t.model, t.btd, t.btf, t.a
    if c.remat == "none" and c.scan_layers:
        return (
            btd * (3 * a + 24)
            + (t.qkv + btd) * a // t.t_h
            + 6 * btf * a // t.t_f
            + t.probs(9 + a)
            + t.masks
        )
    if c.remat == "none":
        return _unrolled_layer(t)
    if c.remat == "dots":
        return btd * a * 3 + t.qkv * a // t.t_h + t.fc * a // t.t_f
    if c.remat == "names":
        named = {
            "qkv": t.qkv * a // t.t_h,
            "attn_out": btd * a // t.t_h,
            "attn_proj": btd * a,
            "mlp_fc": t.fc * a // t.t_f,
            "mlp_gelu": btf * a // t.t_f,
            "mlp_proj": btd * a,
        }
        return btd * a + sum(named[n] for n in set(c.remat_names))
    return btd * a  # full
