"""Training and eval batches: each a pure function of (seed, step, process), prefetched.

Because batch(step) depends on nothing but the step, resuming at any step gives exactly the
batches an uninterrupted run would have seen, with no replay and no iterator state to save.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterator

import numpy as np


def _check_length(tokens: np.ndarray, seq_len: int, split: str) -> int:
    max_start = len(tokens) - (seq_len + 1)
    if max_start < 0:
        raise ValueError(
            f"the {split} split has {len(tokens):,} tokens, fewer than one window of "
            f"block_size+1 = {seq_len + 1}; use more data, a smaller model.block_size or a "
            "different data.val_fraction"
        )
    return max_start


class TrainBatches:
    """Random windows of seq_len+1 tokens; rows [p·B/P, (p+1)·B/P) belong to process p."""

    def __init__(
        self,
        tokens: np.ndarray,
        batch_size: int,
        seq_len: int,
        seed: int,
        process_index: int = 0,
        process_count: int = 1,
    ):
        if batch_size % process_count:
            raise ValueError(
                f"train.batch_size={batch_size} must be divisible by the {process_count} processes"
            )
        self.tokens = tokens
        self.batch_size = batch_size
        self.seq_len = seq_len
        self.seed = seed
        self.max_start = _check_length(tokens, seq_len, "train")
        self.local_rows = slice(
            process_index * batch_size // process_count,
            (process_index + 1) * batch_size // process_count,
        )

    def starts(self, step: int) -> np.ndarray:
        """Window starts of the whole global batch at this step."""
        rng = np.random.default_rng([self.seed, step])
        return rng.integers(0, self.max_start + 1, size=self.batch_size)

    def local_batch(self, step: int) -> np.ndarray:
        """This process's rows of batch(step): int32 [B/P, seq_len + 1]."""
        starts = self.starts(step)[self.local_rows]
        return np.stack([self.tokens[s : s + self.seq_len + 1] for s in starts]).astype(np.int32)


def eval_windows(tokens: np.ndarray, seq_len: int, n_tokens: int, batch_size: int) -> np.ndarray:
    """Fixed, evenly spaced windows covering about n_tokens: int32 [N, batch_size, seq_len+1]."""
    max_start = _check_length(tokens, seq_len, "val")
    n_batches = max(1, n_tokens // (seq_len * batch_size))
    starts = np.linspace(0, max_start, n_batches * batch_size).astype(np.int64)
    windows = np.stack([tokens[s : s + seq_len + 1] for s in starts]).astype(np.int32)
    return windows.reshape(n_batches, batch_size, seq_len + 1)


def prefetch(produce: Callable[[int], object], steps: range, depth: int = 2) -> Iterator:
    """Yield produce(step) for each step, computed `depth` steps ahead in a background thread."""
    buffer: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()
    done = object()

    def worker():
        try:
            for step in steps:
                if stop.is_set():
                    return
                buffer.put(produce(step))
            buffer.put(done)
        except BaseException as e:  # surfaced in the consumer, not lost in the thread
            buffer.put(e)

    thread = threading.Thread(target=worker, daemon=True, name="prefetch")
    thread.start()
    try:
        while (item := buffer.get()) is not done:
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        while not buffer.empty():  # unblock a worker waiting on a full queue
            buffer.get_nowait()
