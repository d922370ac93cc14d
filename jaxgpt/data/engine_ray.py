"""The Ray Data engine (data.engine=ray): the stages of data/stages.py as Ray Data operators on
a Ray cluster (or a Ray started here), writing the same bytes as the local engine.

    pass A   tasks → read → clean + keys               one row of keys per batch, materialized
    dedup    key records (exact key or band bucket, id, signature; never text) sorted by key:
             a shuffle that puts equal keys in one block; resolve_partition per block; the
             driver folds the results (NearResolution) and reruns buckets with orphans
    pass B   tasks → read → clean + drop dropped ids  the kept text, materialized; the driver
             streams it in corpus order (preserve_order) into train/val JSONL
    encode   kept text → split + tokens per batch     the driver writes the shards in order

Every operator is a pure function of its input, so Ray's retries of a task whose worker died
give the same bytes. Each worker holds one batch (stages.BATCH_BYTES of text) or one sorted
block of key records at a time; Ray spills what does not fit its object store to local disk.
The driver holds the dropped ids and the near-duplicate edges, and writes the data dir.

Ray is an optional extra (pip install 'jaxgpt[ray]'), imported only when this engine runs.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import json
import logging
import pickle
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np

import jaxgpt
from jaxgpt.config.data import DataConfig
from jaxgpt.data.clean import CleanStats
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
from jaxgpt.data.shards import ShardWriter, token_dtype
from jaxgpt.data.stages import (
    KeptBatch,
    RawBatch,
    ReadTask,
    clean_batch,
    encode_split,
    kept_texts,
    keys_batch,
    read_batches,
    reader_options,
    task_ids,
    watch_memory,
    worker_row,
)
from jaxgpt.data.tokenizer import tokenizer_from_bytes

# What one worker of pass A or B may use (a batch of text, the word-hash cache); Ray schedules
# by it, and it keeps the read from being fused into the same task (so one big file still
# spreads its batches over the cluster).
WORKER_MEMORY = 512 << 20
RECORD_BLOCK_DOCS = 4096  # documents per block of key records (~9 KB of records each)
PROBE_SECONDS = 5.0
INSTALL = "pip install 'jaxgpt[ray]'"


def import_ray():
    """The ray module, or an ImportError that says how to install it."""
    try:
        import ray
        import ray.data  # the engine needs Ray Data, not only Ray core
    except ImportError as e:
        raise ImportError(
            f"data.engine=ray needs Ray Data, which is not installed here ({e}): {INSTALL} "
            "(on every machine of the cluster), or set data.engine=local"
        ) from None
    return ray


def probe(address: str) -> None:
    """Fail fast when nothing listens at HOST:PORT (ray.init would retry for minutes)."""
    host, _, port = address.removeprefix("ray://").rpartition(":")
    try:
        socket.create_connection((host.strip("[]"), int(port)), PROBE_SECONDS).close()
    except OSError as e:
        raise ConnectionError(
            f"no Ray cluster at data.ray_address={address} ({e.strerror or e}): start one "
            f"there with `ray start --head --port={port}`, or leave data.ray_address empty to "
            "start Ray on this machine"
        ) from None


def connect(ray, cfg: DataConfig, verbose: bool) -> bool:
    """Join the cluster data.ray_address names, or start Ray here; True if this call did."""
    if ray.is_initialized():
        return False  # the caller's own Ray session: used as it is, and left running
    quiet = {"log_to_driver": False, "logging_level": logging.INFO if verbose else logging.WARNING}
    if not cfg.ray_address:
        ray.init(num_cpus=cfg.workers or None, include_dashboard=False, **quiet)
        return True
    if cfg.ray_address != "auto":
        probe(cfg.ray_address)
    try:
        ray.init(address=cfg.ray_address, **quiet)
    except ConnectionError as e:
        raise ConnectionError(
            f"no Ray cluster at data.ray_address={cfg.ray_address} ({e}). Start one with "
            "`ray start --head`, or leave data.ray_address empty to start Ray on this machine"
        ) from None
    return True


def _configure(ray, verbose: bool) -> dict:
    """Set the Ray Data options the engine relies on; returns the old ones."""
    ctx = ray.data.DataContext.get_current()
    names = ("execution_options", "shuffle_strategy", "enable_progress_bars")
    saved = {n: getattr(ctx, n) for n in names}
    options = copy.deepcopy(ctx.execution_options)
    options.preserve_order = True  # outputs in input order: the data dir is in corpus order
    ctx.execution_options = options
    # Sort-based shuffle: measured 2-3x faster than the hash shuffle's aggregator actors here.
    ctx.shuffle_strategy = type(ctx.shuffle_strategy).SORT_SHUFFLE_PULL_BASED
    ctx.enable_progress_bars = verbose
    if not verbose:
        logging.getLogger("ray.data").setLevel(logging.WARNING)
    return saved


def _user_error(error: BaseException) -> BaseException | None:
    """The error a stage raised (a bad input's ValueError, a missing file's OSError) inside
    Ray's wrappers, so it reaches the user as the local engine would raise it."""
    found, seen = None, set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        plain = not type(error).__module__.startswith("ray")
        if plain and isinstance(error, ValueError | OSError | ImportError | RuntimeError):
            found = error
        error = getattr(error, "cause", None) or error.__cause__
    if found is not None and _RAY_NOTE in str(found):  # Ray appends its retry advice
        with contextlib.suppress(TypeError):  # an error type that takes other arguments
            found = type(found)(str(found).split(_RAY_NOTE)[0])
    return found


