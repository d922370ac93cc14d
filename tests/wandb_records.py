"""Read an offline W&B run back (test code only): the run-ID.wandb file's config, history rows
and summary.

wandb 0.31 ships no reader for its own run files (wandb.sdk.internal.datastore is gone; the Go
wandb-core reads them). The file is the LevelDB log format: a 7-byte header (":W&B", magic
0xBEE1, version 0), then 32 KiB blocks of chunks, each with a 7-byte header (CRC-32 of the type
byte and the data, length, type: FULL, or FIRST/MIDDLE/LAST pieces of one record); a block's
tail shorter than a chunk header is zero padding. Each record is a
wandb.proto.wandb_internal_pb2.Record.
"""

from __future__ import annotations

import dataclasses
import json
import struct
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

BLOCK = 32 * 1024
HEADER = struct.Struct("<IHB")  # CRC-32, data length, chunk type
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def read_records(path: Path) -> Iterator[Any]:
    """Every record (a wandb_internal_pb2.Record) of a .wandb file; a bad header, checksum
    or chunk order fails."""
    data = path.read_bytes()
    ident, magic, version = struct.unpack("<4sHB", data[:7])
    assert (ident, magic, version) == (b":W&B", 0xBEE1, 0), (path, ident, magic, version)
    pos, pieces = 7, None
    while pos + HEADER.size <= len(data):
        if BLOCK - pos % BLOCK < HEADER.size:  # zero padding at a block's end
            pos += BLOCK - pos % BLOCK
            continue
        crc, length, kind = HEADER.unpack_from(data, pos)
        chunk = data[pos + HEADER.size : pos + HEADER.size + length]
        pos += HEADER.size + length
        if kind == 0 and length == 0:  # the unwritten rest of the last block
            continue
        assert zlib.crc32(chunk, zlib.crc32(bytes([kind]))) == crc, f"{path}: bad CRC at {pos}"
        if kind == FULL:
            yield _record(chunk)
        elif kind == FIRST:
            pieces = [chunk]
        elif kind in (MIDDLE, LAST):
            assert pieces is not None, f"{path}: chunk type {kind} without FIRST at {pos}"
            pieces.append(chunk)
            if kind == LAST:
                yield _record(b"".join(pieces))
                pieces = None
        else:
            raise AssertionError(f"{path}: unknown chunk type {kind} at {pos}")


def _record(data: bytes) -> Any:
    # Imported here: test modules importing this one still load without wandb installed.
    from wandb.proto import wandb_internal_pb2

    record = wandb_internal_pb2.Record()
    record.ParseFromString(data)
    return record


def _key(item: Any) -> str:
    return item.key or ".".join(item.nested_key)


@dataclasses.dataclass
class OfflineRun:
    """One offline-run-<time>-<id> folder, read back."""

    directory: Path
    run_id: str
    project: str
    name: str
    tags: list[str]
    config: dict[str, Any]  # W&B's own "_wandb" entry left out
    history: list[dict[str, Any]]  # one dict per committed row, with "_step"
    summary: dict[str, Any]  # dotted keys
    exit_code: int | None  # None: the run never finished

    def steps_with(self, key: str) -> list[int]:
        return [row["_step"] for row in self.history if key in row]


def read_run(directory: Path) -> OfflineRun:
    (path,) = directory.glob("run-*.wandb")
    meta, config, history, summary, exit_code = None, {}, [], {}, None
    for record in read_records(path):
        kind = record.WhichOneof("record_type")
        if kind == "run":
            meta = record.run
            config.update({_key(u): json.loads(u.value_json) for u in record.run.config.update})
        elif kind == "config":
            config.update({_key(u): json.loads(u.value_json) for u in record.config.update})
        elif kind == "history":
            history.append({_key(i): json.loads(i.value_json) for i in record.history.item})
        elif kind == "summary":
            summary.update({_key(u): json.loads(u.value_json) for u in record.summary.update})
        elif kind == "exit":
            exit_code = record.exit.exit_code
    assert meta is not None, f"{path}: no run record"
    config.pop("_wandb", None)
    return OfflineRun(
        directory, meta.run_id, meta.project, meta.display_name, list(meta.tags), config,
        history, summary, exit_code,
    )  # fmt: skip


def offline_runs(wandb_dir: Path) -> list[OfflineRun]:
    """Every offline run under a W&B dir (DIR/wandb), oldest first."""
    return [read_run(d) for d in sorted(wandb_dir.glob("offline-run-*"))]
