"""The local engine: the stages (data/stages.py) in this process and a pool of worker processes
on this machine. No services to start; the default.

Pass A reads in this process and hands batches to the pool, which cleans them and computes
their dedup keys; this process writes the key records into hash partitions on disk (and the
signatures into one file), so the dedup holds one partition in memory at a time: its memory
is set by PARTITION_INPUT_BYTES, not by the corpus. Pass B reads again in this process. Pass A
uses the pool from POOL_MIN_BYTES of input on; the encoding then uses the same processes.
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import math
import mmap
import multiprocessing
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import numpy as np
from tqdm import tqdm

from jaxgpt.config import is_remote
from jaxgpt.config.data import DataConfig
from jaxgpt.data import inputs, staging
from jaxgpt.data import sources as sources_lib
from jaxgpt.data.dedup import (
    RECORD_DTYPE,
    DedupStats,
    DocumentKeys,
    NearResolution,
    key_records,
    min_equal,
    resolve_partition,
)
from jaxgpt.data.stages import (
    KeptBatch,
    RawBatch,
    ReadTask,
    clean_batch,
    kept_texts,
    keys_batch,
    read_batches,
    reader_options,
    worker_row,
)

POOL_MIN_BYTES = 64_000_000  # less input: pass A in this process (a pool takes seconds to start)
PARTITION_INPUT_BYTES = 256_000_000  # input per key partition: bounds the dedup's memory
MAX_PARTITIONS = 1024  # open files while pass A writes; past 256 GB partitions grow instead
WORK_PREFIX = "_work-"  # work files in the staging dir; removed before metadata.json


def exit_with_parent(parent: int) -> None:
    """A build killed with kill -9 cannot stop its workers, and they would wait for work
    forever: each watches for its parent to go."""
    while os.getppid() == parent:
        time.sleep(0.5)
    os._exit(1)


def _init_worker(parent: int) -> None:
    threading.Thread(target=exit_with_parent, args=(parent,), daemon=True).start()


class WorkerPool:
    """The build's worker processes, started on first use and shared by pass A and the
    encoding, so a build pays their start-up (a fresh interpreter importing the data stack:
    seconds on a busy machine) once."""

    def __init__(self, workers: int):
        self.workers = workers
        self._pool: cf.ProcessPoolExecutor | None = None

    def get(self) -> cf.ProcessPoolExecutor:
        if self._pool is None:
            # spawn, not fork: the parent may already run JAX's threads, which fork can deadlock
            ctx = multiprocessing.get_context("spawn")
            self._pool = cf.ProcessPoolExecutor(self.workers, ctx, _init_worker, (os.getpid(),))
        return self._pool

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None


def _keys_job(raw: RawBatch, cfg: DataConfig) -> tuple[DocumentKeys, dict, dict]:
    """Pass A's work on one batch, in a worker: clean, then dedup keys."""
    cleaned = clean_batch(raw, cfg)
    keys, seconds = keys_batch(cleaned, cfg)
    size = sum(len(t) for t in raw.texts)
    work = {"clean": cleaned.seconds, "keys": seconds}
    return keys, work, worker_row("read → keys", 1, size, cleaned.seconds + seconds)


class LocalEngine:
    """Runs the stages on this machine; see the module docstring."""

    name = "local"

    def __init__(self, cfg: DataConfig, verbose: bool):
        self.cfg, self.verbose = cfg, verbose
        self.workers = cfg.workers or max(1, os.cpu_count() or 1)
        self.options = reader_options(cfg)
        self.passes: dict[str, float] = {}  # wall seconds by pass, in order
        self.work: dict[str, float] = {}  # busy seconds by stage, summed over processes
        self.worker_rows: list[dict] = []
        self.pool = WorkerPool(self.workers)

    def __enter__(self) -> LocalEngine:
        return self

    def __exit__(self, *_) -> None:
        self.pool.close()

    def _add_work(self, work: dict[str, float]) -> None:
        for stage, seconds in work.items():
            self.work[stage] = self.work.get(stage, 0.0) + seconds

    # ------------------------------------------------------------ pass A and dedup

    def dedup(self, tasks: list[ReadTask], tmp: Path) -> tuple[np.ndarray, DedupStats]:
        """Pass A and the dedup: the sorted ids of dropped documents, and the counts."""
        size = _input_bytes(self.cfg, tasks)
        parts = min(MAX_PARTITIONS, max(1, math.ceil(size / PARTITION_INPUT_BYTES)))
        with KeySpill(tmp, parts, self.cfg.dedup.num_perm) as spill:
            began = time.perf_counter()
            documents = self._pass_a(tasks, spill, size)
            spill.finish()
            self.passes["read → clean → keys"] = time.perf_counter() - began
            began = time.perf_counter()
            resolution = _resolve(spill, min_equal(self.cfg.dedup))
            self.passes[f"dedup ({parts} partition(s))"] = time.perf_counter() - began
        return resolution.dropped(), resolution.stats(documents)

    def _pass_a(self, tasks: list[ReadTask], spill: KeySpill, size: int) -> int:
        bar = tqdm(
            total=size or None, unit="B", unit_scale=True, desc="dedup keys",
            disable=not self.verbose, dynamic_ncols=True,
        )  # fmt: skip
        documents = 0
        with bar:
            batches = self._read(tasks, bar)
            use_pool = self.workers > 1 and (size >= POOL_MIN_BYTES or size == 0)
            jobs = self._in_pool(batches) if use_pool else self._in_process(batches)
            for keys, work, row in jobs:
                n = len(keys.exact) or len(keys.sigs)
                spill.add(np.arange(documents, documents + n, dtype=np.int64), keys)
                documents += n
                self._add_work(work)
                self.worker_rows.append(row)
        return documents

    def _read(self, tasks: list[ReadTask], bar: tqdm) -> Iterator[RawBatch]:
        for task in tasks:
            for raw in read_batches(task, self.options):
                self._add_work({"read": raw.seconds})
                bar.update(raw.stats.input_bytes if bar.total else raw.stats.bytes)
                yield raw

    def _in_process(self, batches: Iterable[RawBatch]) -> Iterator[tuple]:
        for raw in batches:
            yield _keys_job(raw, self.cfg)

    def _in_pool(self, batches: Iterable[RawBatch]) -> Iterator[tuple]:
        """Pass A's batches in worker processes, results in order, a bounded window."""
        pool = self.pool.get()
        try:
            pending: deque = deque()
            for raw in batches:
                pending.append(pool.submit(_keys_job, raw, self.cfg))
                if len(pending) >= 2 * self.workers:
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()
        except cf.process.BrokenProcessPool:
            raise ChildProcessError(
                "a worker process computing dedup keys died (killed; by the out-of-memory "
                "killer?), so the build was stopped and nothing of it kept: rerun the same "
                "command, with a lower data.workers if memory is short"
            ) from None

    # ------------------------------------------------------------ pass B

    def kept(self, tasks: list[ReadTask], dropped: np.ndarray) -> Iterator[KeptBatch]:
        """Pass B: read → clean → drop the dropped ids, in corpus order (ids as pass A's)."""
        next_id = 0
        for task in tasks:
            for raw in read_batches(task, self.options):
                cleaned = clean_batch(raw, self.cfg)
                ids = np.arange(next_id, next_id + len(cleaned.texts), dtype=np.int64)
                next_id += len(ids)
                texts = kept_texts(cleaned, ids, dropped)
                self._add_work({"read (pass B)": raw.seconds, "clean (pass B)": cleaned.seconds})
                yield KeptBatch(task.index, texts, raw.stats, cleaned.stats, len(ids))


