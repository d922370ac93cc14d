"""The prepare pipeline's stages, written once as functions over batches of documents; the local
engine (data/engine_local.py) and the Ray Data engine (data/engine_ray.py) run them unchanged.

    read (a task: one file, or one built-in corpus) → batches of raw documents
    clean → keys (exact key, MinHash signature, LSH band hashes) → key records   [pass A]
    the engine partitions the records by hash; dedup.resolve_partition per partition;
    dedup.NearResolution on the driver → the sorted ids of dropped documents      [dedup]
    read → clean → drop the dropped ids → split → train/val JSONL + tokenizer sample
    encode → token shards                                                          [pass B]

A document's id is its place in the corpus: ids increase in read order (source, file, document),
so "keep the first occurrence" means "keep the smallest id" on any engine. Pass B reads the
sources again instead of keeping the cleaned text: the only thing carried between the passes
is the dropped ids, so no engine stores or shuffles text.
"""

from __future__ import annotations

import dataclasses
import glob
import hashlib
import inspect
import os
import resource
import threading
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np

from jaxgpt.config import is_remote
from jaxgpt.config.data import DataConfig, QualityConfig
from jaxgpt.data import quality, wiki
from jaxgpt.data import sources as sources_lib
from jaxgpt.data.clean import CleanStats, clean_indexed
from jaxgpt.data.dedup import DocumentKeys, KeyMaker
from jaxgpt.data.inputs import BOUNDED_LISTS, MAX_PROBLEMS, ReadStats, Source, source_files

BATCH_BYTES = 4_000_000  # raw text per batch: the unit of work and of worker memory
AUTO_SPLIT_MIN_DOCS = 100  # fewer documents than this: hold out the tail of each instead
TASK_BITS = 32  # Ray ids: task index << TASK_BITS | the document's place in its task


# ---------------------------------------------------------------- read


@dataclasses.dataclass(frozen=True)
class ReadTask:
    """One unit of reading: one input file of a source, or a source that is not files."""

    index: int  # place in the task list: tasks are read, and ids ordered, in this order
    source: Source  # what the reader is given: the source narrowed to this one file
    spec: str  # the data.sources item it came from; keys the per-source counts
    part: wiki.WikiPart | None = None  # a part of a multistream wiki dump (source: that file)


# Kinds whose files are read one by one in order, so one file is a source of its own giving
# exactly that file's documents. Others (a Hugging Face dataset dir, TFDS, the built-in
# corpora) are one task each.
PER_FILE_KINDS = ("text", "jsonl", "wiki", "wet", "warc", "parquet")


def plan_tasks(cfg: DataConfig) -> list[ReadTask]:
    """The read tasks of data.sources, in order: sources as listed, files sorted."""
    tasks: list[ReadTask] = []
    for source in sources_lib.parse_sources(cfg.sources):
        files = source_files(source) if source.kind in PER_FILE_KINDS else []
        for path in files or [None]:
            one = source if path is None else dataclasses.replace(source, path=_literal(path))
            # A multistream dump is several tasks: parts of whole bz2 streams, read in parallel.
            parts = wiki.plan_parts(path) if source.kind == "wiki" and path is not None else None
            for part in parts or [None]:
                tasks.append(ReadTask(len(tasks), one, source.spec, part))
    return tasks


def _literal(path) -> str:
    """A file's path as a source path that names only it (glob characters escaped)."""
    return str(path) if is_remote(path) else glob.escape(str(path))


def reader_options(cfg: DataConfig) -> dict:
    """The keyword arguments sources.iter_documents takes, from the data config fields of the
    same names (so a reader option added there and in DataConfig reaches every task)."""
    names = inspect.signature(sources_lib.iter_documents).parameters
    wanted = [n for n in names if n not in ("sources", "stats") and hasattr(cfg, n)]
    options = {n: getattr(cfg, n) for n in wanted}
    if "text_split" in names:
        options["text_split"] = cfg.text_split
    if "tfds_data_dir" in options:
        options["tfds_data_dir"] = cfg.tfds_data_dir or None
    return options


@dataclasses.dataclass
class RawBatch:
    """Documents as read, with what reading them counted."""

    task: int
    start: int  # place of texts[0] among the task's documents
    texts: list[str]
    stats: ReadStats
    seconds: float = 0.0


def read_batches(task: ReadTask, options: dict, max_bytes: int = 0) -> Iterator[RawBatch]:
    """The task's documents in batches of about max_bytes (default BATCH_BYTES); the last
    batch may be empty (it still carries the counts of what was read after the last one)."""
    max_bytes = max_bytes or BATCH_BYTES
    stats = ReadStats()
    if task.part is not None:
        docs = wiki.read_wiki_part(task.source, task.part, stats, **options)
    else:
        docs = sources_lib.iter_documents([task.source], stats, **options)
    texts: list[str] = []
    start, size, began = 0, 0, time.process_time()
    for doc in docs:
        texts.append(doc)
        size += len(doc)
        if size >= max_bytes:
            seconds = time.process_time() - began
            yield RawBatch(task.index, start, texts, _take(stats, task), seconds)
            start, texts, size, began = start + len(texts), [], 0, time.process_time()
    yield RawBatch(task.index, start, texts, _take(stats, task), time.process_time() - began)


