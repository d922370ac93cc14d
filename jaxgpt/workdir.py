"""Open a finished (or running) training workdir: its model config, weights and tokenizer."""

from __future__ import annotations

import dataclasses
import json
import sys
from collections.abc import Callable
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from jaxgpt import config as config_lib
from jaxgpt import storage
from jaxgpt.checkpoint import (
    UnreadableCheckpointsError,
    committed_steps,
    manager_options,
    none_readable_message,
    one_line,
    quiet_abandoned_reads,
    restore_with_checksums,
)
from jaxgpt.config import AnyPath
from jaxgpt.data.tokenizer import tokenizer_from_bytes
from jaxgpt.integrity import host_checksums, mismatch_message, mismatches
from jaxgpt.model import GPT, GPTConfig


@dataclasses.dataclass
class Run:
    """What a workdir holds, loaded for inference on the local devices."""

    path: AnyPath
    config: dict
    model: GPT
    params: Any
    tokenizer: Any
    step: int

    @property
    def gpt_config(self) -> GPTConfig:
        return self.model.config


def restore_params(
    workdir: str | AnyPath, step: int | None = None, warn: Callable[[str], None] | None = None
) -> tuple[dict[str, Any], int]:
    """Just the params of a checkpoint, as numpy arrays on the host.

    By default the run's result: its best params (WORKDIR/best, kept with ckpt.keep_best) if
    it has them, else its latest checkpoint. A given step is looked up among both. Without a
    given step, one that cannot be read is named (`warn`, default stderr) and the next one
    tried (best, then checkpoints newest first); nothing is moved, since readers (serve,
    evaluate) may run next to the training that owns the workdir.
    """
    root = config_lib.absolute(config_lib.location(workdir, "workdir"))
    best, checkpoints = root / "best", root / "checkpoints"
    if step is not None:
        if step in committed_steps(best):
            return _restore_params(best, step)
        return _restore_params(checkpoints, step)
    candidates = [(d, s) for d in (best, checkpoints) for s in reversed(committed_steps(d))]
    if not candidates:
        raise FileNotFoundError(f"no checkpoints in {checkpoints}")
    problems = []
    quiet_abandoned_reads()
    for directory, candidate in candidates:
        try:
            return _restore_params(directory, candidate)
        except Exception as e:  # TensorStore, JSON, missing files: all mean unreadable
            problems.append((candidate, f"({directory.name}) {one_line(e)}"))
            (warn or _stderr)(
                f"checkpoint {directory / str(candidate)} cannot be read: {problems[-1][1]}"
            )
    raise UnreadableCheckpointsError(none_readable_message(root, problems))


def _stderr(message: str) -> None:
    print(message, file=sys.stderr)


def _restore_params(directory: AnyPath, step: int | None) -> tuple[dict[str, Any], int]:
    if not directory.is_dir():
        raise FileNotFoundError(f"no checkpoints in {directory}")
    # Both items a step holds have a handler, or Orbax warns that "checksums" cannot be restored.
    manager = ocp.CheckpointManager(
        directory,
        item_handlers={
            "default": ocp.PyTreeCheckpointHandler(),
            "checksums": ocp.JsonCheckpointHandler(),
        },
        options=manager_options(directory, create=False),
    )
    try:
        steps = manager.all_steps()
        if not steps:
            raise FileNotFoundError(f"no checkpoints in {directory}")
        step = max(steps) if step is None else step
        if step not in steps:
            raise FileNotFoundError(f"no checkpoint for step {step} in {directory} (have {steps})")
        tree = manager.item_metadata(step)["default"]
        shapes = getattr(tree, "tree", tree)["params"]
        # Restoring as numpy skips the optimizer state and the training run's device layout.
        numpy_args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), shapes)
        restored, sums = restore_with_checksums(
            manager,
            directory / str(step),
            ocp.args.PyTreeRestore(
                item={"params": jax.tree.map(lambda m: np.zeros((), m.dtype), shapes)},
                restore_args={"params": numpy_args},
                partial_restore=True,
            ),
        )
    finally:
        manager.close()
    params = restored["params"]
    if sums is not None and (bad := mismatches(sums, host_checksums(params, "params/"))):
        raise ValueError(mismatch_message(f"checkpoint {directory / str(step)}", bad))
    return params, step


def workdir_config(workdir: str | AnyPath) -> tuple[GPTConfig, dict[str, Any]]:
    """The resolved GPTConfig of a training run, and its whole config.json."""
    config_path = config_lib.location(workdir, "workdir") / "config.json"
    storage.check_readable(config_path.parent, "workdir")
    if not config_path.is_file():
        raise FileNotFoundError(
            f"{workdir} is not a jaxgpt workdir ({config_path} is missing); "
            "give the --workdir of a training run"
        )
    config = json.loads(config_path.read_text())
    return config_lib.model_config(config["model"], config["model"]["vocab_size"]), config


def load_run(workdir: str | AnyPath, step: int | None = None) -> Run:
    """Config from config.json, params (see restore_params: best, else latest, or `step`),
    and the tokenizer."""
    path = config_lib.location(workdir, "workdir")
    model_cfg, config = workdir_config(path)
    params, step = restore_params(path, step)
    tokenizer_files = [path / n for n in ("tokenizer.json", "tokenizer.model")]
    tokenizer_file = next((f for f in tokenizer_files if f.is_file()), None)
    if tokenizer_file is None:
        raise FileNotFoundError(f"{path} has no tokenizer.model or tokenizer.json")
    eot_token = config.get("data", {}).get("tokenizer", {}).get("eot_token", "")
    tokenizer = tokenizer_from_bytes(tokenizer_file.name, tokenizer_file.read_bytes(), eot_token)
    return Run(path, config, GPT(model_cfg), params, tokenizer, step)
