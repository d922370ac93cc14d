"""Step metering for the training loop and bench: step time, tokens/s, MFU, input wait.

Reading a step's metrics blocks until the device has finished that step, so the meter reads
step N's metrics only after step N+1 has been dispatched: the device always has work queued
while the host writes lines. A *window* is the stretch between two reads; its wall time over
the steps dispatched in it is the step time reported with the read, and the time the loop spent
blocked on the input pipeline within it is the input-wait share.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import jax

from jaxgpt import metrics as metrics_lib


class StepMeter:
    """Times steps and hands back each logged step's metrics one step late."""

    def __init__(
        self,
        tokens_per_step: int,
        flops_per_token: float,
        n_devices: int,
        peak_flops: float | None,
    ):
        self.tokens_per_step = tokens_per_step
        self.flops_per_token = flops_per_token
        self.n_devices = n_devices
        self.peak_flops = peak_flops
        self.step_times: list[float] = []  # seconds per step, one per timed read
        self.total_wait = 0.0
        self.started = time.perf_counter()
        self._pending: tuple[int, Any] | None = None
        self.restart()

    def restart(self) -> None:
        """Start a new window (after work that is not a step, such as an evaluation)."""
        self._window_start = time.perf_counter()
        self._window_steps = 0
        self._window_wait = 0.0
        # A step still pending now was timed by the window just discarded: read it untimed.
        self._pending_untimed = self._pending is not None

    def next_batch(self, batches: Iterator, count_wait: bool = True) -> Any:
        """The next batch or None; time blocked here is time the device could have been busy.

        count_wait=False for the first fetch of a run: pipeline start-up, before any device work.
        """
        t0 = time.perf_counter()
        batch = next(batches, None)
        if count_wait:
            waited = time.perf_counter() - t0
            self._window_wait += waited
            self.total_wait += waited
        return batch

    def dispatched(self, step: int, metrics: Any, log: bool) -> tuple[int, dict] | None:
        """Call right after dispatching `step`. Returns (step, values) of the previous logged
        step, read now with its window's timing; remembers this step's metrics if `log`."""
        self._window_steps += 1
        read = None
        if self._pending is not None:
            read = self.flush() if self._pending_untimed else self._read_timed()
            self._pending_untimed = False
        if log:
            self._pending = (step, metrics)
        return read

    def read_now(self) -> tuple[int, dict] | None:
        """The pending step's values with its window's timing, read now (a wait for that step):
        before work that needs the step done anyway, such as its checkpoint."""
        if self._pending is None:
            return None
        untimed, self._pending_untimed = self._pending_untimed, False
        return self.flush() if untimed else self._read_timed()

    def flush(self) -> tuple[int, dict] | None:
        """The last logged step's values (no timing: no later step was dispatched)."""
        if self._pending is None:
            return None
        step, metrics = self._pending
        self._pending = None
        return step, jax.device_get(metrics)

    def wait_frac(self) -> float:
        """Share of the wall time since the meter started spent waiting for input."""
        return self.total_wait / max(time.perf_counter() - self.started, 1e-9)

    def _read_timed(self) -> tuple[int, dict]:
        now = time.perf_counter()
        elapsed = max(now - self._window_start, 1e-9)
        seconds = elapsed / max(self._window_steps, 1)
        wait_frac = self._window_wait / elapsed
        self._window_start, self._window_steps, self._window_wait = now, 0, 0.0
        step, values = self.flush()
        tokens_per_s = self.tokens_per_step / seconds
        values.update(
            step_time_s=seconds,
            tokens_per_s=tokens_per_s,
            mfu=metrics_lib.mfu(
                self.flops_per_token, tokens_per_s, self.n_devices, self.peak_flops
            ),
            input_wait_frac=wait_frac,
        )
        self.step_times.append(seconds)
        return step, values