def _take(stats: ReadStats, task: ReadTask) -> ReadStats:
    """What stats counted so far, with counts keyed by the file's own spec moved to the task's
    data.sources item; stats is reset in place (the reader keeps counting into it)."""
    taken = ReadStats()
    for f in dataclasses.fields(ReadStats):
        value = getattr(stats, f.name)
        if isinstance(value, dict):
            value = {task.spec if k == task.source.spec else k: v for k, v in value.items()}
        setattr(taken, f.name, value)
        setattr(stats, f.name, f.default_factory() if callable(f.default_factory) else f.default)
    return taken


def merge_read_stats(into: ReadStats, other: ReadStats) -> None:
    """Add other into `into`, as if one reader had read both in order."""
    for f in dataclasses.fields(ReadStats):
        mine, theirs = getattr(into, f.name), getattr(other, f.name)
        if f.name in BOUNDED_LISTS:
            mine.extend(theirs[: MAX_PROBLEMS - len(mine)])
        elif isinstance(mine, dict):
            for key, value in theirs.items():
                mine[key] = _added(mine[key], value) if key in mine else value
        else:
            setattr(into, f.name, mine + theirs)


def _added(mine, theirs):
    """Counts add up; a dict of them (a mixture's entry) adds up its counts and keeps the
    rest (its weight and rate) as they are."""
    if isinstance(mine, dict):
        return {k: _added(v, theirs[k]) if k in theirs else v for k, v in mine.items()}
    return mine + theirs if isinstance(mine, int) else mine


# ---------------------------------------------------------------- clean and keys


@dataclasses.dataclass
class CleanBatch:
    """The documents of a RawBatch that cleaning kept, with their places in the task."""

    task: int
    places: np.ndarray  # int64: place of each kept document among the task's documents
    texts: list[str]
    stats: CleanStats
    seconds: float = 0.0


def clean_batch(batch: RawBatch, cfg: DataConfig) -> CleanBatch:
    watch_memory()
    began, stats = time.process_time(), CleanStats()
    kept = list(clean_indexed(batch.texts, cfg.clean, stats, _quality_check(cfg.quality)))
    places = np.array([batch.start + i for i, _ in kept], dtype=np.int64)
    texts = [t for _, t in kept]
    return CleanBatch(batch.task, places, texts, stats, time.process_time() - began)


_QUALITY_CHECKS: dict = {}  # one per process and quality config (the language model loads once)


def _quality_check(cfg: QualityConfig) -> quality.Check | None:
    if cfg not in _QUALITY_CHECKS:
        _QUALITY_CHECKS.clear()
        _QUALITY_CHECKS[cfg] = quality.make_check(cfg)
    return _QUALITY_CHECKS[cfg]


_KEY_MAKERS: dict = {}  # one per process and dedup config: it caches word hashes


def keys_batch(batch: CleanBatch, cfg: DataConfig) -> tuple[DocumentKeys, float]:
    """The batch's dedup keys, and the seconds they took."""
    began = time.process_time()
    maker = _KEY_MAKERS.get(cfg.dedup)
    if maker is None:
        _KEY_MAKERS.clear()
        maker = _KEY_MAKERS[cfg.dedup] = KeyMaker(cfg.dedup)
    return maker(batch.texts), time.process_time() - began


def task_ids(batch: CleanBatch) -> np.ndarray:
    """Ids that sort in corpus order without knowing other tasks' sizes (Ray's ids)."""
    return (np.int64(batch.task) << TASK_BITS) | batch.places


def kept_texts(batch: CleanBatch, ids: np.ndarray, dropped: np.ndarray) -> list[str]:
    """The batch's documents whose id is not in the sorted array `dropped`."""
    lo, hi = np.searchsorted(dropped, [ids[0], ids[-1] + 1]) if len(ids) else (0, 0)
    gone = np.isin(ids, dropped[lo:hi])
    return [t for t, g in zip(batch.texts, gone, strict=True) if not g]


@dataclasses.dataclass
class KeptBatch:
    """Pass B's output for one batch: the documents dedup kept, and what reading and cleaning
    the batch counted (pass B's counts are the report's: pass A's are the same)."""

    task: int
    texts: list[str]
    read: ReadStats
    clean: CleanStats
    cleaned: int  # documents cleaning kept, before dedup


# ---------------------------------------------------------------- split and encode


