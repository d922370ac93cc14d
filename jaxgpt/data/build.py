"""Build a data dir: read → clean → deduplicate → split → JSONL → tokenizer → token shards.

The stages are functions over batches of documents (data/stages.py) run by an engine: the local
engine (data/engine_local.py: worker processes on this machine, the default) or Ray Data
(data/engine_ray.py, data.engine=ray), which give byte-identical data dirs. Pass A computes
every document's dedup keys and the engine resolves them globally (data/dedup.py) into the ids
of the documents to drop; pass B reads again, drops those, splits, and writes the cleaned
documents as JSONL (and keeps a sample for the tokenizer); then the JSONL is encoded into
shards. Memory stays bounded by a batch and a key partition, not by the corpus. Everything is
written into a staging dir that is renamed into place only when complete (data/staging.py), so
a killed build leaves no data dir that could be used, and a failed write gives one clear error.
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import dataclasses
import hashlib
import json
import os
import shutil
import time
from collections import deque
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
from tqdm import tqdm

from jaxgpt import storage
from jaxgpt.config import AnyPath, is_remote, location
from jaxgpt.data import engine_ray, remote, staging
from jaxgpt.data import sources as sources_lib
from jaxgpt.data.clean import CleanStats
from jaxgpt.data.dataset import (
    FORMAT_VERSION,
    DataConfig,
    DatasetInfo,
    dataset_key,
    load_dataset,
    stale_reason,
)
from jaxgpt.data.dedup import DedupStats
from jaxgpt.data.engine_local import LocalEngine, WorkerPool
from jaxgpt.data.inputs import ReadStats
from jaxgpt.data.outcomes import FileOutcomes
from jaxgpt.data.sft import build_sft
from jaxgpt.data.shards import ShardWriter, token_dtype
from jaxgpt.data.stages import (
    AUTO_SPLIT_MIN_DOCS,
    KeptBatch,
    encode_texts,
    merge_read_stats,
    peak_rss_mb,
    plan_tasks,
    private_peak_mb,
    split_documents,
    sum_workers,
    watch_memory,
    worker_row,
)
from jaxgpt.data.tokenizer import make_tokenizer, tokenizer_from_bytes

ENCODE_CHUNK_BYTES = 4_000_000  # text per worker task
IN_PROCESS_BYTES = 8_000_000  # smaller corpora are encoded without a process pool


def _read_jsonl_texts(path: Path) -> Iterator[str]:
    with path.open(encoding="utf-8") as f:
        for line in f:
            yield json.loads(line)["text"]


def _chunks(texts: Iterable[str], max_bytes: int) -> Iterator[list[str]]:
    chunk, size = [], 0
    for text in texts:
        chunk.append(text)
        size += len(text)
        if size >= max_bytes:
            yield chunk
            chunk, size = [], 0
    if chunk:
        yield chunk


_WORKER_TOKENIZERS: dict = {}  # in a worker process: the tokenizer shipped with its tasks


def _shipped(tokenizer) -> tuple[str, str, bytes, str]:
    """What a worker process needs to rebuild the tokenizer: (key, file name, bytes, EOT)."""
    key = hashlib.sha256(tokenizer.proto).hexdigest()
    return key, type(tokenizer).filename, tokenizer.proto, getattr(tokenizer, "eot_token", "")


def _encode_chunk(texts: list[str], tokenizer=None, shipped=None) -> tuple[np.ndarray, int, dict]:
    """Token ids of the documents, each followed by EOT, as one uint32 array; its bytes; and
    what this process did (for the report). In a worker, the tokenizer comes `shipped`."""
    began = time.process_time()
    if tokenizer is None:
        if shipped[0] not in _WORKER_TOKENIZERS:
            _WORKER_TOKENIZERS.clear()
            _WORKER_TOKENIZERS[shipped[0]] = tokenizer_from_bytes(*shipped[1:])
        tokenizer = _WORKER_TOKENIZERS[shipped[0]]
    tokens, n = encode_texts(texts, tokenizer)
    return tokens, n, worker_row("encode", 1, n, time.process_time() - began)


def _encode_split(
    jsonl: Path,
    writer: ShardWriter,
    tokenizer,
    pool: WorkerPool,
    total_bytes: int,
    verbose: bool,
    rows: list[dict],
) -> int:
    """Encode a JSONL split into shards, in order; returns the number of bytes encoded."""
    bar = tqdm(
        total=total_bytes, unit="B", unit_scale=True, desc=f"encode {writer.name}",
        disable=not verbose, dynamic_ncols=True,
    )  # fmt: skip
    chunks = _chunks(_read_jsonl_texts(jsonl), ENCODE_CHUNK_BYTES)
    done = 0
    with bar:  # closed on errors too, so an error message starts on a line of its own
        if pool.workers > 1 and total_bytes >= IN_PROCESS_BYTES:
            return _encode_in_pool(chunks, writer, tokenizer, pool, bar, rows)
        for chunk in chunks:
            tokens, n, row = _encode_chunk(chunk, tokenizer)
            rows.append(row)
            writer.write(tokens)
            done += n
            bar.update(n)
    return done


def _encode_in_pool(
    chunks: Iterator[list[str]],
    writer: ShardWriter,
    tokenizer,
    pool: WorkerPool,
    bar: tqdm,
    rows: list[dict],
) -> int:
    """Encode chunks in the build's worker processes, writing their tokens in order."""
    shipped, done = _shipped(tokenizer), 0
    try:
        executor = pool.get()
        pending: deque = deque()
        for chunk in chunks:  # a bounded window of tasks keeps memory flat and order intact
            pending.append(executor.submit(_encode_chunk, chunk, None, shipped))
            if len(pending) >= 2 * pool.workers:
                done += _drain_one(pending, writer, bar, rows)
        while pending:
            done += _drain_one(pending, writer, bar, rows)
    except cf.process.BrokenProcessPool:
        raise ChildProcessError(
            "an encoding worker process died (killed; by the out-of-memory killer?), so the "
            "build was stopped and nothing of it kept: rerun the same command, with a lower "
            "data.workers if memory is short"
        ) from None
    return done


