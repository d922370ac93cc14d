"""The local engine: the stages (data/stages.py) in this process and a pool of worker processes
on this machine. No services to start; the default.

Both passes run the same way, chosen by one rule (`_mode`):

    in this process   one worker, or less than POOL_MIN_BYTES of input (a pool takes seconds)
    tasks             two or more read tasks (files, parts of a multistream dump), none holding
                      more than half of the input: a worker reads a whole task and cleans it
                      (and computes its dedup keys in pass A), so reading runs in parallel too
    batches           otherwise (one big file): this process reads, the workers clean (and
                      compute keys) batch by batch, so one file still uses every worker

Results come back in corpus order, a bounded window of 2 × workers batches or tasks in flight.
A task's per-batch results stream through a work file of the staging dir (WORK_PREFIX), which
this process reads batch by batch and removes, so no worker or pickle holds a whole file. The
staging dir comes with dedup() (pass A) or kept(tmp=...); a pass without one reads in batches.
Pass A writes the key records into hash partitions on disk (and the signatures into one file),
so the dedup holds one partition in memory at a time: its memory is set by
PARTITION_INPUT_BYTES, not by the corpus. Pass B drops the dropped ids here, where each
document's id (its place in the corpus) is known. The encoding then uses the same processes.
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import dataclasses
import math
import mmap
import multiprocessing
import os
import pickle
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
from tqdm import tqdm

from jaxgpt.config import is_remote
from jaxgpt.config.data import DataConfig
from jaxgpt.data import inputs, stages, staging
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
from jaxgpt.data.inputs import ReadStats
from jaxgpt.data.stages import (
    CleanBatch,
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

POOL_MIN_BYTES = 64_000_000  # less input: both passes in this process (a pool takes seconds)
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
    """The build's worker processes, started on first use and shared by both passes and the
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


# ---------------------------------------------------------------- the work on one batch


@dataclasses.dataclass
class _Done:
    """One batch's result, from a worker or this process, with what producing it counted."""

    task: int
    result: DocumentKeys | CleanBatch  # pass A: the dedup keys; pass B: the cleaned documents
    read: ReadStats
    work: dict[str, float]  # busy seconds by stage, reading included (wherever it ran)
    row: dict  # what the process that cleaned it did (worker_row), reading if it read it


def _keys_job(raw: RawBatch, cfg: DataConfig) -> tuple[DocumentKeys, dict[str, float]]:
    """Pass A's work on one batch: clean, then dedup keys."""
    cleaned = clean_batch(raw, cfg)
    keys, seconds = keys_batch(cleaned, cfg)
    return keys, {"clean": cleaned.seconds, "keys": seconds}


def _clean_job(raw: RawBatch, cfg: DataConfig) -> tuple[CleanBatch, dict[str, float]]:
    """Pass B's work on one batch: clean (the driver drops the dropped ids: it knows the ids)."""
    cleaned = clean_batch(raw, cfg)
    return cleaned, {"clean (pass B)": cleaned.seconds}


# Each job's worker-row stage and the name its reading is counted under.
_STAGES = {_keys_job: ("read → keys", "read"), _clean_job: ("read → filter", "read (pass B)")}


def _batch_job(job: Callable, raw: RawBatch, cfg: DataConfig, read_here: bool) -> _Done:
    """job on one batch; read_here: this process also read it (its row counts the reading)."""
    result, work = job(raw, cfg)
    stage, read_stage = _STAGES[job]
    seconds = sum(work.values()) + (raw.seconds if read_here else 0.0)
    row = worker_row(stage, 1, sum(len(t) for t in raw.texts), seconds)
    return _Done(raw.task, result, raw.stats, {read_stage: raw.seconds, **work}, row)


