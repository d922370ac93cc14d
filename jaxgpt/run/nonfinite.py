"""What the loop does after a step whose loss or gradient norm was NaN or infinite.

The step itself never applies such an update (state.train_step keeps the last good params and
optimizer state and counts the skip in the state), so no checkpoint ever holds a diverged model.
This guard turns the counters into a decision: with train.on_nonfinite="stop" the run ends at
the first skip, saving nothing past the last good checkpoint; with "skip" it goes on until
train.max_skipped skips in a row. The counters are global values every process reads alike, so
in multi-process runs the decision is collective without a collective of its own.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from jaxgpt.config import TrainConfig

CAUSES = (
    "usual causes: a learning rate too high (opt.lr), too short a warmup (opt.warmup_steps), "
    "no gradient clipping (opt.grad_clip), or bfloat16 overflow (model.dtype=float32)"
)


class NonFiniteError(RuntimeError):
    """The run stopped on non-finite steps; the message says where and what to change."""


class NonFiniteGuard:
    """Watches the train state's skip counters; read where the loop reads values anyway."""

    def __init__(self, cfg: TrainConfig, state: Any, say: Callable[[str], None]):
        self.say = say
        self.policy = cfg.on_nonfinite
        self.max_skipped = cfg.max_skipped
        self.seen = int(state.skipped)  # skips already in the state when this run started
        self.message: str | None = None

    def after_read(self, read: tuple[int, dict] | None, state: Any) -> str | None:
        """After a logged step's values are read: 'nonfinite' if the run must stop now."""
        if read is None or int(read[1].get("skipped", 0)) <= self.seen:
            return None
        return self.check(state)

    def check(self, state: Any) -> str | None:
        """Read the state's counters (a wait for its step): 'nonfinite' if the run must stop.
        Called before every checkpoint, so with "stop" nothing past a skip is ever saved."""
        total = int(state.skipped)
        if total <= self.seen:
            return None
        new, self.seen = total - self.seen, total
        last, in_row = int(state.last_skipped), int(state.skipped_in_row)
        if self.policy == "stop":
            more = "" if new == 1 else f" (the latest of {new} such steps since the last check)"
            self.message = (
                f"step {last}: the loss or gradient norm is NaN or infinite{more}; the update was "
                f"not applied and the run stops without saving past its last good checkpoint. "
                f"{CAUSES}. To skip such steps instead: --config.train.on_nonfinite=skip"
            )
            return "nonfinite"
        if in_row >= self.max_skipped:
            self.message = (
                f"step {last}: {in_row} steps in a row had a NaN or infinite loss or gradient "
                f"norm (train.max_skipped={self.max_skipped}); none was applied and the run stops. "
                f"{CAUSES}"
            )
            return "nonfinite"
        self.say(
            f"skipped {new} update(s) with a NaN or infinite loss or gradient norm "
            f"(latest at step {last}; {total} in this run's state so far)"
        )
        return None
