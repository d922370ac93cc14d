"""Build a data dir: read → clean → deduplicate → split → JSONL → tokenizer → token shards.

Two passes, so memory stays bounded by the dedup index rather than the corpus: the first writes
the cleaned documents as JSONL (and keeps a sample for the tokenizer), the second encodes the
JSONL in parallel worker processes into shards. Everything is written into a staging dir that
is renamed into place only when complete (data/staging.py), so a killed build leaves no data
dir that could be used, and a failed write gives one clear error.
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import dataclasses
import hashlib
import json
import multiprocessing
import os
import shutil
import threading
import time
from collections import deque
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
from tqdm import tqdm

from jaxgpt import storage
from jaxgpt.config import AnyPath, is_remote, location
from jaxgpt.data import remote, staging
from jaxgpt.data import sources as sources_lib
from jaxgpt.data.clean import CleanStats, clean_documents
from jaxgpt.data.dataset import (
    FORMAT_VERSION,
    DataConfig,
    DatasetInfo,
    dataset_key,
    load_dataset,
    stale_reason,
)
from jaxgpt.data.dedup import DedupStats, deduplicate
from jaxgpt.data.sft import build_sft
from jaxgpt.data.shards import ShardWriter, token_dtype
from jaxgpt.data.tokenizer import make_tokenizer, tokenizer_from_bytes

AUTO_SPLIT_MIN_DOCS = 100  # fewer documents than this: hold out the tail of each instead
ENCODE_CHUNK_BYTES = 4_000_000  # text per worker task
IN_PROCESS_BYTES = 8_000_000  # smaller corpora are encoded without a process pool


def _doc_fraction(text: str) -> float:
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
            yield ("val" if _doc_fraction(doc) < val_fraction else "train"), doc
        else:
            cut = int(len(doc) * (1 - val_fraction))
            if doc[:cut]:
                yield "train", doc[:cut]
            if doc[cut:]:
                yield "val", doc[cut:]


def _chain(head: list[str], rest: Iterator[str]) -> Iterator[str]:
    yield from head
    yield from rest


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


_WORKER_TOKENIZER = None


def _init_worker(filename: str, data: bytes, eot_token: str, parent: int) -> None:
    global _WORKER_TOKENIZER
    _WORKER_TOKENIZER = tokenizer_from_bytes(filename, data, eot_token)
    threading.Thread(target=_exit_with_parent, args=(parent,), daemon=True).start()


def _exit_with_parent(parent: int) -> None:
    """A build killed with kill -9 cannot stop its workers, and they would wait for work
    forever: each watches for its parent to go."""
    while os.getppid() == parent:
        time.sleep(0.5)
    os._exit(1)


def _encode_chunk(texts: list[str], tokenizer=None) -> tuple[np.ndarray, int]:
    """Token ids of the documents, each followed by EOT, as one uint32 array; and its bytes."""
    tok = tokenizer or _WORKER_TOKENIZER
    ids = tok.encode_batch(texts)
    out = np.empty(sum(map(len, ids)) + len(ids), np.uint32)
    pos = 0
    for doc in ids:
        out[pos : pos + len(doc)] = doc
        out[pos + len(doc)] = tok.eot_id
        pos += len(doc) + 1
    return out, sum(len(t.encode()) for t in texts)


def _encode_split(
    jsonl: Path, writer: ShardWriter, tokenizer, workers: int, total_bytes: int, verbose: bool
) -> int:
    """Encode a JSONL split into shards, in order; returns the number of bytes encoded."""
    bar = tqdm(
        total=total_bytes, unit="B", unit_scale=True, desc=f"encode {writer.name}",
        disable=not verbose, dynamic_ncols=True,
    )  # fmt: skip
    chunks = _chunks(_read_jsonl_texts(jsonl), ENCODE_CHUNK_BYTES)
    done = 0
    with bar:  # closed on errors too, so an error message starts on a line of its own
        if workers > 1 and total_bytes >= IN_PROCESS_BYTES:
            return _encode_in_pool(chunks, writer, tokenizer, workers, bar)
        for chunk in chunks:
            tokens, n = _encode_chunk(chunk, tokenizer)
            writer.write(tokens)
            done += n
            bar.update(n)
    return done


def _encode_in_pool(
    chunks: Iterator[list[str]], writer: ShardWriter, tokenizer, workers: int, bar: tqdm
) -> int:
    """Encode chunks in worker processes, writing their tokens in order."""
    # spawn, not fork: the parent may already run JAX's threads, which fork can deadlock.
    ctx = multiprocessing.get_context("spawn")
    init = (
        type(tokenizer).filename, tokenizer.proto, getattr(tokenizer, "eot_token", ""),
        os.getpid(),
    )  # fmt: skip
    done = 0
    try:
        with cf.ProcessPoolExecutor(workers, ctx, _init_worker, init) as pool:
            pending: deque = deque()
            for chunk in chunks:  # a bounded window of tasks keeps memory flat and order intact
                pending.append(pool.submit(_encode_chunk, chunk))
                if len(pending) >= 2 * workers:
                    done += _drain_one(pending, writer, bar)
            while pending:
                done += _drain_one(pending, writer, bar)
    except cf.process.BrokenProcessPool:
        raise ChildProcessError(
            "an encoding worker process died (killed; by the out-of-memory killer?), so the "
            "build was stopped and nothing of it kept: rerun the same command, with a lower "
            "data.workers if memory is short"
        ) from None
    return done


def _drain_one(pending: deque, writer: ShardWriter, bar: tqdm) -> int:
    tokens, n = pending.popleft().result()
    writer.write(tokens)
    bar.update(n)
    return n


@dataclasses.dataclass
class BuildStats:
    read: sources_lib.ReadStats
    clean: CleanStats
    dedup: DedupStats
    documents: dict[str, int]
    text_bytes: dict[str, int]


def _write_documents(cfg: DataConfig, tmp: Path, verbose: bool) -> tuple[BuildStats, list[str]]:
    """Pass 1: sources → clean → dedup → split → train/val.jsonl; returns stats and a sample
    of training lines for the tokenizer."""
    read_stats = sources_lib.ReadStats()
    clean_stats, dedup_stats = CleanStats(), DedupStats()
    docs = sources_lib.iter_documents(
        sources_lib.parse_sources(cfg.sources),
        read_stats,
        text_split=cfg.text_split,
        strict=cfg.strict,
        stdlib_max_mb=cfg.stdlib_max_mb,
        jsonl_field=cfg.jsonl_field,
        tfds_data_dir=cfg.tfds_data_dir,
        tfds_text_field=cfg.tfds_text_field,
    )
    kept = deduplicate(clean_documents(docs, cfg.clean, clean_stats), cfg.dedup, dedup_stats)
    counts = {"train": 0, "val": 0}
    sizes = {"train": 0, "val": 0}
    sample, sample_budget = [], int(cfg.tokenizer.train_mb * 1e6)
    bar = tqdm(desc="read", unit=" docs", disable=not verbose, dynamic_ncols=True)
    with contextlib.ExitStack() as stack:  # every file closed, also when one write fails
        stack.callback(bar.close)
        files = {s: stack.enter_context(staging.create(tmp / f"{s}.jsonl")) for s in counts}
        for split, text in split_documents(kept, cfg.val_fraction, cfg.split):
            line = json.dumps({"text": text}, ensure_ascii=False) + "\n"
            files[split].write(line.encode())
            counts[split] += 1
            sizes[split] += len(text.encode())
            if split == "train" and sample_budget > 0:
                sample.append(text)
                sample_budget -= len(text)
            bar.update(1)
    stats = BuildStats(read_stats, clean_stats, dedup_stats, counts, sizes)
    if not counts["train"] or not counts["val"]:
        raise ValueError(
            f"data.sources={cfg.sources!r} left {counts['train']} training and {counts['val']} "
            f"validation documents after reading, cleaning and deduplication:\n"
            + format_report(stats, None)
        )
    return stats, sample


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
    stats, sample = _write_documents(cfg, tmp, verbose)
    timings = {"read_clean_dedup_s": time.time() - started}
    if verbose and not cfg.tokenizer.path:
        print(f"data: training a SentencePiece {cfg.tokenizer.model_type} tokenizer")
    tokenizer = make_tokenizer(cfg.tokenizer, sample)
    del sample
    timings["tokenizer_s"] = time.time() - started - sum(timings.values())
    staging.write_file(tmp / type(tokenizer).filename, tokenizer.proto)
    splits = _encode_splits(cfg, tmp, stats, tokenizer, verbose)
    timings["encode_s"] = time.time() - started - sum(timings.values())
    meta = {
        "format_version": FORMAT_VERSION,
        "key": key,
        "config": dataclasses.asdict(cfg),
        "vocab_size": tokenizer.vocab_size,
        "eot_id": tokenizer.eot_id,
        "dtype": token_dtype(tokenizer.vocab_size).name,
        "tokenizer_file": type(tokenizer).filename,
        "tokenizer_sha256": hashlib.sha256(tokenizer.proto).hexdigest(),
        "splits": splits,
        "read": dataclasses.asdict(stats.read),
        "clean": dataclasses.asdict(stats.clean),
        "dedup": dataclasses.asdict(stats.dedup),
        "seconds": round(time.time() - started, 2),
        "timings": {k: round(v, 2) for k, v in timings.items()},
    }
    _write_metadata(tmp, meta)
    return format_report(stats, meta)


def _encode_splits(cfg: DataConfig, tmp: Path, stats: BuildStats, tokenizer, verbose: bool):
    """Pass 2: each split's JSONL → token shards; returns metadata's "splits"."""
    dtype = token_dtype(tokenizer.vocab_size)
    workers = cfg.workers or max(1, (os.cpu_count() or 1))
    shard_tokens = max(int(cfg.shard_mb * 1e6) // dtype.itemsize, 1)
    splits = {}
    for split in ("train", "val"):
        with ShardWriter(tmp, split, dtype, shard_tokens) as writer:
            total = stats.text_bytes[split]
            _encode_split(tmp / f"{split}.jsonl", writer, tokenizer, workers, total, verbose)
            shards = writer.close()
        splits[split] = {
            "documents": stats.documents[split],
            "bytes": stats.text_bytes[split],
            "tokens": sum(s["tokens"] for s in shards),
            "shards": shards,
        }
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
    """What happened, for people: documents in, drops by reason, duplicates, tokens out."""
    r, c, d = stats.read, stats.clean, stats.dedup
    lines = ["── data report " + "─" * 46]
    lines.append(
        f"read         {r.documents:,} documents, {r.bytes / 1e6:,.1f} MB from {r.files:,} files"
    )
    if len(r.docs_by_source) > 1:
        for spec, n in r.docs_by_source.items():
            lines.append(f"  {n:>10,} documents from {spec}")
    for name, value in dataclasses.asdict(r).items():
        skip = ("documents", "bytes", "files", "input_bytes", "docs_by_source", "bytes_by_source")
        if name in skip or name == "problems" or not value:
            continue
        lines.append(f"  {name.replace('_', ' ')}: {value}")
    for problem in r.problems:
        lines.append(f"  ! {problem}")
    dropped = ", ".join(f"{k} {v:,}" for k, v in sorted(c.dropped.items()) if v) or "none"
    lines.append(f"clean        kept {c.documents_out:,} of {c.documents_in:,}; dropped: {dropped}")
    lines.append(
        f"dedup        {d.exact_duplicates:,} exact and {d.near_duplicates:,} near duplicates "
        f"removed; {d.documents_out:,} documents left"
    )
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
        t = meta["timings"]
        lines.append(
            f"time         {meta['seconds']:.1f}s: read+clean+dedup "
            f"{t['read_clean_dedup_s']:.1f}s, tokenizer {t['tokenizer_s']:.1f}s, "
            f"encode {t['encode_s']:.1f}s"
        )
    return "\n".join(lines)
