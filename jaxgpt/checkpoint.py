"""Orbax checkpoints of the train state: periodic async saves, keep-N, resume, shape checks.

Orbax writes each checkpoint to a temporary directory and renames it when complete, so a crash or
kill mid-save leaves the previous checkpoints intact and the partial one is never restored.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp


def _path_name(path: tuple) -> str:
    # Orbax stores namedtuples and lists as dicts: compare "opt_state/1/mu/wte" spellings.
    parts = []
    for key in path:
        for attr in ("key", "idx", "name"):
            if hasattr(key, attr):
                parts.append(str(getattr(key, attr)))
                break
    return "/".join(parts)


def shapes_by_path(tree: Any) -> dict[str, tuple[int, ...]]:
    return {
        _path_name(path): tuple(leaf.shape)
        for path, leaf in jax.tree_util.tree_leaves_with_path(tree)
        if hasattr(leaf, "shape")
    }


class Checkpointer:
    """Saves and restores the train state under WORKDIR/checkpoints."""

    def __init__(self, workdir: str | Path, every: int, keep: int, async_save: bool = True):
        self.directory = Path(workdir).resolve() / "checkpoints"
        self.every = max(every, 1)
        self.manager = ocp.CheckpointManager(
            self.directory,
            item_handlers=ocp.StandardCheckpointHandler(),
            options=ocp.CheckpointManagerOptions(
                max_to_keep=keep,
                enable_async_checkpointing=async_save,
                create=True,
            ),
        )

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def save(self, step: int, state: Any, force: bool = False) -> bool:
        """Save if step is on the interval (or force); returns whether a save started."""
        # The interval is checked here: Orbax's own save_interval_steps also saves whenever no
        # checkpoint exists yet, i.e. at the first step of every run.
        if not force and step % self.every:
            return False
        return self.manager.save(step, args=ocp.args.StandardSave(state), force=True)

    def restore(self, abstract_state: Any, step: int | None = None) -> Any:
        """Restore into the shapes/shardings of abstract_state (ShapeDtypeStructs)."""
        step = self.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"no checkpoint in {self.directory}")
        self._check_shapes(step, abstract_state)
        return self.manager.restore(step, args=ocp.args.StandardRestore(abstract_state))

    def _check_shapes(self, step: int, abstract_state: Any) -> None:
        stored = self.manager.item_metadata(step)
        stored_tree = getattr(stored, "tree", stored)
        stored_shapes = shapes_by_path(stored_tree)
        wanted = shapes_by_path(abstract_state)
        problems = []
        # Parameters first: they say what differs in words a user knows (wte, h_0, ...).
        for key in sorted(
            set(stored_shapes) | set(wanted), key=lambda k: (not k.startswith("params"), k)
        ):
            have, want = stored_shapes.get(key), wanted.get(key)
            if have != want:
                problems.append(f"  {key}: checkpoint {have}, config {want}")
        if problems:
            shown = "\n".join(problems[:10])
            more = f"\n  ... and {len(problems) - 10} more" if len(problems) > 10 else ""
            raise ValueError(
                f"checkpoint {self.directory / str(step)} does not match the model config "
                f"({len(problems)} arrays differ):\n{shown}{more}\n"
                "Use the config the run was started with (WORKDIR/config.json), or a new --workdir."
            )

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()


class BestCheckpoint:
    """The params of the lowest validation loss so far, in WORKDIR/best, and the eval history
    (best.json) that early stopping counts from. Survives restarts: history past the step a run
    resumes from is dropped, since those evals are redone."""

    def __init__(self, workdir: str | Path, keep: bool, resume_step: int = 0):
        self.directory = Path(workdir).resolve() / "best"
        self.keep = keep
        self.history: list[tuple[int, float]] = []
        record = self.directory / "best.json"
        if record.is_file():
            past = json.loads(record.read_text())["history"]
            self.history = [(int(s), float(v)) for s, v in past if s <= resume_step]
        self.manager = None
        if keep:
            self.manager = ocp.CheckpointManager(
                self.directory,
                item_handlers=ocp.StandardCheckpointHandler(),
                options=ocp.CheckpointManagerOptions(
                    max_to_keep=1, enable_async_checkpointing=False, create=True
                ),
            )

    @property
    def best(self) -> tuple[int, float] | None:
        """(step, eval loss) of the best evaluation, the earliest on ties."""
        return min(self.history, key=lambda h: (h[1], h[0])) if self.history else None

    @property
    def evals_since_best(self) -> int:
        best = self.best
        return 0 if best is None else sum(1 for s, _ in self.history if s > best[0])

    def update(self, step: int, eval_loss: float, params: Any) -> bool:
        """Record an evaluation; save the params if it is a new best. Returns whether it was."""
        previous = self.best
        self.history = [h for h in self.history if h[0] != step] + [(step, eval_loss)]
        improved = previous is None or eval_loss < previous[1]
        if improved and self.manager is not None:
            self.manager.save(step, args=ocp.args.StandardSave({"params": params}), force=True)
            self.manager.wait_until_finished()
        if jax.process_index() == 0:
            self.directory.mkdir(parents=True, exist_ok=True)
            tmp = self.directory / "best.json.tmp"
            best_step, best_loss = self.best
            tmp.write_text(
                json.dumps({"step": best_step, "eval_loss": best_loss, "history": self.history})
            )
            tmp.replace(self.directory / "best.json")  # atomic: a kill never leaves half a file
        return improved

    def close(self) -> None:
        if self.manager is not None:
            self.manager.close()
