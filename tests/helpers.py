"""Shared helpers for the tests: a tiny run config on a test corpus, and reading losses back.

Fixtures that wrap them live in conftest.py; test modules import these plain functions when they
build configs at module level or vary them per test.
"""

from __future__ import annotations

import json
from pathlib import Path

import jax
import ml_collections
import numpy as np

from jaxgpt import metrics as metrics_lib
from jaxgpt.config import load_config_file, override, run_config
from jaxgpt.model import GPT
from jaxgpt.optimizer import OptConfig, make_optimizer, make_schedule
from jaxgpt.sharding import make_mesh
from jaxgpt.state import make_trainer


def tiny_config(corpus: Path, **overrides) -> ml_collections.ConfigDict:
    """A 2-layer char model on the test corpus; batch 16 splits over the 8 test devices."""
    c = load_config_file("tiny")
    settings = {
        "data.sources": f"text:{corpus}",
        "data.tokenizer.model_type": "char",
        "data.tokenizer.vocab_size": 0,
        "model.n_layer": 2,
        "model.n_head": 2,
        "model.n_embd": 32,
        "model.block_size": 32,
        "model.dropout": 0.1,
        "train.steps": 20,
        "train.batch_size": 16,
        "train.log_every": 1,
        "train.eval_every": 10,
        "train.eval_tokens": 2048,
        "train.sample_tokens": 8,
        "opt.warmup_steps": 2,
        "opt.lr": 3e-3,
        "ckpt.every": 5,
    }
    settings.update(overrides)
    return override(c, **settings)


def losses(workdir: Path) -> dict[int, float]:
    return {
        r["step"]: r["loss"] for r in metrics_lib.read_metrics(workdir) if r.get("loss") is not None
    }


# SFT: planted prompt/completion pairs only memorizing can predict.
def planted_pairs(n: int = 48) -> list[tuple[str, str]]:
    """name=CODE pairs with random codes: only memorizing the mapping predicts a completion."""
    rng = np.random.default_rng(0)
    letters = list("abcdefghijklmnopqrstuvwxyz")
    return [(f"item{i}=", "".join(rng.choice(letters, 4)) + ";") for i in range(n)]


def write_jsonl(path, pairs, extra_lines=()):
    lines = [json.dumps({"prompt": p, "completion": c}) for p, c in pairs]
    path.write_text("\n".join([*lines, *extra_lines]) + "\n")
    return path


def sft_config(jsonl, **overrides):
    settings = {
        "data.format": "sft",
        "data.sources": f"jsonl:{jsonl}",
        "data.val_fraction": 0.1,
        "model.block_size": 16,
        "model.n_embd": 64,
        "model.dropout": 0.0,
        "train.sample_tokens": 0,
        "train.eval_every": 0,
    }
    return tiny_config(jsonl, **{**settings, **overrides})


def mesh_steps(model_cfg, mesh_cfg, devices, steps: int = 2, token_high: int = 0):
    """`steps` AdamW steps of model_cfg on `devices` laid out as mesh_cfg, on fixed random
    batches of 16 rows (token ids below token_high, default the vocabulary): the per-step
    metrics, the final params (on the host) and the final state. Compare a mesh with one
    device by calling it twice."""
    rules = run_config(load_config_file("tiny")).mesh.rules
    opt = OptConfig(lr=1e-3, warmup_steps=1, weight_decay=0.1)
    trainer = make_trainer(
        GPT(model_cfg), make_optimizer(opt, 10), make_schedule(opt, 10),
        make_mesh(mesh_cfg, devices), rules, 1,
    )  # fmt: skip
    state = trainer.init(jax.random.key(0))
    rng = np.random.default_rng(0)
    history = []
    for _ in range(steps):
        shape = (16, model_cfg.block_size + 1)
        batch = rng.integers(0, token_high or model_cfg.vocab_size, shape, np.int32)
        batch = jax.device_put(batch, trainer.batch_sharding)
        state, metrics = trainer.step(state, batch, jax.random.key(1))
        history.append({k: float(v) for k, v in jax.device_get(metrics).items()})
    return history, jax.device_get(state.params), state