def _input_bytes(cfg: DataConfig, tasks: list[ReadTask]) -> int:
    """Bytes of input (on disk; the built-in corpora's own size), which sizes the partitions
    and decides on a pool; 0 when unknown (a TFDS dataset)."""
    total = 0
    for task in tasks:
        kind = task.source.kind
        if kind == "stdlib":
            total += int(cfg.stdlib_max_mb * 1e6)
        elif kind == "shakespeare":
            total += sources_lib.SHAKESPEARE.stat().st_size
        elif kind not in inputs.NOT_FILES:
            for path in inputs.source_files(task.source):
                total += inputs.file_size(path) if is_remote(path) else Path(path).stat().st_size
    return total


class KeySpill:
    """Pass A's output on disk: key records hash-partitioned into `parts` files, and every
    document's signature at row = id in one file. All are work files of the staging dir."""

    def __init__(self, tmp: Path, parts: int, num_perm: int):
        self.parts, self.num_perm = parts, num_perm
        self.paths = [tmp / f"{WORK_PREFIX}keys-{p:05d}.bin" for p in range(parts)]
        self.sig_path = tmp / f"{WORK_PREFIX}signatures.bin"
        self._stack = contextlib.ExitStack()
        self._files = [self._stack.enter_context(staging.create(p)) for p in self.paths]
        self._sigs = self._stack.enter_context(staging.create(self.sig_path))
        self._map: mmap.mmap | None = None
        self._view: np.ndarray | None = None

    def __enter__(self) -> KeySpill:
        return self

    def __exit__(self, *_) -> None:
        self._view = None
        if self._map is not None:
            self._map.close()
        self._stack.close()
        for path in [*self.paths, self.sig_path]:
            with contextlib.suppress(OSError):
                path.unlink()

    def add(self, ids: np.ndarray, keys: DocumentKeys) -> None:
        records = key_records(ids, keys)
        which = (records["h"] % np.uint64(self.parts)).astype(np.int64)
        order = np.argsort(which, kind="stable")
        cuts = np.searchsorted(which[order], np.arange(1, self.parts))
        for f, chunk in zip(self._files, np.split(records[order], cuts), strict=True):
            if len(chunk):
                f.write(chunk.tobytes())
        if len(keys.sigs):
            self._sigs.write(np.ascontiguousarray(keys.sigs).tobytes())

    def finish(self) -> None:
        """Close the writers; signatures become readable by id."""
        self._stack.close()
        if self.sig_path.stat().st_size:
            with self.sig_path.open("rb") as f:
                self._map = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
            self._view = np.frombuffer(self._map, np.uint32).reshape(-1, self.num_perm)

    def records(self, part: int) -> np.ndarray:
        return np.fromfile(self.paths[part], dtype=RECORD_DTYPE)

    def signatures(self, records: np.ndarray) -> Callable[[np.ndarray], np.ndarray]:
        """For resolve_partition: row positions of `records` → their signatures (a copy)."""
        return lambda positions: self._view[records["id"][positions]]


def _resolve(spill: KeySpill, need: int) -> NearResolution:
    """Every partition, then forced reruns of the buckets with orphans until none is left."""
    resolution = NearResolution()
    for part in range(spill.parts):
        records = spill.records(part)
        resolution.add(resolve_partition(records, spill.signatures(records), need).arrays())
    while orphans := resolution.solve():
        hashes = np.array(sorted({h for _, h in orphans}), dtype=np.uint64)
        for part in sorted({int(h) % spill.parts for h in hashes}):
            records = spill.records(part)
            records = records[np.isin(records["h"], hashes)]
            found = resolve_partition(records, spill.signatures(records), need, orphans)
            resolution.add(found.arrays())
    return resolution
