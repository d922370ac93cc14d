"""The train state, its shardings, and the pure train/eval step functions."""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from jaxgpt import sharding as sharding_lib
from jaxgpt.loss import chunked_cross_entropy
from jaxgpt.model import GPT, output_table


@flax.struct.dataclass
class TrainState:
    step: jax.Array
    params: Any
    opt_state: Any
    # Updates not applied because the loss or gradient norm was NaN or infinite (int32 scalars):
    # in total, in a row ending at `step`, and the step number of the latest (0 = none).
    skipped: jax.Array
    skipped_in_row: jax.Array
    last_skipped: jax.Array

    @classmethod
    def fresh(cls, params: Any, opt_state: Any) -> TrainState:
        """A step-0 state (inside jit: the counters are placed as the step counter is)."""
        zero = jnp.zeros((), jnp.int32)
        return cls(zero, params, opt_state, zero, zero, zero)


COUNTERS = ("skipped", "skipped_in_row", "last_skipped")  # absent from older checkpoints


def split_targets(tokens_BT1: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """(inputs [B, T], targets [B, T], loss weights [B, T] float32) of a batch of windows.

    A negative entry -(t+1) is token t that is not trained on as a target (weight 0): the prompt
    and padding of supervised fine-tuning examples (see data/sft.py). Plain text has none, so
    every target has weight 1. One int array carries both, through the input pipeline, sharding and
    microbatching unchanged.
    """
    weights_BT = (tokens_BT1[:, 1:] >= 0).astype(jnp.float32)
    tokens_BT1 = jnp.where(tokens_BT1 < 0, -tokens_BT1 - 1, tokens_BT1)
    return tokens_BT1[:, :-1], tokens_BT1[:, 1:], weights_BT


def loss_weight(tokens_BT1: jax.Array) -> jax.Array:
    """How many targets of the batch count (float32 scalar, at least 1 to keep division safe)."""
    return jnp.maximum(jnp.sum(tokens_BT1[:, 1:] >= 0, dtype=jnp.float32), 1.0)


def next_token_loss(
    params: Any,
    model: GPT,
    tokens_BT1: jax.Array,
    rng: jax.Array | None,
    denominator: jax.Array | None = None,
) -> jax.Array:
    """Cross-entropy (float32) of predicting tokens[:, 1:] from tokens[:, :-1], summed over the
    weighted targets and divided by `denominator` (default: their count, i.e. the mean)."""
    inputs_BT, targets_BT, weights_BT = split_targets(tokens_BT1)
    deterministic = rng is None
    variables = {"params": params}
    rngs = None if deterministic else {"dropout": rng}
    if denominator is None:
        denominator = loss_weight(tokens_BT1)
    if model.config.loss_chunk > 0:
        # Same function, but the [B, T, V] logits are made and dropped a chunk at a time.
        hidden_BTD = model.apply(
            variables, inputs_BT, deterministic, rngs=rngs, method=GPT.hidden_states
        )
        emb_VD = output_table(params)
        total = chunked_cross_entropy(
            hidden_BTD, emb_VD, targets_BT, weights_BT, model.config.loss_chunk
        )
        return total / denominator
    logits_BTV = model.apply(variables, inputs_BT, deterministic=deterministic, rngs=rngs)
    losses_BT = optax.softmax_cross_entropy_with_integer_labels(
        logits_BTV.astype(jnp.float32), targets_BT
    )
    return jnp.sum(losses_BT * weights_BT) / denominator


def train_step(
    state: TrainState,
    tokens_BT1: jax.Array,
    rng: jax.Array,
    *,
    model: GPT,
    tx: optax.GradientTransformation,
    schedule: optax.Schedule,
    microbatches: int,
    dropout: bool,
) -> tuple[TrainState, dict[str, jax.Array]]:
    """One optimizer step on the global batch, accumulating gradients over microbatches."""
    rng = jax.random.fold_in(rng, state.step)
    grad_fn = jax.value_and_grad(next_token_loss)
    # Every microbatch divides by the whole batch's target count, so the summed losses and
    # gradients are the batch mean even when microbatches hold different numbers of targets.
    denominator = loss_weight(tokens_BT1)

    def micro(i, tokens):
        dropout_rng = jax.random.fold_in(rng, i) if dropout else None
        return grad_fn(state.params, model, tokens, dropout_rng, denominator)

    if microbatches == 1:
        loss, grads = micro(0, tokens_BT1)
    else:
        # Microbatch j takes rows j, j+k, j+2k, ...: every device keeps an equal share of each
        # microbatch, so no data moves between devices to form them.
        B, T1 = tokens_BT1.shape
        tokens_KMT1 = tokens_BT1.reshape(B // microbatches, microbatches, T1).swapaxes(0, 1)
        tokens_KMT1 = nn.with_logical_constraint(tokens_KMT1, (None, "batch", None))
        zeros = jax.tree.map(lambda p: jnp.zeros(p.shape, jnp.float32), state.params)

        def body(carry, inputs):
            loss_sum, grad_sum = carry
            i, tokens = inputs
            loss, grads = micro(i, tokens)
            grad_sum = jax.tree.map(lambda a, g: a + g.astype(jnp.float32), grad_sum, grads)
            return (loss_sum + loss, grad_sum), None

        (loss, grad_sum), _ = jax.lax.scan(
            body, (jnp.zeros((), jnp.float32), zeros), (jnp.arange(microbatches), tokens_KMT1)
        )
        grads = jax.tree.map(lambda g, p: g.astype(p.dtype), grad_sum, state.params)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    grad_norm = optax.tree.norm(grads)
    new = _unless_nonfinite(state, params, opt_state, jnp.isfinite(loss) & jnp.isfinite(grad_norm))
    metrics = {"loss": loss, "grad_norm": grad_norm, "lr": schedule(state.step)}
    return new, metrics | {"skipped": new.skipped}


def _unless_nonfinite(state: TrainState, params: Any, opt_state: Any, finite: jax.Array):
    """The next state: the update applied if `finite`, else the old params and optimizer state
    with the skip counted. The step advances either way, so the batch order and schedule go on.
    (The select fuses into the update's element-wise kernels: it costs no extra pass.)"""
    keep = lambda new, old: jnp.where(finite, new, old)
    step = state.step + 1
    bad = 1 - finite.astype(jnp.int32)
    return TrainState(
        step=step,
        params=jax.tree.map(keep, params, state.params),
        opt_state=jax.tree.map(keep, opt_state, state.opt_state),
        skipped=state.skipped + bad,
        skipped_in_row=(state.skipped_in_row + 1) * bad,
        last_skipped=jnp.where(finite, state.last_skipped, step),
    )


def eval_step(params: Any, tokens_BT1: jax.Array, *, model: GPT) -> jax.Array:
    """[summed loss, number of targets] of a batch, so batches combine into an exact mean."""
    return jnp.stack(
        [next_token_loss(params, model, tokens_BT1, None, 1.0), loss_weight(tokens_BT1)]
    )


@dataclasses.dataclass
class Trainer:
    """Jitted step functions bound to a model, optimizer and mesh; built by make_trainer."""

    model: GPT
    tx: optax.GradientTransformation
    mesh: Mesh
    rules: sharding_lib.Rules
    state_shardings: TrainState
    batch_sharding: NamedSharding
    init: Callable[[jax.Array], TrainState]
    state_shapes: TrainState
    step: Callable[[TrainState, jax.Array, jax.Array], tuple[TrainState, dict]]
    eval: Callable[[Any, jax.Array], jax.Array]

    def abstract_state(self) -> TrainState:
        """ShapeDtypeStructs with shardings, as restore targets."""
        return jax.tree.map(
            lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh),
            self.state_shapes,
            self.state_shardings,
        )


def _in_mesh(fn: Callable, mesh: Mesh, rules: sharding_lib.Rules) -> Callable:
    """Trace and run fn with the mesh and logical rules that the model's constraints read."""

    @functools.wraps(fn)
    def wrapped(*args):
        with jax.set_mesh(mesh), nn.logical_axis_rules(list(rules)):
            return fn(*args)

    return wrapped


def opt_state_specs(abstract_opt: Any, param_specs: dict[str, PartitionSpec], shapes) -> Any:
    """Optimizer leaves that mirror a parameter (same path suffix and shape) share its spec."""

    def spec(path, leaf):
        for n in range(len(path)):
            key = jax.tree_util.keystr(path[n:])
            if key in param_specs and shapes[key] == leaf.shape:
                return param_specs[key]
        return PartitionSpec()

    return jax.tree_util.tree_map_with_path(spec, abstract_opt)


def make_trainer(
    model: GPT,
    tx: optax.GradientTransformation,
    schedule: optax.Schedule,
    mesh: Mesh,
    rules: sharding_lib.Rules,
    microbatches: int = 1,
) -> Trainer:
    """Shardings from logical names, then jitted init/step/eval; state is never built whole."""
    dummy, abstract_params, param_shardings = _params_layout(model, mesh, rules)
    state_shardings = _state_shardings(tx, abstract_params, param_shardings, mesh)

    def init_fn(rng: jax.Array) -> TrainState:
        params = nn.unbox(model.init(rng, dummy)["params"])
        return TrainState.fresh(params, tx.init(params))

    with jax.set_mesh(mesh), nn.logical_axis_rules(list(rules)):
        state_shapes = jax.eval_shape(init_fn, jax.random.key(0))
    batch_sharding = sharding_lib.named(mesh, rules, "batch", None)
    replicated = sharding_lib.replicated(mesh)
    step = functools.partial(
        train_step,
        model=model,
        tx=tx,
        schedule=schedule,
        microbatches=microbatches,
        dropout=model.config.dropout > 0,
    )
    return Trainer(
        model=model,
        tx=tx,
        mesh=mesh,
        rules=rules,
        state_shardings=state_shardings,
        batch_sharding=batch_sharding,
        init=_in_mesh(jax.jit(init_fn, out_shardings=state_shardings), mesh, rules),
        state_shapes=state_shapes,
        step=_in_mesh(
            jax.jit(
                step,
                in_shardings=(state_shardings, batch_sharding, replicated),
                out_shardings=(state_shardings, replicated),
                donate_argnums=(0,),
            ),
            mesh,
            rules,
        ),
        eval=_eval_program(model, mesh, rules, param_shardings),
    )


def _state_shardings(tx, abstract_params: Any, param_shardings: Any, mesh: Mesh) -> TrainState:
    """The train state's shardings: params by their logical names, optimizer leaves as the
    parameters they mirror, the step counter replicated."""
    specs = {
        jax.tree_util.keystr(p): s.spec
        for p, s in jax.tree_util.tree_leaves_with_path(
            param_shardings, is_leaf=lambda x: isinstance(x, NamedSharding)
        )
    }
    flat = jax.tree_util.tree_leaves_with_path(abstract_params)
    shapes = {jax.tree_util.keystr(p): leaf.shape for p, leaf in flat}
    opt_specs = opt_state_specs(jax.eval_shape(tx.init, abstract_params), specs, shapes)
    replicated = sharding_lib.replicated(mesh)
    return TrainState(
        step=replicated,
        params=param_shardings,
        opt_state=jax.tree.map(lambda s: NamedSharding(mesh, s), opt_specs),
        skipped=replicated,
        skipped_in_row=replicated,
        last_skipped=replicated,
    )


def _params_layout(model: GPT, mesh: Mesh, rules: sharding_lib.Rules) -> tuple[Any, Any, Any]:
    """(dummy input, abstract params, param shardings) from the model's logical axis names."""
    n_batch = sharding_lib.batch_axis_size(mesh, rules)
    dummy = jnp.zeros((n_batch, model.config.block_size), jnp.int32)
    boxed = jax.eval_shape(lambda r: model.init(r, dummy)["params"], jax.random.key(0))
    abstract_params = nn.unbox(boxed)
    param_shardings = sharding_lib.fit_to_shapes(
        sharding_lib.logical_to_shardings(nn.get_partition_spec(boxed), mesh, rules),
        abstract_params,
    )
    return dummy, abstract_params, param_shardings


def _eval_program(model: GPT, mesh: Mesh, rules: sharding_lib.Rules, param_shardings) -> Callable:
    batch_sharding = sharding_lib.named(mesh, rules, "batch", None)
    return _in_mesh(
        jax.jit(
            functools.partial(eval_step, model=model),
            in_shardings=(param_shardings, batch_sharding),
            out_shardings=sharding_lib.replicated(mesh),
        ),
        mesh,
        rules,
    )


@dataclasses.dataclass
class Scorer:
    """The sharded eval step without an optimizer: for scoring trained params."""

    params_sharding: Any
    batch_sharding: NamedSharding
    eval: Callable[[Any, jax.Array], jax.Array]


def make_scorer(model: GPT, mesh: Mesh, rules: sharding_lib.Rules) -> Scorer:
    """Shardings and the jitted eval step of `model` on `mesh` (params placed by the rules)."""
    _, _, param_shardings = _params_layout(model, mesh, rules)
    batch_sharding = sharding_lib.named(mesh, rules, "batch", None)
    return Scorer(
        param_shardings, batch_sharding, _eval_program(model, mesh, rules, param_shardings)
    )