def _drain_one(pending: deque, writer: ShardWriter, bar: tqdm, rows: list[dict]) -> int:
    tokens, n, row = pending.popleft().result()
    rows.append(row)
    writer.write(tokens)
    bar.update(n)
    return n


@dataclasses.dataclass
class BuildStats:
    read: ReadStats
    clean: CleanStats
    dedup: DedupStats
    documents: dict[str, int]
    text_bytes: dict[str, int]
    # per data.sources item: documents and bytes read, documents cleaning and dedup kept
    sources: dict[str, dict[str, int]] = dataclasses.field(default_factory=dict)
    mode: str = "document"  # the split used (data.split=auto resolved)


class _Totals:
    """Pass B's counts, added up batch by batch in corpus order."""

    def __init__(self, tasks, strict: bool = False):
        self.spec = [t.spec for t in tasks]
        self.read, self.clean = ReadStats(), CleanStats()
        self.outcomes = FileOutcomes(tasks, strict)  # no silent zero: files that gave nothing
        self.sources: dict[str, dict[str, int]] = {}
        self.cleaned = self.kept = 0

    def texts(self, batches: Iterable[KeptBatch]) -> Iterator[str]:
        """The kept documents of the batches, counting each batch as it is reached."""
        for batch in batches:
            merge_read_stats(self.read, batch.read)
            self.outcomes.add(batch, self.read)
            self.clean.merge(batch.clean)
            row = self.sources.setdefault(self.spec[batch.task], dict.fromkeys(_SOURCE_COUNTS, 0))
            row["cleaned"] += batch.cleaned
            row["kept"] += len(batch.texts)
            self.cleaned, self.kept = self.cleaned + batch.cleaned, self.kept + len(batch.texts)
            yield from batch.texts

    def per_source(self) -> dict[str, dict[str, int]]:
        for spec, row in self.sources.items():
            row["read"] = self.read.docs_by_source.get(spec, 0)
            row["bytes"] = self.read.bytes_by_source.get(spec, 0)
        return self.sources


_SOURCE_COUNTS = ("read", "bytes", "cleaned", "kept")


