"""Orbax checkpoints of the train state: periodic async saves, keep-N, resume, shape checks.

On a file system Orbax writes each checkpoint to a temporary directory and renames it when
complete; in a bucket (gs://, s3://: no directory renames) it writes the step in place and then
a `commit_success.txt`, and a step without it is never listed. Either way a crash or kill
mid-save leaves the previous checkpoints intact and the partial one is never restored. A
checkpoint that is complete but cannot be read (a bad disk, an interrupted copy) is named, moved
aside to WORKDIR/checkpoints.unreadable, and the next older one is restored instead.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from jaxgpt import orbax_s3, storage
from jaxgpt.config import AnyPath, absolute, is_remote, location
from jaxgpt.integrity import checksums, mismatch_message, mismatches, path_name
from jaxgpt.state import COUNTERS, TrainState

COMMIT_FILE = "commit_success.txt"  # Orbax's mark of a finished step in a bucket


def manager_options(directory: AnyPath, **options: Any) -> ocp.CheckpointManagerOptions:
    """Options for a manager of `directory`; every writer and reader of a bucket directory must
    use these, or a reader could list a step whose upload never finished."""
    if is_remote(directory):
        if str(directory).startswith("s3://"):
            orbax_s3.enable()
        # Buckets cannot rename directories: write in place, then the commit file.
        options["atomicity_options"] = ocp.options.AtomicityOptions(
            mode=ocp.options.AtomicityMode.COMMIT_FILE
        )
    return ocp.CheckpointManagerOptions(**options)


def _manager(directory: AnyPath, keep: int, async_save: bool) -> ocp.CheckpointManager:
    """Two items per step: the arrays ('default', as before checksums existed) and their
    checksums (jaxgpt.integrity), so a restore can prove it got what was saved."""
    return ocp.CheckpointManager(
        directory,
        item_handlers={
            "default": ocp.StandardCheckpointHandler(),
            "checksums": ocp.JsonCheckpointHandler(),
        },
        options=manager_options(
            directory, max_to_keep=keep, enable_async_checkpointing=async_save, create=True
        ),
    )


def _save_args(tree: Any) -> ocp.args.Composite:
    return ocp.args.Composite(
        default=ocp.args.StandardSave(tree), checksums=ocp.args.JsonSave(checksums(tree))
    )


class CheckpointMismatchError(ValueError):
    """The checkpoint is readable but was written for another model config."""


class UnreadableCheckpointsError(RuntimeError):
    """No checkpoint of a directory that has some can be read."""


class CheckpointWriteError(RuntimeError):
    """Writing a checkpoint failed (a full disk, a storage error); the committed ones are intact."""


def one_line(error: BaseException, limit: int = 240) -> str:
    """An exception in one line (TensorStore's messages run to many)."""
    first = next((line for line in str(error).splitlines() if line.strip()), "")
    text = f"{type(error).__name__}: {first.strip()}"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def restore_with_checksums(
    manager: ocp.CheckpointManager, step_dir: AnyPath, arrays: ocp.args.CheckpointArgs
) -> tuple[Any, dict[str, Any] | None]:
    """A step's arrays ("default", restored with `arrays`) and the checksums saved with them,
    None for a checkpoint written before checksums existed."""
    items = {"default": arrays}
    if (step_dir / "checksums").is_dir():
        items["checksums"] = ocp.args.JsonRestore()
    restored = manager.restore(int(step_dir.name), args=ocp.args.Composite(**items))
    return restored.default, restored.get("checksums")


def quiet_abandoned_reads() -> None:
    """Drop the "Event loop is closed" reports of the reads a failed restore left behind.

    When one array of a checkpoint cannot be read, Orbax's restore fails at once and closes its
    event loop while TensorStore finishes the checkpoint's other reads; each of those then
    reports through sys.unraisablehook that it could not call back into the closed loop: a
    screenful of tracebacks (26 for a 2-layer model) after the one line that names the
    unreadable checkpoint, saying nothing more. Those are dropped; any other unraisable
    exception goes on to the hook that was there. Idempotent."""
    previous = sys.unraisablehook
    if getattr(previous, "drops_closed_loop_reports", False):
        return

    def hook(unraisable: Any) -> None:
        error = unraisable.exc_value
        if not (
            unraisable.object is None
            and isinstance(error, RuntimeError)
            and str(error) == "Event loop is closed"
        ):
            previous(unraisable)

    hook.drops_closed_loop_reports = True  # type: ignore[attr-defined]
    sys.unraisablehook = hook


def move_aside(step_dir: AnyPath) -> AnyPath:
    """Move an unreadable step directory to a sibling DIR.unreadable/STEP (never deleted)."""
    aside_root = step_dir.parent.parent / (step_dir.parent.name + ".unreadable")
    aside_root.mkdir(parents=True, exist_ok=True)
    target, n = aside_root / step_dir.name, 1
    while target.exists():
        target, n = aside_root / f"{step_dir.name}.{n}", n + 1
    if is_remote(step_dir):  # a prefix of objects: copy, then delete
        storage.move_tree(step_dir, target)
    else:
        shutil.move(str(step_dir), str(target))
    return target


def committed_steps(directory: AnyPath) -> list[int]:
    """Steps with a finished checkpoint (Orbax's temporary directories are not digits; in a
    bucket a step is finished once its commit file is there)."""
    if not directory.is_dir():
        return []
    remote = is_remote(directory)
    return sorted(
        int(p.name)
        for p in directory.iterdir()
        if p.name.isdigit() and ((p / COMMIT_FILE).exists() if remote else p.is_dir())
    )


def none_readable_message(directory: Path, problems: list[tuple[int, str]]) -> str:
    listed = "\n".join(f"  step {step}: {why}" for step, why in problems)
    return (
        f"none of the {len(problems)} checkpoint(s) in {directory} can be read:\n{listed}\n"
        "Restore the directory from a copy, or move it away to start this run over."
    )


def shapes_by_path(tree: Any) -> dict[str, tuple[int, ...]]:
    return {
        path_name(path): tuple(leaf.shape)
        for path, leaf in jax.tree_util.tree_leaves_with_path(tree)
        if hasattr(leaf, "shape")
    }


class Checkpointer:
    """Saves and restores the train state under WORKDIR/checkpoints."""

    def __init__(self, workdir: str | AnyPath, every: int, keep: int, async_save: bool = True):
        self.directory = absolute(location(workdir, "workdir")) / "checkpoints"
        self.every = max(every, 1)
        self.manager = _manager(self.directory, keep, async_save)

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def due(self, step: int, force: bool = False) -> bool:
        """Whether save(step, force=force) would write a checkpoint."""
        # The interval is checked here: Orbax's own save_interval_steps also saves whenever no
        # checkpoint exists yet, i.e. at the first step of every run.
        return force or step % self.every == 0

    def save(self, step: int, state: Any, force: bool = False) -> bool:
        """Save if step is on the interval (or force); returns whether a save started."""
        if not self.due(step, force):
            return False
        with self._write_errors():  # also raises a failure of the previous, background save
            return self.manager.save(step, args=_save_args(state), force=True)

    @contextlib.contextmanager
    def _write_errors(self):
        """Any failed write becomes one CheckpointWriteError that says what is safe and what
        to do. Orbax writes into a temporary directory first, so the committed checkpoints are
        untouched; the partial one is never restored."""
        try:
            yield
        except Exception as e:
            committed = committed_steps(self.directory)
            resume = f"resume from step {committed[-1]}" if committed else "start over"
            why = one_line(e)
            if "No space left on device" in str(e) or "os_error_code='28'" in str(e):
                why = f"No space left on device ({why})"
            raise CheckpointWriteError(
                f"writing a checkpoint in {self.directory} failed: {why}\n"
                f"The committed checkpoints (steps {committed or 'none'}) are intact. Free space "
                f"or fix the storage, then rerun the same command to {resume}."
            ) from e

    def restore(self, abstract_state: Any, step: int | None = None) -> Any:
        """Restore into the shapes/shardings of abstract_state (ShapeDtypeStructs)."""
        step = self.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"no checkpoint in {self.directory}")
        stored = self.manager.item_metadata(step)["default"]
        stored_tree = getattr(stored, "tree", stored)
        if not isinstance(abstract_state, TrainState) or all(k in stored_tree for k in COUNTERS):
            self._check_shapes(step, stored_tree, abstract_state)
            return self._restore_checked(step, abstract_state)
        # Written before the skip counters existed: restore the rest, start the counters at 0.
        target = {k: getattr(abstract_state, k) for k in ("step", "params", "opt_state")}
        self._check_shapes(step, stored_tree, target)
        restored = self._restore_checked(step, target)
        zeros = {
            k: jax.device_put(np.zeros((), np.int32), getattr(abstract_state, k).sharding)
            for k in COUNTERS
        }
        return TrainState(**restored, **zeros)

    def _restore_checked(self, step: int, target: Any) -> Any:
        """Restore and compare the arrays' checksums with the saved ones (when the checkpoint
        has them: older ones do not)."""
        step_dir = self.directory / str(step)
        state, sums = restore_with_checksums(
            self.manager, step_dir, ocp.args.StandardRestore(target)
        )
        if sums is not None and (bad := mismatches(sums, checksums(state))):
            raise ValueError(mismatch_message(f"checkpoint {step_dir}", bad))
        return state

    def restore_latest(
        self, abstract_state: Any, say: Callable[[str], None] = print
    ) -> tuple[Any, int] | None:
        """(state, step) of the newest checkpoint that can be read; None when there is none.

        Unreadable ones are named and, once an older one is restored, moved aside; when none
        can be read this raises UnreadableCheckpointsError (nothing is moved). A checkpoint of
        another model config raises CheckpointMismatchError: that is not a damaged file."""
        problems: list[tuple[int, str]] = []
        quiet_abandoned_reads()
        for step in sorted(self.manager.all_steps(), reverse=True):
            try:
                state = self.restore(abstract_state, step)
            except CheckpointMismatchError:
                raise
            except Exception as e:  # TensorStore, JSON, missing files: all mean unreadable
                problems.append((step, one_line(e)))
                say(f"checkpoint {self.directory / str(step)} cannot be read: {problems[-1][1]}")
                continue
            self._set_aside([s for s, _ in problems])
            return state, step
        if problems:
            raise UnreadableCheckpointsError(none_readable_message(self.directory, problems))
        return None

    def _set_aside(self, steps: list[int]) -> None:
        if not steps:
            return
        if jax.process_index() == 0:
            for step in steps:
                where = move_aside(self.directory / str(step))
                print(f"moved the unreadable checkpoint {step} to {where}")
        self.manager.reload()  # forget them: keep-N rotation must not look for them

    def _check_shapes(self, step: int, stored_tree: Any, abstract_state: Any) -> None:
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
            raise CheckpointMismatchError(
                f"checkpoint {self.directory / str(step)} does not match the model config "
                f"({len(problems)} arrays differ):\n{shown}{more}\n"
                "Use the config the run was started with (WORKDIR/config.json), or a new --workdir."
            )

    def wait(self) -> None:
        with self._write_errors():
            self.manager.wait_until_finished()

    def close(self) -> None:
        try:
            self.wait()
        finally:
            self.manager.close()