def doc_fraction(text: str) -> float:
    """A document's fixed place in [0, 1): its hash, so the split never depends on order."""
    return int.from_bytes(hashlib.sha1(text.encode()).digest()[:8], "big") / 2**64


def split_documents(
    docs: Iterable[str], val_fraction: float, mode: str
) -> Iterator[tuple[str, str]]:
    """Yield (split, text). document: whole documents by hash; tail: the last val_fraction of
    every document's characters; auto: document when there are enough documents, else tail."""
    docs = iter(docs)
    if mode == "auto":
        head = [d for _, d in zip(range(AUTO_SPLIT_MIN_DOCS), docs, strict=False)]
        mode = "document" if len(head) >= AUTO_SPLIT_MIN_DOCS else "tail"
        docs = _chain(head, docs)
    for doc in docs:
        if mode == "document":
            yield ("val" if doc_fraction(doc) < val_fraction else "train"), doc
        else:
            cut = int(len(doc) * (1 - val_fraction))
            if doc[:cut]:
                yield "train", doc[:cut]
            if doc[cut:]:
                yield "val", doc[cut:]


def _chain(head: list[str], rest: Iterator[str]) -> Iterator[str]:
    yield from head
    yield from rest


def encode_texts(texts: list[str], tokenizer) -> tuple[np.ndarray, int]:
    """Token ids of the documents, each followed by EOT, as one uint32 array; and its bytes."""
    watch_memory()
    ids = tokenizer.encode_batch(texts)
    out = np.empty(sum(map(len, ids)) + len(ids), np.uint32)
    pos = 0
    for doc in ids:
        out[pos : pos + len(doc)] = doc
        out[pos + len(doc)] = tokenizer.eot_id
        pos += len(doc) + 1
    return out, sum(len(t.encode()) for t in texts)


def encode_split(texts: list[str], mode: str, val_fraction: float, tokenizer) -> dict:
    """Split already-deduplicated documents (mode: document or tail, as resolved for the whole
    corpus) and encode each side: {"train": (tokens, bytes), "val": (tokens, bytes)}."""
    sides: dict[str, list[str]] = {"train": [], "val": []}
    for split, text in split_documents(texts, val_fraction, mode):
        sides[split].append(text)
    return {split: encode_texts(side, tokenizer) for split, side in sides.items()}


# ---------------------------------------------------------------- what each worker did


def worker_row(stage: str, batches: int, nbytes: int, seconds: float, node: str = "") -> dict:
    """One record of work for the report: which process did how much, and its peak memory."""
    return {
        "node": node,
        "pid": os.getpid(),
        "stage": stage,
        "batches": batches,
        "bytes": nbytes,
        "seconds": seconds,
        "peak_rss_mb": peak_rss_mb(),
        "peak_private_mb": _PRIVATE.peak_mb(),
    }


def _status_mb(field: str) -> float | None:
    """A memory line of /proc/self/status in MB (None where there is no /proc)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def peak_rss_mb() -> float:
    """This process's peak resident memory (VmHWM). Not getrusage's ru_maxrss: Linux carries
    that over fork and exec, so a spawned worker would report its parent's peak."""
    found = _status_mb("VmHWM:")
    return found if found is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class _PrivateMemory:
    """The peak of this process's private resident memory (RssAnon), sampled every 20 ms by a
    daemon thread. Unlike the peak RSS it leaves out shared pages: Ray maps its object store
    into every worker, and the pages of the objects a worker has read count in its RSS though
    they are the store's, held once per machine (and spilled to disk when it is full)."""

    def __init__(self):
        self.peak, self._thread = 0.0, None

    def start(self) -> None:
        if self._thread is None and _status_mb("RssAnon:") is not None:
            self._thread = threading.Thread(target=self._run, daemon=True)
            self._thread.start()

    def _run(self) -> None:
        while True:
            self.peak = max(self.peak, _status_mb("RssAnon:") or 0.0)
            time.sleep(0.02)

    def peak_mb(self) -> float:
        return max(self.peak, _status_mb("RssAnon:") or 0.0)


_PRIVATE = _PrivateMemory()


def private_peak_mb() -> float:
    """This process's peak private memory since watch_memory() was first called."""
    return _PRIVATE.peak_mb()


def watch_memory() -> None:
    """Start sampling this process's private memory (once; call it where work starts)."""
    _PRIVATE.start()


def sum_workers(rows: Iterable[dict]) -> list[dict]:
    """Worker rows added up per (node, pid, stage), in a stable order."""
    total: dict[tuple, dict] = {}
    for row in rows:
        key = (row["node"], row["pid"], row["stage"])
        if key not in total:
            total[key] = dict(row)
            continue
        into = total[key]
        for name in ("batches", "bytes", "seconds"):
            into[name] += row[name]
        for name in ("peak_rss_mb", "peak_private_mb"):
            into[name] = max(into[name], row[name])
    return [total[k] for k in sorted(total)]