_RAY_NOTE = "\nFailed to apply UDF transform"


# ---------------------------------------------------------------- the operators (on workers)


def _node() -> str:
    import ray

    return ray.get_runtime_context().get_node_id() or ""


def _text_column(texts: list[str]):
    import pyarrow as pa

    # surrogatepass: raw text may hold lone surrogates, which Arrow's UTF-8 strings refuse.
    return pa.array([[t.encode("utf-8", "surrogatepass") for t in texts]], pa.list_(pa.binary()))


def _texts(value: list[bytes]) -> list[str]:
    return [b.decode("utf-8", "surrogatepass") for b in value]


def _read_op(batch, options: dict, version: str):
    """tasks → one row per batch of raw documents (with what reading it counted)."""
    import pyarrow as pa

    if jaxgpt.__version__ != version:
        raise RuntimeError(
            f"node {_node()} runs jaxgpt {jaxgpt.__version__}, the driver {version}: install "
            "the same jaxgpt on every machine of the Ray cluster"
        )
    for task in batch["task"].to_pylist():
        for raw in read_batches(pickle.loads(task), options):
            yield pa.table({
                "task": [raw.task], "start": [raw.start], "texts": _text_column(raw.texts),
                "read": [json.dumps(dataclasses.asdict(raw.stats))], "read_s": [raw.seconds],
            })  # fmt: skip


def _raw_batches(table) -> Iterator[RawBatch]:
    for row in table.to_pylist():
        stats = ReadStats(**json.loads(row["read"]))
        yield RawBatch(row["task"], row["start"], _texts(row["texts"]), stats, row["read_s"])


def _keys_op(table, cfg: DataConfig):
    """Pass A: raw batches → their cleaned documents' ids and dedup keys (no text)."""
    import pyarrow as pa

    rows = []
    for raw in _raw_batches(table):
        cleaned = clean_batch(raw, cfg)
        keys, seconds = keys_batch(cleaned, cfg)
        work = {"read": raw.seconds, "clean": cleaned.seconds, "keys": seconds}
        size = sum(len(t) for t in raw.texts)
        report = worker_row("read → keys", 1, size, cleaned.seconds + seconds, _node())
        rows.append({
            "ids": task_ids(cleaned).tobytes(), "exact": keys.exact.tobytes(),
            "sigs": keys.sigs.tobytes(), "bands": keys.bands.tobytes(),
            "report": json.dumps({"work": work, "worker": report}),
        })  # fmt: skip
    return pa.Table.from_pylist(rows, schema=_KEYS_SCHEMA())


def _KEYS_SCHEMA():  # noqa: N802  (a constant that needs pyarrow, which loads with Ray)
    import pyarrow as pa

    fields = [(n, pa.binary()) for n in ("ids", "exact", "sigs", "bands")]
    return pa.schema([*fields, ("report", pa.string())])


