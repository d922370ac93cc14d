"""Orbax checkpoints of the train state: periodic async saves, keep-N, resume, shape checks.

Orbax writes each checkpoint to a temporary directory and renames it when complete, so a crash or
kill mid-save leaves the previous checkpoints intact and the partial one is never restored.
"""

from __future__ import annotations

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


def _shapes_by_path(tree: Any) -> dict[str, tuple[int, ...]]:
    return {
        _path_name(path): tuple(leaf.shape)
        for path, leaf in jax.tree_util.tree_leaves_with_path(tree)
        if hasattr(leaf, "shape")
    }


class Checkpointer:
    """Saves and restores the train state under WORKDIR/checkpoints."""

    def __init__(self, workdir: str | Path, every: int, keep: int, async_save: bool = True):
        self.directory = Path(workdir).resolve() / "checkpoints"
        self.manager = ocp.CheckpointManager(
            self.directory,
            item_handlers=ocp.StandardCheckpointHandler(),
            options=ocp.CheckpointManagerOptions(
                save_interval_steps=max(every, 1),
                max_to_keep=keep,
                enable_async_checkpointing=async_save,
                create=True,
            ),
        )

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def save(self, step: int, state: Any, force: bool = False) -> bool:
        """Save if step is on the interval (or force); returns whether a save started."""
        return self.manager.save(step, args=ocp.args.StandardSave(state), force=force)

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
        stored_shapes = _shapes_by_path(stored_tree)
        wanted = _shapes_by_path(abstract_state)
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
