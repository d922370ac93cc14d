"""When a run stops before train.steps: SIGTERM (preemption), `stop_at`, early stopping.

With several processes the decision is collective, so every process saves the same step (or
none does); it is taken only on logging steps and at the end, where the processes meet anyway.
"""

from __future__ import annotations

import signal

import jax

from jaxgpt import distributed


class Preemption:
    """Turns SIGTERM into a flag the loop checks, so it can checkpoint before exiting."""

    def __init__(self):
        self.requested = False
        self._previous = None

    def __enter__(self) -> Preemption:
        try:
            self._previous = signal.signal(signal.SIGTERM, self._handle)
        except ValueError:  # not the main thread: leave signals alone
            self._previous = None
        return self

    def _handle(self, signum, frame) -> None:
        self.requested = True

    def __exit__(self, *exc) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)


class StopRules:
    """Decides, after each step, whether the run stops there and why."""

    def __init__(self, preemption: Preemption, log_every: int, stop_at: int | None):
        self.preemption = preemption
        self.log_every = log_every
        self.stop_at = stop_at

    def terminated(self, step: int, at_end: bool) -> bool:
        """SIGTERM seen by any process (agreed on collectively with several)."""
        if jax.process_count() == 1:
            return self.preemption.requested
        if step % self.log_every and not at_end:
            return False  # only decide where every process takes part
        # SIGTERM may arrive during the collective: only ever raise the flag here.
        if distributed.any_process(self.preemption.requested):
            self.preemption.requested = True
        return self.preemption.requested

    def reason(self, step: int, at_end: bool) -> str | None:
        """'SIGTERM' or 'stop_at' when the run must save and exit after this step, else None."""
        if self.terminated(step, at_end):
            return "SIGTERM"
        if step == self.stop_at:
            return "stop_at"
        return None