def _write_documents(cfg: DataConfig, tmp: Path, verbose: bool, engine) -> tuple[BuildStats, list]:
    """Pass A and dedup (by the engine), then pass B: kept documents → split → train/val.jsonl;
    returns stats and a sample of training lines for the tokenizer."""
    tasks = plan_tasks(cfg)
    dropped, dedup = np.empty(0, np.int64), None
    if cfg.dedup.exact or cfg.dedup.near:
        dropped, dedup = engine.dedup(tasks, tmp)
    began, totals = time.perf_counter(), _Totals(tasks, cfg.strict)
    counts, sizes = {"train": 0, "val": 0}, {"train": 0, "val": 0}
    sample, sample_budget = [], int(cfg.tokenizer.train_mb * 1e6)
    bar = tqdm(desc="write", unit=" docs", disable=not verbose, dynamic_ncols=True)
    with contextlib.ExitStack() as stack:  # every file closed, also when one write fails
        stack.callback(bar.close)
        files = {s: stack.enter_context(staging.create(tmp / f"{s}.jsonl")) for s in counts}
        kept = totals.texts(engine.kept(tasks, dropped, tmp))
        for split, text in split_documents(kept, cfg.val_fraction, cfg.split):
            line = json.dumps({"text": text}, ensure_ascii=False) + "\n"
            files[split].write(line.encode())
            counts[split] += 1
            sizes[split] += len(text.encode())
            if split == "train" and sample_budget > 0:
                sample.append(text)
                sample_budget -= len(text)
            bar.update(1)
    engine.passes["read → clean → split → JSONL"] = time.perf_counter() - began
    totals.outcomes.finish(totals.read)  # the last file's outcome (the others' are in already)
    stats = BuildStats(
        totals.read, totals.clean, _dedup_stats(dedup, totals), counts, sizes,
        totals.per_source(), _split_mode(cfg.split, totals.kept),
    )  # fmt: skip
    if not counts["train"] or not counts["val"]:
        raise ValueError(
            f"data.sources={cfg.sources!r} left {counts['train']} training and {counts['val']} "
            f"validation documents after reading, cleaning and deduplication:\n"
            + format_report(stats, None)
        )
    return stats, sample


def _dedup_stats(dedup: DedupStats | None, totals: _Totals) -> DedupStats:
    """The dedup's counts (all kept when it is off); fails if the two passes disagree."""
    if dedup is None:
        return DedupStats(totals.cleaned, 0, 0, totals.cleaned)
    if (dedup.documents_in, dedup.documents_out) != (totals.cleaned, totals.kept):
        raise ValueError(
            f"data.sources changed while they were read: the first pass found "
            f"{dedup.documents_in:,} documents, the second {totals.cleaned:,}. Rerun once the "
            "inputs stay put"
        )
    return dedup


def _split_mode(split: str, documents: int) -> str:
    """data.split as split_documents resolves it for this many documents."""
    if split == "auto":
        return "document" if documents >= AUTO_SPLIT_MIN_DOCS else "tail"
    return split


def make_engine(cfg: DataConfig, verbose: bool):
    """The engine data.engine names (its context closes what it started)."""
    if cfg.engine == "ray":
        return engine_ray.RayEngine(cfg, verbose)
    return LocalEngine(cfg, verbose)


def build_dataset(cfg: DataConfig, out_dir: str | AnyPath, verbose: bool = True) -> DatasetInfo:
    """Build the data dir at out_dir from scratch (see prepare_dataset for the cached entry)."""
    out_dir = location(out_dir, "data.path")
    if is_remote(out_dir):
        return _build_in_bucket(cfg, out_dir, verbose, reuse_local=False)
    foreign = staging.foreign_files(out_dir)
    if foreign:
        raise ValueError(
            f"data.path={out_dir} holds {', '.join(foreign[:3])}{', ...' if foreign[3:] else ''}"
            ", which a data dir does not; not replacing it. Choose a new data.path, or remove it"
        )
    key = dataset_key(cfg)
    _remove_abandoned(out_dir, verbose)
    try:
        stage = staging.Staging(out_dir, key)
    except OSError as e:
        raise staging.WriteError(staging.failure_message(e, out_dir, 0)) from None
    try:
        build = _build_sft if cfg.format == "sft" else _build_text
        report = build(cfg, stage.path, key, verbose)
        staging.write_file(stage.path / "report.txt", (report + "\n").encode())
        stage.commit()
    except OSError as e:
        written = _written(stage)
        stage.abort()
        if not _is_data_dir_path(e.filename, out_dir):
            raise  # reading an input, not writing the data dir: its own error says which
        raise staging.WriteError(staging.failure_message(e, out_dir, written)) from None
    except BaseException:
        stage.abort()
        raise
    if verbose:
        print(report)
    return load_dataset(out_dir)