def _keys_of(row: dict, cfg: DataConfig) -> tuple[np.ndarray, DocumentKeys]:
    ids = np.frombuffer(row["ids"], np.int64)
    exact = np.frombuffer(row["exact"], np.uint64).reshape(-1, 2)
    sigs = np.frombuffer(row["sigs"], np.uint32).reshape(-1, cfg.dedup.num_perm)
    bands = np.frombuffer(row["bands"], np.uint64)
    # A batch whose every document cleaning dropped has no keys: reshape(0, -1) is an error.
    bands = bands.reshape(len(sigs), -1) if len(sigs) else bands.reshape(0, 0)
    return ids, DocumentKeys(exact, sigs, bands)


def _records_op(table, cfg: DataConfig, only: np.ndarray | None):
    """Keys → one record per exact key and band bucket, carrying the document's signature
    (only the buckets whose hash is in `only`, when given: the orphan rerun)."""
    import pyarrow as pa

    parts = []
    for row in table.to_pylist():
        ids, keys = _keys_of(row, cfg)
        records = key_records(ids, keys)
        doc = np.tile(np.arange(len(ids)), len(records) // max(len(ids), 1))
        if only is not None:
            pick = np.isin(records["h"], only)
            records, doc = records[pick], doc[pick]
        columns = {name: records[name] for name in RECORD_DTYPE.names}
        if cfg.dedup.near:
            width = 4 * cfg.dedup.num_perm
            data = pa.py_buffer(np.ascontiguousarray(keys.sigs[doc]).tobytes())
            sig = pa.FixedSizeBinaryArray.from_buffers(pa.binary(width), len(doc), [None, data])
            columns["sig"] = sig
        parts.append(pa.table(columns))
    return pa.concat_tables(parts) if parts else pa.table({n: [] for n in RECORD_DTYPE.names})


def _signatures(table, num_perm: int) -> np.ndarray:
    """The `sig` column of a block as [rows, num_perm] uint32, without a copy per row."""
    column = table["sig"].combine_chunks()
    width = 4 * num_perm
    data = np.frombuffer(column.buffers()[1], np.uint8)
    data = data[column.offset * width : (column.offset + len(column)) * width]
    return data.view(np.uint32).reshape(-1, num_perm)


def _resolve_op(table, cfg: DataConfig, forced: dict | None):
    """One sorted block of records (whole groups: the sort keeps equal keys together) →
    exact drops, near edges and non-representatives, as one row."""
    import pyarrow as pa

    watch_memory()
    began = time.process_time()
    records = np.empty(table.num_rows, RECORD_DTYPE)
    for name in RECORD_DTYPE.names:
        records[name] = table[name].to_numpy()
    sigs = _signatures(table, cfg.dedup.num_perm) if cfg.dedup.near else None
    found = resolve_partition(records, lambda pos: sigs[pos], min_equal(cfg.dedup), forced)
    arrays = found.arrays()
    report = worker_row("dedup", 1, records.nbytes, time.process_time() - began, _node())
    row = {name: [value.tobytes()] for name, value in arrays.items()}
    return pa.table({**row, "report": [json.dumps({"worker": report})]})


_DROPPED: dict = {}  # the dropped ids, fetched once per worker process


def _kept_op(table, cfg: DataConfig, dropped):
    """Pass B: raw batches → the documents dedup kept, with pass B's counts."""
    import pyarrow as pa
    import ray

    if isinstance(dropped, ray.ObjectRef):
        key = dropped.hex()
        if key not in _DROPPED:
            _DROPPED.clear()
            _DROPPED[key] = ray.get(dropped)
        dropped = _DROPPED[key]
    out = []
    for raw in _raw_batches(table):
        cleaned = clean_batch(raw, cfg)
        texts = kept_texts(cleaned, task_ids(cleaned), dropped)
        size = sum(len(t) for t in raw.texts)
        report = worker_row("read → filter", 1, size, cleaned.seconds, _node())
        out.append({
            "task": raw.task, "start": raw.start, "texts": [t.encode() for t in texts],
            "read": json.dumps(dataclasses.asdict(raw.stats)),
            "clean": json.dumps(dataclasses.asdict(cleaned.stats)), "cleaned": len(cleaned.texts),
            "report": json.dumps({"work": {"read (pass B)": raw.seconds,
                                           "clean (pass B)": cleaned.seconds}, "worker": report}),
        })  # fmt: skip
    return pa.Table.from_pylist(out, schema=_KEPT_SCHEMA())


def _KEPT_SCHEMA():  # noqa: N802
    import pyarrow as pa

    return pa.schema([
        ("task", pa.int64()), ("start", pa.int64()), ("texts", pa.list_(pa.binary())),
        ("read", pa.string()), ("clean", pa.string()), ("cleaned", pa.int64()),
        ("report", pa.string()),
    ])  # fmt: skip


_TOKENIZERS: dict = {}


def _encode_op(table, tokenizer, mode: str, val_fraction: float, dtype: str):
    """Kept documents → split → token ids (EOT after each document) per split."""
    import pyarrow as pa
    import ray

    key = tokenizer.hex()
    if key not in _TOKENIZERS:
        _TOKENIZERS.clear()
        _TOKENIZERS[key] = tokenizer_from_bytes(*ray.get(tokenizer))
    out = []
    for texts in table["texts"].to_pylist():
        began = time.process_time()
        sides = encode_split([t.decode() for t in texts], mode, val_fraction, _TOKENIZERS[key])
        row = {s: sides[s][0].astype(dtype).tobytes() for s in sides}
        seconds = time.process_time() - began
        size = sum(n for _, n in sides.values())
        report = worker_row("encode", 1, size, seconds, _node())
        out.append({**row, "report": json.dumps({"work": {"encode": seconds}, "worker": report})})
    schema = pa.schema([("train", pa.binary()), ("val", pa.binary()), ("report", pa.string())])
    return pa.Table.from_pylist(out, schema=schema)


# ---------------------------------------------------------------- the engine (on the driver)


class RayEngine:
    """Runs the stages with Ray Data; see the module docstring. Use it in a with block: it
    joins (or starts) Ray on entry and leaves (or stops) it on exit."""

    name = "ray"

    def __init__(self, cfg: DataConfig, verbose: bool):
        self.cfg, self.verbose = cfg, verbose
        self.ray = import_ray()
        self.options = reader_options(cfg)
        self.passes: dict[str, float] = {}
        self.work: dict[str, float] = {}
        self.worker_rows: list[dict] = []
        self.workers = 0
        self._owned, self._saved, self._kept = False, {}, None

    def __enter__(self) -> RayEngine:
        began = time.perf_counter()
        self._owned = connect(self.ray, self.cfg, self.verbose)
        self.passes["start Ray" if not self.cfg.ray_address else "connect to Ray"] = (
            time.perf_counter() - began
        )
        self._saved = _configure(self.ray, self.verbose)
        self.workers = int(self.ray.cluster_resources().get("CPU", 0))
        return self

    def __exit__(self, kind, error, _) -> None:
        self._kept = None
        ctx = self.ray.data.DataContext.get_current()
        for name, value in self._saved.items():
            setattr(ctx, name, value)
        if self._owned:
            self.ray.shutdown()
        cause = _user_error(error) if error is not None else None
        if cause is not None and cause is not error:
            raise cause.with_traceback(None) from None

    def _reads(self, tasks: list[ReadTask]):
        # Each task travels in its own row (not a list every task gets: 10,000 files).
        items = [{"task": pickle.dumps(t)} for t in tasks]
        ds = self.ray.data.from_items(items, override_num_blocks=len(items))
        kwargs = {"options": self.options, "version": jaxgpt.__version__}
        read = ds.map_batches(_read_op, fn_kwargs=kwargs, batch_size=1, batch_format="pyarrow")
        # A block per batch (of stages.BATCH_BYTES), so one big file's batches spread too.
        return read.repartition(target_num_rows_per_block=1)

    def _note(self, report: str) -> None:
        found = json.loads(report)
        for stage, seconds in found.get("work", {}).items():
            self.work[stage] = self.work.get(stage, 0.0) + seconds
        self.worker_rows.append(found["worker"])

    def dedup(self, tasks: list[ReadTask], tmp: Path) -> tuple[np.ndarray, DedupStats]:
        """Pass A and the dedup: the sorted ids of dropped documents, and the counts."""
        began = time.perf_counter()
        keyed = self._reads(tasks).map_batches(
            _keys_op, fn_kwargs={"cfg": self.cfg}, batch_size=1, batch_format="pyarrow",
            memory=WORKER_MEMORY,
        ).materialize()  # fmt: skip
        documents = 0
        for row in keyed.select_columns(["ids", "report"]).iter_rows():
            documents += len(row["ids"]) // 8
            self._note(row["report"])
        self.passes["read → clean → keys"] = time.perf_counter() - began
        began, resolution = time.perf_counter(), NearResolution()
        # Rows of keys per block of records: about RECORD_BLOCK_DOCS documents' records, which
        # sets how many partitions the sort makes and so what one resolve task holds.
        per_block = max(1, RECORD_BLOCK_DOCS * keyed.count() // max(documents, 1))
        if documents:
            self._resolve(keyed, per_block, resolution, None)
            while orphans := resolution.solve():
                self._resolve(keyed, per_block, resolution, orphans)
        self.passes["dedup (sort shuffle)"] = time.perf_counter() - began
        return resolution.dropped(), resolution.stats(documents)

    def _resolve(self, keyed, rows: int, resolution: NearResolution, forced: dict | None):
        only = None if forced is None else np.array(sorted({h for _, h in forced}), np.uint64)
        records = keyed.map_batches(
            _records_op, fn_kwargs={"cfg": self.cfg, "only": only}, batch_size=rows,
            batch_format="pyarrow",
        )  # fmt: skip
        resolved = records.sort(list(RECORD_DTYPE.names[:3])).map_batches(
            _resolve_op, fn_kwargs={"cfg": self.cfg, "forced": forced}, batch_size=None,
            batch_format="pyarrow",
        )  # fmt: skip
        for row in resolved.iter_rows():
            arrays = {n: np.frombuffer(row[n], np.int64) for n in ("exact", "edge_a", "edge_b")}
            arrays["nonrep"] = np.frombuffer(row["nonrep"], RECORD_DTYPE)
            resolution.add(arrays)
            self._note(row["report"])

    def kept(
        self, tasks: list[ReadTask], dropped: np.ndarray, tmp: Path | None = None
    ) -> Iterator[KeptBatch]:
        """Pass B: read → clean → drop the dropped ids; batches in corpus order. (tmp: the
        local engine's work files; Ray keeps its intermediate data in its object store.)"""
        self._kept = self._reads(tasks).map_batches(
            _kept_op, fn_kwargs={"cfg": self.cfg, "dropped": self.ray.put(dropped)},
            batch_size=1, batch_format="pyarrow", memory=WORKER_MEMORY,
        ).materialize()  # fmt: skip
        last = (-1, -1)
        for row in self._kept.iter_rows():
            place = (row["task"], row["start"])
            if place <= last:  # preserve_order is what makes the bytes the local engine's
                raise RuntimeError(f"Ray Data returned batch {place} after {last}: out of order")
            last = place
            self._note(row["report"])
            read = ReadStats(**json.loads(row["read"]))
            clean = CleanStats(**json.loads(row["clean"]))
            yield KeptBatch(row["task"], [t.decode() for t in row["texts"]], read, clean,
                            row["cleaned"])  # fmt: skip

    def encode(self, cfg: DataConfig, tmp: Path, stats, tokenizer) -> dict:
        """Kept documents → token shards (written here, in order); metadata's "splits"."""
        dtype = token_dtype(tokenizer.vocab_size)
        shipped = (type(tokenizer).filename, tokenizer.proto, getattr(tokenizer, "eot_token", ""))
        kwargs = {
            "tokenizer": self.ray.put(shipped), "mode": stats.mode,
            "val_fraction": cfg.val_fraction, "dtype": dtype.str,
        }  # fmt: skip
        encoded = self._kept.select_columns(["texts"]).map_batches(
            _encode_op, fn_kwargs=kwargs, batch_size=1, batch_format="pyarrow"
        )
        shard_tokens = max(int(cfg.shard_mb * 1e6) // dtype.itemsize, 1)
        with (
            ShardWriter(tmp, "train", dtype, shard_tokens) as train,
            ShardWriter(tmp, "val", dtype, shard_tokens) as val,
        ):
            for row in encoded.iter_rows():
                train.write(np.frombuffer(row["train"], dtype))
                val.write(np.frombuffer(row["val"], dtype))
                self._note(row["report"])
            shards = {"train": train.close(), "val": val.close()}
        return {
            split: {
                "documents": stats.documents[split],
                "bytes": stats.text_bytes[split],
                "tokens": sum(s["tokens"] for s in shards[split]),
                "shards": shards[split],
            }
            for split in ("train", "val")
        }
