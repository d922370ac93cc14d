"""Training and eval batches: each a pure function of (seed, step, process), prefetched.

The training split is cut into non-overlapping windows of seq_len+1 tokens (stride seq_len, so
every token is a target once per epoch). Epoch e visits them in the order of a permutation
seeded by (seed, e); global batch s takes the next B windows of that sequence, and process p of P
takes rows [p·B/P, (p+1)·B/P) of it. So a resumed run sees exactly the batches an uninterrupted
one would (no iterator state, no replay), and the processes' shares are disjoint and together
cover every window of an epoch.

The permutation is never stored: WindowOrder computes the window at any position of an epoch
from (seed, epoch, position) with a keyed Feistel network, so host memory stays a few bytes
whatever the corpus (an int32 permutation of 1 B windows would hold 4 GB on every host).
"""

from __future__ import annotations

import contextlib
import functools
import math
import queue
import threading
from collections.abc import Callable, Iterator

import numpy as np

from jaxgpt.data.shards import TokenStream


def _check_length(n_tokens: int, seq_len: int, split: str) -> None:
    if n_tokens < seq_len + 1:
        raise ValueError(
            f"the {split} split has {n_tokens:,} tokens, fewer than one window of "
            f"block_size+1 = {seq_len + 1}; use more data, a smaller model.block_size or a "
            "different data.val_fraction"
        )


def process_rows(batch_size: int, process_index: int, process_count: int) -> slice:
    """The rows of every global batch that this process loads."""
    if batch_size % process_count:
        raise ValueError(
            f"train.batch_size={batch_size} must be divisible by the {process_count} processes"
        )
    rows = batch_size // process_count
    return slice(process_index * rows, (process_index + 1) * rows)


FEISTEL_ROUNDS = 6  # 4 make a pseudorandom permutation (Luby-Rackoff); 2 more for margin


def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64's finalizer: every output bit depends on every input bit (uint64, wrapping)."""
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


class WindowOrder:
    """A seeded bijection of [0, n) per epoch, computed position by position in O(1) memory.

    A balanced Feistel network permutes [0, 4^k), the smallest such range holding n; a value
    that lands at or past n is sent through the network again ("cycle walking") until it falls
    below n, which keeps the map a bijection of [0, n). Since 4^k < 4n, that takes under 4
    passes on average. The round keys come from np.random.default_rng([seed, epoch]).
    """

    def __init__(self, n: int, seed: int):
        if n < 1:
            raise ValueError(f"a window order needs at least one window, got {n}")
        self.n, self.seed = n, seed
        self.half_bits = max(1, math.ceil((n - 1).bit_length() / 2))
        self._mask = np.uint64((1 << self.half_bits) - 1)
        self._keys: dict[int, np.ndarray] = {}

    def keys(self, epoch: int) -> np.ndarray:
        if epoch not in self._keys:
            if len(self._keys) >= 2:  # a batch spans at most two epochs
                self._keys.clear()
            rng = np.random.default_rng([self.seed, epoch])
            self._keys[epoch] = rng.bit_generator.random_raw(FEISTEL_ROUNDS).astype(np.uint64)
        return self._keys[epoch]

    def _feistel(self, x: np.ndarray, keys: np.ndarray) -> np.ndarray:
        shift = np.uint64(self.half_bits)
        left, right = x >> shift, x & self._mask
        for key in keys:
            left, right = right, left ^ (_mix(right ^ key) & self._mask)
        return (left << shift) | right

    def __call__(self, epoch: int, positions: np.ndarray) -> np.ndarray:
        """The windows at these positions of epoch `epoch`'s order (int64)."""
        keys = self.keys(epoch)
        with np.errstate(over="ignore"):
            out = self._feistel(np.asarray(positions, dtype=np.uint64), keys)
            todo = np.flatnonzero(out >= self.n)
            while todo.size:
                out[todo] = self._feistel(out[todo], keys)
                todo = todo[out[todo] >= self.n]
        return out.astype(np.int64)