def _remove_abandoned(out_dir: Path, verbose: bool) -> None:
    for path in staging.remove_abandoned(out_dir):
        if verbose:
            print(f"data: removed {path}, left by a build that was killed")


def _written(stage: staging.Staging) -> int:
    try:
        return stage.written_bytes()
    except OSError:
        return 0


def _is_data_dir_path(filename, out_dir: Path) -> bool:
    """Whether an error's file is the data dir, its staging dir, or a file in either."""
    if filename is None:
        return False
    path = Path(os.fsdecode(filename))
    for p in (path, path.parent):
        if p == out_dir or (
            p.parent == out_dir.parent and p.name.startswith(out_dir.name + ".tmp-")
        ):
            return True
    return False


def _build_text(cfg: DataConfig, tmp: Path, key: str, verbose: bool) -> str:
    """A text data dir in tmp, with its metadata.json written last; returns the report."""
    started = time.time()
    watch_memory()
    with make_engine(cfg, verbose) as engine:
        stats, sample = _write_documents(cfg, tmp, verbose, engine)
        if verbose and not cfg.tokenizer.path:
            print(f"data: training a SentencePiece {cfg.tokenizer.model_type} tokenizer")
        began = time.perf_counter()
        tokenizer = make_tokenizer(cfg.tokenizer, sample)
        del sample
        engine.passes["tokenizer"] = time.perf_counter() - began
        staging.write_file(tmp / type(tokenizer).filename, tokenizer.proto)
        began = time.perf_counter()
        if engine.name == "local":
            splits = _encode_splits(cfg, tmp, stats, tokenizer, verbose, engine)
        else:
            splits = engine.encode(cfg, tmp, stats, tokenizer)
        engine.passes["encode → shards"] = time.perf_counter() - began
    settings = {k: v for k, v in dataclasses.asdict(cfg).items() if k not in _HOW}
    meta = {
        "format_version": FORMAT_VERSION,
        "key": key,
        "config": settings,
        "vocab_size": tokenizer.vocab_size,
        "eot_id": tokenizer.eot_id,
        "dtype": token_dtype(tokenizer.vocab_size).name,
        "tokenizer_file": type(tokenizer).filename,
        "tokenizer_sha256": hashlib.sha256(tokenizer.proto).hexdigest(),
        "splits": splits,
        "read": dataclasses.asdict(stats.read),
        "clean": dataclasses.asdict(stats.clean),
        "dedup": dataclasses.asdict(stats.dedup),
        "sources": stats.sources,
        "seconds": round(time.time() - started, 2),
        "timings": _timings(engine),
    }
    _write_metadata(tmp, meta)
    return format_report(stats, meta)


# How a data dir was computed, not what it holds: left out of metadata.json's config, so the
# engines write the same bytes (their run is described under "timings").
_HOW = ("engine", "ray_address")


def _timings(engine) -> dict:
    """metadata.json's "timings": the engine, wall seconds per pass, busy seconds per stage
    (summed over processes) and what each worker process did."""
    return {
        "engine": engine.name,
        "workers": engine.workers,
        "passes": {k: round(v, 2) for k, v in engine.passes.items()},
        "busy_s": {k: round(v, 2) for k, v in engine.work.items()},
        "per_worker": [
            {k: round(v, 2) if isinstance(v, float) else v for k, v in row.items()}
            for row in sum_workers(engine.worker_rows)
        ],
        "peak_rss_mb": round(peak_rss_mb(), 1),
        "peak_private_mb": round(private_peak_mb(), 1),
    }