class BestCheckpoint:
    """The params of the lowest validation loss so far, in WORKDIR/best, and the eval history
    (best.json) that early stopping counts from. Survives restarts: history past the step a run
    resumes from is dropped, since those evals are redone."""

    def __init__(self, workdir: str | AnyPath, keep: bool, resume_step: int = 0):
        self.directory = absolute(location(workdir, "workdir")) / "best"
        self.keep = keep
        self.history: list[tuple[int, float]] = []
        record = self.directory / "best.json"
        if record.is_file():
            past = json.loads(record.read_text())["history"]
            self.history = [(int(s), float(v)) for s, v in past if s <= resume_step]
        self.manager = None
        if keep:
            self.manager = _manager(self.directory, keep=1, async_save=False)

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
            if step in self.manager.all_steps():
                # A rerun redoing this eval (the run stopped after saving it but before the
                # checkpoint of this step was committed): today's params replace those.
                self.manager.delete(step)
            self.manager.save(step, args=_save_args({"params": params}), force=True)
            self.manager.wait_until_finished()
        if jax.process_index() == 0:
            self._write_record()
        return improved

    def _write_record(self) -> None:
        best_step, best_loss = self.best
        text = json.dumps({"step": best_step, "eval_loss": best_loss, "history": self.history})
        if is_remote(self.directory):  # one PUT: the object is replaced whole or not at all
            (self.directory / "best.json").write_text(text)
            return
        self.directory.mkdir(parents=True, exist_ok=True)
        tmp = self.directory / "best.json.tmp"
        tmp.write_text(text)
        tmp.replace(self.directory / "best.json")  # atomic: a kill never leaves half a file

    def close(self) -> None:
        if self.manager is not None:
            self.manager.close()
