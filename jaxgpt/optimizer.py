"""Optax optimizers: Adam-family update, Muon for hidden matrices, learning-rate schedules,
clipping, weight-decay mask."""

from __future__ import annotations

import math
import re
from typing import Any

import jax
import optax
from optax.contrib import MuonDimensionNumbers, scale_by_muon

from jaxgpt.config.run import OPTIMIZERS, SCHEDULES, OptConfig  # noqa: F401  (re-exported)

MDN = MuonDimensionNumbers
# Top-level parameter groups that hold transformer blocks: h_0, h_1, ... (unrolled) or h (one
# scanned block whose leaves carry a leading layer axis).
BLOCK_GROUP = re.compile(r"h(_\d+)?")
# How Muon sees a hidden kernel with more than two axes (layer axis of scanned blocks not
# counted): which axes are the matrix's input (reduction) and output; every other axis is a
# batch axis, orthogonalized separately. Axes count from the end, so the same rule serves the
# scanned layout. Keyed by (module name, axes); 2-axis kernels are plain (in, out) matrices.
MUON_AXES: dict[tuple[str, int], MDN] = {
    ("c_attn", 4): MDN(-4, (-2, -1)),  # (D, 3, H, Q): q, k and v separately
    ("kv_proj", 4): MDN(-4, (-2, -1)),  # (D, 2, K, Q): k and v separately (grouped queries)
    ("q_proj", 3): MDN(-3, (-2, -1)),  # (D, H, Q)
    ("k_proj", 3): MDN(-3, (-2, -1)),  # (D, K, Q)
    ("v_proj", 3): MDN(-3, (-2, -1)),  # (D, K, Q)
    ("c_proj", 3): MDN((-3, -2), -1),  # attention output (H, Q, D)
    ("o_proj", 3): MDN((-3, -2), -1),  # (H, Q, D)
    ("c_fc", 3): MDN(-3, -1),  # SwiGLU (D, 2, F): gate and up separately
}


def make_schedule(cfg: OptConfig, total_steps: int, peak: float | None = None) -> optax.Schedule:
    """Linear warmup from 0 to the peak (cfg.lr unless given), then the configured shape down
    to min_lr (scaled by peak / lr when another peak is given, e.g. Muon's)."""
    lr = cfg.lr if peak is None else peak
    min_lr = cfg.min_lr * lr / cfg.lr
    decay_total = cfg.decay_steps or total_steps
    warmup = min(cfg.warmup_steps, decay_total)
    rest = max(decay_total - warmup, 1)

    # Step s of warmup uses lr·(s+1)/(warmup+1): the first step already moves the weights.
    def warm(step):
        return lr * (step + 1) / (warmup + 1)

    if cfg.schedule == "cosine":
        after = optax.cosine_decay_schedule(lr, rest, alpha=min_lr / lr)
    elif cfg.schedule == "linear":
        after = optax.linear_schedule(lr, min_lr, rest)
    elif cfg.schedule == "constant":
        after = optax.constant_schedule(lr)
    else:  # wsd: hold the peak, then decay linearly over the last fraction
        decay_len = max(round(rest * cfg.wsd_decay_fraction), 1)
        after = optax.join_schedules(
            [optax.constant_schedule(lr), optax.linear_schedule(lr, min_lr, decay_len)],
            [rest - decay_len],
        )
    if warmup == 0:
        return after
    return optax.join_schedules([warm, after], [warmup])


def decay_mask(params: Any, decay_embeddings: bool = False) -> Any:
    """True for weight matrices; biases, norm scales and (by default) embeddings are not decayed."""

    def wants_decay(path, _leaf) -> bool:
        name = getattr(path[-1], "key", "")
        return name == "kernel" or (decay_embeddings and name == "embedding")

    return jax.tree_util.tree_map_with_path(wants_decay, params)


def muon_spec(path: tuple, leaf: Any) -> MDN | None:
    """How Muon orthogonalizes this parameter, or None when AdamW updates it.

    Muon takes the kernels inside transformer blocks (attention and MLP projections, whatever
    their names); embeddings, the output layer, norms and biases stay with AdamW.
    """
    names = [str(getattr(k, "key", k)) for k in path]
    if names[-1] != "kernel" or not BLOCK_GROUP.fullmatch(names[0]):
        return None
    axes = len(leaf.shape) - (names[0] == "h")  # the scanned layout's layer axis is a batch axis
    if axes == 2:
        return MDN(-2, -1)
    spec = MUON_AXES.get((names[-2], axes))
    if spec is None:
        raise ValueError(
            f"opt.name=muon: no rule for the {axes}-axis kernel {'/'.join(names)} of shape "
            f"{tuple(leaf.shape)}; add its (input, output) axes to MUON_AXES in "
            "jaxgpt/optimizer.py, or use opt.name=adamw"
        )
    return spec