def _encode_splits(cfg: DataConfig, tmp: Path, stats: BuildStats, tokenizer, verbose: bool, engine):
    """Local engine: each split's JSONL → token shards; returns metadata's "splits"."""
    rows: list[dict] = []
    dtype = token_dtype(tokenizer.vocab_size)
    shard_tokens = max(int(cfg.shard_mb * 1e6) // dtype.itemsize, 1)
    splits = {}
    for split in ("train", "val"):
        with ShardWriter(tmp, split, dtype, shard_tokens) as writer:
            total = stats.text_bytes[split]
            jsonl = tmp / f"{split}.jsonl"
            _encode_split(jsonl, writer, tokenizer, engine.pool, total, verbose, rows)
            shards = writer.close()
        splits[split] = {
            "documents": stats.documents[split],
            "bytes": stats.text_bytes[split],
            "tokens": sum(s["tokens"] for s in shards),
            "shards": shards,
        }
    engine.worker_rows += rows
    engine.work["encode"] = sum(row["seconds"] for row in rows)
    return splits


def _write_metadata(tmp: Path, meta: dict) -> None:
    """metadata.json, with the size of every file written before it: the completion mark."""
    meta["files"] = {p.name: p.stat().st_size for p in sorted(tmp.iterdir()) if p.is_file()}
    staging.write_file(tmp / "metadata.json", json.dumps(meta, indent=2, default=str).encode())


def _build_sft(cfg: DataConfig, tmp: Path, key: str, verbose: bool) -> str:
    """An SFT data dir (data/sft.py) in tmp, with its metadata.json; returns the report."""
    started = time.time()
    built = build_sft(cfg, tmp, verbose)
    tokenizer = built["tokenizer"]
    meta = {
        "format_version": FORMAT_VERSION,
        "format": "sft",
        "key": key,
        "config": dataclasses.asdict(cfg),
        "vocab_size": tokenizer.vocab_size,
        "eot_id": tokenizer.eot_id,
        "dtype": built["dtype"],
        "tokenizer_file": type(tokenizer).filename,
        "tokenizer_sha256": hashlib.sha256(tokenizer.proto).hexdigest(),
        "splits": built["splits"],
        "read": dataclasses.asdict(built["read"]),
        "seconds": round(time.time() - started, 2),
    }
    _write_metadata(tmp, meta)
    return built["report"]


def prepare_dataset(cfg: DataConfig, out_dir: str | AnyPath, verbose: bool = True) -> DatasetInfo:
    """The data dir at out_dir (a local path, or gs:// / s3://), built only if it is missing,
    incomplete, or was built from other inputs or settings."""
    out_dir = location(out_dir, "data.path")
    reason = stale_reason(out_dir, cfg)
    if is_remote(out_dir):
        if reason is None:
            return load_dataset(out_dir)
        if verbose and not reason.endswith("does not exist"):
            print(f"data: {reason}; rebuilding it")
        return _build_in_bucket(cfg, out_dir, verbose, reuse_local=True)
    if reason is None:
        _remove_abandoned(out_dir, verbose)
        return load_dataset(out_dir)
    if verbose and out_dir.exists():
        print(f"data: {reason}; rebuilding it")
    return build_dataset(cfg, out_dir, verbose)


def _build_in_bucket(
    cfg: DataConfig, out_dir: AnyPath, verbose: bool, reuse_local: bool
) -> DatasetInfo:
    """Build the data dir in a local folder exactly as a local one is built (locked, fsynced,
    renamed into place), then upload it with metadata.json last (data/remote.py). The local
    copy is removed once the upload is complete; after a failed upload it stays, and the next
    prepare uploads it again without rebuilding it (reuse_local)."""
    storage.check_writable(out_dir, "data.path")  # a missing bucket fails before the build
    foreign = remote.foreign_objects(out_dir, staging.DATA_DIR_NAMES)
    if foreign:
        raise ValueError(
            f"data.path={out_dir} holds {', '.join(foreign[:3])}{', ...' if foreign[3:] else ''}"
            ", which a data dir does not; not replacing it. Choose a new data.path, or remove it"
        )
    local = storage.local_stand_in(out_dir, "data-build") / "data"
    if verbose:
        print(f"data: building {out_dir} in {local}, then uploading it")
    build = prepare_dataset if reuse_local else build_dataset
    build(cfg, local, verbose)
    remote.upload_data_dir(local, out_dir, verbose)
    shutil.rmtree(local, ignore_errors=True)
    with contextlib.suppress(OSError):  # the folder, unless another build is using it
        local.parent.rmdir()
    return load_dataset(out_dir)


def format_report(stats: BuildStats, meta: dict | None) -> str:
    """What happened, for people: documents in, drops by reason, duplicates, tokens out. Lines
    that differ from run to run (times, processes) all start with "time"."""
    r, c, d = stats.read, stats.clean, stats.dedup
    lines = ["── data report " + "─" * 46]
    lines.append(
        f"read         {r.documents:,} documents, {r.bytes / 1e6:,.1f} MB from {r.files:,} files"
    )
    for name, value in dataclasses.asdict(r).items():
        skip = ("documents", "bytes", "files", "input_bytes", "docs_by_source", "bytes_by_source")
        if name in skip or name in ("problems", "mixture", "no_documents") or not value:
            continue
        lines.append(f"  {name.replace('_', ' ')}: {value}")
    for problem in r.problems:
        lines.append(f"  ! {problem}")
    for outcome in r.no_documents:
        lines.append(f"  ! no documents: {outcome}")
    lines += sources_lib.mixture_report(r)
    dropped = ", ".join(f"{k} {v:,}" for k, v in sorted(c.dropped.items()) if v) or "none"
    lines.append(f"clean        kept {c.documents_out:,} of {c.documents_in:,}; dropped: {dropped}")
    for name, counts in (("quality", c.quality_reasons), ("lines removed", c.lines_removed)):
        if counts:
            lines.append(f"  {name}: " + ", ".join(f"{k} {v:,}" for k, v in sorted(counts.items())))
    lines.append(
        f"dedup        {d.exact_duplicates:,} exact and {d.near_duplicates:,} near duplicates "
        f"removed; {d.documents_out:,} documents left"
    )
    lines += _source_lines(stats.sources)
    for split in ("train", "val"):
        mb = stats.text_bytes[split] / 1e6
        line = f"{split:<12} {stats.documents[split]:,} documents, {mb:,.2f} MB"
        if meta:
            info = meta["splits"][split]
            bpt = info["bytes"] / max(info["tokens"], 1)
            shards = len(info["shards"])
            line += f", {info['tokens']:,} tokens in {shards} shard(s), {bpt:.2f} bytes/token"
        lines.append(line)
    if meta:
        lines.append(
            f"tokenizer    {meta['tokenizer_file']}, vocab {meta['vocab_size']:,}, "
            f"ids stored as {meta['dtype']}"
        )
        lines += _time_lines(meta, stats.read.bytes)
    return "\n".join(lines)


def _source_lines(sources: dict[str, dict[str, int]]) -> list[str]:
    """Per data.sources item: documents read → left by cleaning → left by dedup."""
    if not sources:
        return []
    lines = ["sources      documents read → after cleaning → after dedup"]
    for spec, n in sources.items():
        lines.append(
            f"  {spec}: {n['read']:,} ({n['bytes'] / 1e6:,.1f} MB) → {n['cleaned']:,} → "
            f"{n['kept']:,}"
        )
    return lines


def _time_lines(meta: dict, text_bytes: int) -> list[str]:
    t, mb = meta["timings"], text_bytes / 1e6
    lines = [
        f"time         {meta['seconds']:.1f}s on the {t['engine']} engine with {t['workers']} "
        f"worker(s); this process peaked at {t['peak_rss_mb']:,.0f} MB "
        f"({t['peak_private_mb']:,.0f} MB private)"
    ]
    for name, seconds in t["passes"].items():
        moves_data = name not in ("tokenizer", "start Ray", "connect to Ray")
        rate = f"{mb / seconds:8.1f} MB/s" if seconds > 0 and moves_data else ""
        lines.append(f"time  {name:<32} {seconds:7.1f}s {rate}")
    busy = ", ".join(f"{k} {v:.1f}s" for k, v in t["busy_s"].items())
    if busy:
        lines.append(f"time  busy, summed over processes: {busy}")
    for w in t["per_worker"]:
        where = f"node {w['node'][:12]} " if w["node"] else ""
        lines.append(
            f"time  {where}pid {w['pid']}: {w['stage']} {w['batches']:,} batch(es), "
            f"{w['bytes'] / 1e6:,.1f} MB, {w['seconds']:.1f}s busy, peak RSS "
            f"{w['peak_rss_mb']:,.0f} MB ({w['peak_private_mb']:,.0f} MB private)"
        )
    return lines