def _task_job(
    job: Callable, task: ReadTask, cfg: DataConfig, options: dict, max_bytes: int, path: str,
    stop: str,
) -> None:  # fmt: skip
    """In a worker: read one task and run job on each of its batches, the results pickled one
    after another into the work file at path (this process reads them in order). Stops early
    once the file at stop exists (the build failed: nobody will read the rest)."""
    with _WorkFile(path) as out:
        for raw in read_batches(task, options, max_bytes):
            out.dump(_batch_job(job, raw, cfg, read_here=True))
            if os.path.exists(stop):
                return


class _WorkFile:
    """A work file of pickled results, written without fsync (it never outlives the build);
    its write errors name it, so a full disk is reported as the data dir's."""

    def __init__(self, path: str):
        self.path, self._file = path, open(path, "wb")  # noqa: SIM115  (closed by __exit__)

    def __enter__(self) -> _WorkFile:
        return self

    def __exit__(self, *_) -> None:
        with self._named():
            self._file.close()

    def dump(self, done: _Done) -> None:
        with self._named():
            pickle.dump(done, self._file, pickle.HIGHEST_PROTOCOL)

    @contextlib.contextmanager
    def _named(self) -> Iterator[None]:
        try:
            yield
        except OSError as e:
            raise OSError(e.errno, e.strerror or str(e), self.path) from None


def _work_results(path: Path) -> Iterator[_Done]:
    """The results a task job wrote, one at a time."""
    with path.open("rb") as f:
        while True:
            try:
                yield pickle.load(f)
            except EOFError:
                return


def _died(what: str) -> ChildProcessError:
    return ChildProcessError(
        f"a worker process {what} died (killed; by the out-of-memory killer?), so the build "
        "was stopped and nothing of it kept: rerun the same command, with a lower data.workers "
        "if memory is short"
    )