def muon_dims(params: Any) -> Any:
    """The tree of `muon_spec`s: MuonDimensionNumbers on hidden kernels, None elsewhere. On
    the Muon branch's masked tree, optax's MaskedNodes pass through untouched."""
    return jax.tree_util.tree_map_with_path(muon_spec, params)


def muon_labels(params: Any) -> Any:
    """ "muon" or "adam" for every parameter: which branch of the partition updates it."""
    return jax.tree_util.tree_map_with_path(
        lambda path, leaf: "adam" if muon_spec(path, leaf) is None else "muon", params
    )


def _fan(shape: tuple[int, ...], axes: int | tuple[int, ...]) -> int:
    return math.prod(shape[a] for a in ((axes,) if isinstance(axes, int) else axes))


def scale_by_fan_ratio() -> optax.GradientTransformation:
    """Multiply each orthogonalized update by √max(1, fan_out / fan_in), Muon's width rule
    (optax applies the same one inside contrib.muon, but does not export it)."""

    def scale(update, spec: MDN):
        ratio = _fan(update.shape, spec.output_axis) / _fan(update.shape, spec.reduction_axis)
        return update * math.sqrt(max(1.0, ratio))

    def update_fn(updates, state, params=None):
        del params
        specs = muon_dims(updates)
        return jax.tree.map(scale, updates, specs, is_leaf=lambda x: isinstance(x, MDN)), state

    return optax.GradientTransformation(optax.init_empty_state, update_fn)


def _adam(cfg: OptConfig, total_steps: int) -> list[optax.GradientTransformation]:
    """Adam/AdaBelief moments → decoupled weight decay (masked) → scale by -schedule, as the
    parts of a chain (a flat chain keeps the optimizer state's layout of earlier runs)."""
    if cfg.name == "adabelief":
        parts = [optax.scale_by_belief(b1=cfg.b1, b2=cfg.b2, eps=cfg.eps)]
    else:
        parts = [optax.scale_by_adam(b1=cfg.b1, b2=cfg.b2, eps=cfg.eps)]
    if cfg.name != "adam" and cfg.weight_decay > 0:
        parts.append(
            optax.add_decayed_weights(
                cfg.weight_decay, mask=lambda p: decay_mask(p, cfg.decay_embeddings)
            )
        )
    parts.append(optax.scale_by_learning_rate(make_schedule(cfg, total_steps)))
    return parts


def _muon(cfg: OptConfig, total_steps: int) -> optax.GradientTransformation:
    """optax's Muon (Nesterov momentum, Newton-Schulz orthogonalization, √max(1, out/in)
    shape scaling) → decoupled weight decay → scale by -schedule peaking at muon_lr."""
    parts = [
        scale_by_muon(
            ns_steps=cfg.muon_ns_steps,
            beta=cfg.muon_momentum,
            nesterov=True,
            weight_dimension_numbers=muon_dims,
        ),
        scale_by_fan_ratio(),
    ]
    if cfg.muon_weight_decay > 0:
        parts.append(optax.add_decayed_weights(cfg.muon_weight_decay))
    parts.append(optax.scale_by_learning_rate(make_schedule(cfg, total_steps, cfg.muon_lr)))
    return optax.chain(*parts)


def make_optimizer(cfg: OptConfig, total_steps: int) -> optax.GradientTransformation:
    """clip → the update of opt.name. muon: optax.partition of Muon for the hidden kernels and
    AdamW (opt.lr, opt.weight_decay, the same decay mask) for everything else."""
    parts = []
    if cfg.grad_clip > 0:
        parts.append(optax.clip_by_global_norm(cfg.grad_clip))
    if cfg.name == "muon":
        branches = {"muon": _muon(cfg, total_steps), "adam": optax.chain(*_adam(cfg, total_steps))}
        parts.append(optax.partition(branches, muon_labels))
    else:
        parts.extend(_adam(cfg, total_steps))
    return optax.chain(*parts)
