"""Optax optimizers: Adam-family update, learning-rate schedules, clipping, weight-decay mask."""

from __future__ import annotations

from typing import Any

import jax
import optax

from jaxgpt.config.run import OPTIMIZERS, SCHEDULES, OptConfig  # noqa: F401  (re-exported)


def make_schedule(cfg: OptConfig, total_steps: int) -> optax.Schedule:
    """Linear warmup from 0 to lr, then the configured shape down to min_lr."""
    decay_total = cfg.decay_steps or total_steps
    warmup = min(cfg.warmup_steps, decay_total)
    rest = max(decay_total - warmup, 1)

    # Step s of warmup uses lr·(s+1)/(warmup+1): the first step already moves the weights.
    def warm(step):
        return cfg.lr * (step + 1) / (warmup + 1)

    if cfg.schedule == "cosine":
        after = optax.cosine_decay_schedule(cfg.lr, rest, alpha=cfg.min_lr / cfg.lr)
    elif cfg.schedule == "linear":
        after = optax.linear_schedule(cfg.lr, cfg.min_lr, rest)
    elif cfg.schedule == "constant":
        after = optax.constant_schedule(cfg.lr)
    else:  # wsd: hold the peak, then decay linearly over the last fraction
        decay_len = max(round(rest * cfg.wsd_decay_fraction), 1)
        after = optax.join_schedules(
            [
                optax.constant_schedule(cfg.lr),
                optax.linear_schedule(cfg.lr, cfg.min_lr, decay_len),
            ],
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


def make_optimizer(cfg: OptConfig, total_steps: int) -> optax.GradientTransformation:
    """clip → Adam/AdaBelief moments → decoupled weight decay → scale by -schedule."""
    parts = []
    if cfg.grad_clip > 0:
        parts.append(optax.clip_by_global_norm(cfg.grad_clip))
    if cfg.name == "adabelief":
        parts.append(optax.scale_by_belief(b1=cfg.b1, b2=cfg.b2, eps=cfg.eps))
    else:
        parts.append(optax.scale_by_adam(b1=cfg.b1, b2=cfg.b2, eps=cfg.eps))
    if cfg.name != "adam" and cfg.weight_decay > 0:
        parts.append(
            optax.add_decayed_weights(
                cfg.weight_decay, mask=lambda p: decay_mask(p, cfg.decay_embeddings)
            )
        )
    parts.append(optax.scale_by_learning_rate(make_schedule(cfg, total_steps)))
    return optax.chain(*parts)
