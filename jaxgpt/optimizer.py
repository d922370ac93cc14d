"""Optax optimizers: Adam-family update, learning-rate schedules, clipping, weight-decay mask."""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import optax

OPTIMIZERS = ("adamw", "adam", "adabelief")
SCHEDULES = ("cosine", "linear", "constant", "wsd")


@dataclasses.dataclass(frozen=True)
class OptConfig:
    """Optimizer settings; see configs/base.py for the meaning of each field."""

    name: str = "adamw"
    lr: float = 6e-4
    min_lr: float = 6e-5
    schedule: str = "cosine"
    warmup_steps: int = 2000
    decay_steps: int = 0
    wsd_decay_fraction: float = 0.2
    b1: float = 0.9
    b2: float = 0.95
    eps: float = 1e-8
    weight_decay: float = 0.1
    decay_embeddings: bool = False
    grad_clip: float = 1.0

    def __post_init__(self):
        if self.name not in OPTIMIZERS:
            raise ValueError(f"opt.name={self.name!r} is not one of {OPTIMIZERS}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"opt.schedule={self.schedule!r} is not one of {SCHEDULES}")
        if self.warmup_steps < 0 or self.decay_steps < 0:
            raise ValueError("opt.warmup_steps and opt.decay_steps must be >= 0")
        if not 0.0 <= self.wsd_decay_fraction <= 1.0:
            raise ValueError(
                f"opt.wsd_decay_fraction must be in [0, 1], got {self.wsd_decay_fraction}"
            )


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