# ---------------------------------------------------------------- the engine


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
        self.tmp: Path | None = None  # the staging dir, for work files (known from dedup())

    def __enter__(self) -> LocalEngine:
        return self

    def __exit__(self, *_) -> None:
        self.pool.close()

    def _add_work(self, work: dict[str, float]) -> None:
        for stage, seconds in work.items():
            self.work[stage] = self.work.get(stage, 0.0) + seconds

    def _mode(self, tasks: list[ReadTask]) -> str:
        """in process, tasks or batches: the rule of the module docstring."""
        sizes = [_task_bytes(self.cfg, task) for task in tasks]
        size = sum(sizes)
        if self.workers < 2 or 0 < size < POOL_MIN_BYTES:
            return "in process"
        if len(tasks) >= 2 and 2 * max(sizes) <= size and self.tmp is not None:
            return "tasks"
        return "batches"

    def _run(self, job: Callable, tasks: list[ReadTask], what: str) -> Iterator[_Done]:
        """job on every batch of the tasks, results in corpus order, work counted."""
        mode = self._mode(tasks)
        if mode == "tasks":
            done = self._by_task(job, tasks, what)
        else:
            raws = (raw for task in tasks for raw in read_batches(task, self.options))
            in_pool = mode == "batches"
            done = self._in_pool(job, raws, what) if in_pool else self._in_process(job, raws)
        for one in done:
            self._add_work(one.work)
            self.worker_rows.append(one.row)
            yield one

    def _in_process(self, job: Callable, raws: Iterator[RawBatch]) -> Iterator[_Done]:
        for raw in raws:
            yield _batch_job(job, raw, self.cfg, read_here=True)

    def _in_pool(self, job: Callable, raws: Iterator[RawBatch], what: str) -> Iterator[_Done]:
        """Batches read here, worked on in the pool; results in order, a bounded window."""
        pool = self.pool.get()
        try:
            pending: deque = deque()
            for raw in raws:
                pending.append(pool.submit(_batch_job, job, raw, self.cfg, False))
                if len(pending) >= 2 * self.workers:
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()
        except cf.process.BrokenProcessPool:
            raise _died(what) from None

    def _by_task(self, job: Callable, tasks: list[ReadTask], what: str) -> Iterator[_Done]:
        """Whole tasks read and worked on in the pool, at most 2 × workers in flight; each
        task's results read back from its work file, in task order."""
        pool, stop = self.pool.get(), self.tmp / f"{WORK_PREFIX}stop"
        pending: deque[tuple[cf.Future, Path]] = deque()
        try:
            for task in tasks:
                path = self.tmp / f"{WORK_PREFIX}task-{task.index:06d}.pkl"
                args = (task, self.cfg, self.options, stages.BATCH_BYTES, str(path), str(stop))
                pending.append((pool.submit(_task_job, job, *args), path))
                if len(pending) >= 2 * self.workers:
                    yield from _task_results(*pending.popleft())
            while pending:
                yield from _task_results(*pending.popleft())
        except cf.process.BrokenProcessPool:
            raise _died(what) from None
        finally:
            _stop(pending, stop)

    # ------------------------------------------------------------ pass A and dedup

    def dedup(self, tasks: list[ReadTask], tmp: Path) -> tuple[np.ndarray, DedupStats]:
        """Pass A and the dedup: the sorted ids of dropped documents, and the counts."""
        self.tmp = tmp
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
            for done in self._run(_keys_job, tasks, "computing dedup keys"):
                keys = done.result
                n = len(keys.exact) or len(keys.sigs)
                spill.add(np.arange(documents, documents + n, dtype=np.int64), keys)
                documents += n
                bar.update(done.read.input_bytes if bar.total else done.read.bytes)
        return documents

    # ------------------------------------------------------------ pass B

    def kept(
        self, tasks: list[ReadTask], dropped: np.ndarray, tmp: Path | None = None
    ) -> Iterator[KeptBatch]:
        """Pass B: read → clean → drop the dropped ids, in corpus order (ids as pass A's).
        tmp: the staging dir, for work files (else dedup()'s; without one, no task mode)."""
        self.tmp = tmp or self.tmp
        next_id = 0
        for done in self._run(_clean_job, tasks, "reading and cleaning documents"):
            cleaned = done.result
            ids = np.arange(next_id, next_id + len(cleaned.texts), dtype=np.int64)
            next_id += len(ids)
            texts = kept_texts(cleaned, ids, dropped)
            yield KeptBatch(done.task, texts, done.read, cleaned.stats, len(ids))


def _task_results(future: cf.Future, path: Path) -> Iterator[_Done]:
    """A finished task job's results (its error, if it raised one), its work file removed."""
    try:
        future.result()
        yield from _work_results(path)
    finally:
        with contextlib.suppress(OSError):
            path.unlink()


def _stop(pending: deque, stop: Path) -> None:
    """After the last task, or when the build stopped early: task jobs still queued are
    cancelled, running ones told to stop (they check after each batch) and waited for, and
    every work file removed."""
    if pending:
        with contextlib.suppress(OSError):
            stop.touch()
        for future, _ in pending:
            future.cancel()
        cf.wait([future for future, _ in pending])
    for _, path in pending:
        with contextlib.suppress(OSError):
            path.unlink()
    with contextlib.suppress(OSError):
        stop.unlink()


def _input_bytes(cfg: DataConfig, tasks: list[ReadTask]) -> int:
    """Bytes of input (on disk; the built-in corpora's own size), which sizes the partitions
    and decides on a pool; 0 when unknown (a TFDS dataset)."""
    return sum(_task_bytes(cfg, task) for task in tasks)


def _task_bytes(cfg: DataConfig, task: ReadTask) -> int:
    """One task's input bytes: a multistream dump's part counts its own compressed bytes."""
    kind = task.source.kind
    if task.part is not None:
        return task.part.end - task.part.start
    if kind == "stdlib":
        return int(cfg.stdlib_max_mb * 1e6)
    if kind == "shakespeare":
        return sources_lib.SHAKESPEARE.stat().st_size
    if kind in inputs.NOT_FILES:
        return 0
    total = 0
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
