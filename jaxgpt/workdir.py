"""Open a finished (or running) training workdir: its model config, weights and tokenizer."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from jaxgpt import config as config_lib
from jaxgpt.data.tokenizer import load_tokenizer
from jaxgpt.model import GPT, GPTConfig


@dataclasses.dataclass
class Run:
    """What a workdir holds, loaded for inference on the local devices."""

    path: Path
    config: dict
    model: GPT
    params: Any
    tokenizer: Any
    step: int

    @property
    def gpt_config(self) -> GPTConfig:
        return self.model.config


def load_run(workdir: str | Path, step: int | None = None) -> Run:
    """Config from config.json, params from the latest (or given) checkpoint, the tokenizer."""
    path = Path(workdir)
    config_path = path / "config.json"
    if not config_path.is_file():
        raise FileNotFoundError(
            f"{path} is not a jaxgpt workdir ({config_path} is missing); "
            "give the --workdir of a training run"
        )
    config = json.loads(config_path.read_text())
    model_cfg = config_lib.model_config(config["model"], config["model"]["vocab_size"])
    manager = ocp.CheckpointManager(
        path.resolve() / "checkpoints", item_handlers=ocp.StandardCheckpointHandler()
    )
    step = manager.latest_step() if step is None else step
    if step is None:
        raise FileNotFoundError(f"no checkpoint in {path / 'checkpoints'}; train first")
    # Restore onto this process's first device whatever mesh the run was trained on: the
    # target tree (from the checkpoint's own metadata) tells Orbax the shapes and placement.
    metadata = manager.item_metadata(step)
    device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    target = jax.tree.map(
        lambda m: jax.ShapeDtypeStruct(tuple(m.shape), m.dtype, sharding=device),
        getattr(metadata, "tree", metadata),
        is_leaf=lambda m: hasattr(m, "shape"),
    )
    state = manager.restore(step, args=ocp.args.StandardRestore(target))
    params = jax.tree.map(np.asarray, state["params"])
    tokenizer_files = [path / n for n in ("tokenizer.json", "tokenizer.model")]
    tokenizer_file = next((f for f in tokenizer_files if f.is_file()), None)
    if tokenizer_file is None:
        raise FileNotFoundError(f"{path} has no tokenizer.model or tokenizer.json")
    eot_token = config.get("data", {}).get("tokenizer", {}).get("eot_token", "")
    tokenizer = load_tokenizer(tokenizer_file, eot_token)
    return Run(path, config, GPT(model_cfg), params, tokenizer, step)