class TrainBatches:
    """Deterministic training batches over a token stream (see the module docstring)."""

    def __init__(
        self,
        tokens: TokenStream | np.ndarray,
        batch_size: int,
        seq_len: int,
        seed: int,
        process_index: int = 0,
        process_count: int = 1,
    ):
        _check_length(len(tokens), seq_len, "train")
        self.tokens = tokens if isinstance(tokens, TokenStream) else _ArrayStream(tokens)
        self.batch_size, self.seq_len, self.seed = batch_size, seq_len, seed
        self.n_windows = (len(tokens) - 1) // seq_len
        self.local_rows = process_rows(batch_size, process_index, process_count)

    @functools.cached_property
    def order(self) -> WindowOrder:
        """Each epoch's window order (built on first use: subclasses set n_windows and seed)."""
        return WindowOrder(self.n_windows, self.seed)

    def windows(self, step: int) -> np.ndarray:
        """Window indices of the whole global batch at this step."""
        index = step * self.batch_size + np.arange(self.batch_size, dtype=np.int64)
        epoch, pos = np.divmod(index, self.n_windows)
        out = np.empty(self.batch_size, np.int64)
        for e in np.unique(epoch):
            mask = epoch == e
            out[mask] = self.order(int(e), pos[mask])
        return out

    def epoch(self, step: int) -> float:
        return step * self.batch_size / self.n_windows

    def local_batch(self, step: int) -> np.ndarray:
        """This process's rows of batch(step): int32 [B/P, seq_len + 1]."""
        starts = self.windows(step)[self.local_rows] * self.seq_len
        # One read for the whole batch: for shards in a bucket, one round of concurrent ranged
        # GETs covering just these rows (the other processes' rows are never fetched here).
        return self.tokens.windows(starts, self.seq_len + 1).astype(np.int32)


class _ArrayStream:
    """An in-memory array with TokenStream's interface (tests, small corpora)."""

    def __init__(self, array: np.ndarray):
        self.array = array

    def __len__(self) -> int:
        return len(self.array)

    def window(self, start: int, length: int) -> np.ndarray:
        return np.array(self.array[start : start + length])

    def windows(self, starts, length: int) -> np.ndarray:
        return np.stack([self.window(int(s), length) for s in starts])


def eval_windows(
    tokens: TokenStream | np.ndarray, seq_len: int, n_tokens: int, batch_size: int
) -> np.ndarray:
    """Fixed, evenly spaced windows covering about n_tokens: int32 [N, batch_size, seq_len+1]."""
    _check_length(len(tokens), seq_len, "val")
    stream = tokens if isinstance(tokens, TokenStream) else _ArrayStream(tokens)
    n_batches = max(1, n_tokens // (seq_len * batch_size))
    starts = np.linspace(0, len(tokens) - seq_len - 1, n_batches * batch_size).astype(np.int64)
    windows = stream.windows(starts, seq_len + 1).astype(np.int32)
    return windows.reshape(n_batches, batch_size, seq_len + 1)


def device_batches(
    batches: TrainBatches, start: int, stop: int, to_device: Callable, depth: int = 2
) -> Iterator:
    """to_device(local_batch(step)) for step in [start, stop), made `depth` steps ahead.

    One background thread reads the windows and copies them to the devices. Reading a batch
    from the memory-mapped shards takes microseconds to a few milliseconds, far below a step
    (from a bucket: one round of concurrent ranged GETs, tens of milliseconds, hidden by the
    `depth` steps of lead), so no parallel reader is needed; a thread pool (tf.data's parallel
    map was the one before) only competed with the step for the host's cores: measured on a
    2-core host, the loop came 3-7% closer to synthetic batches without it
    (docs/performance.md).
    """
    return prefetch(lambda step: to_device(batches.local_batch(step)), range(start, stop), depth)


def prefetch(produce: Callable, items, depth: int = 2) -> Iterator:
    """Yield produce(item) for each item, computed `depth` ahead in a background thread."""
    buffer: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()
    done = object()

    def worker():
        try:
            for item in items:
                if stop.is_set():
                    return
                buffer.put(produce(item))
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
        # Wait for the worker to leave the source iterator: a thread still inside native
        # code (a reader, a device copy) when the interpreter exits can abort the process.
        stop.set()
        while thread.is_alive():
            with contextlib.suppress(queue.Empty):  # unblock a worker waiting on a full queue
                buffer.get(timeout=0.05)
