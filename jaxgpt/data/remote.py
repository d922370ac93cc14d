"""Data in buckets (gs://, s3://): data dirs listed and uploaded, token shards read by byte
ranges, and source files found by glob.

A data dir in a bucket is built in a local folder exactly as a local one is (data/staging.py:
flock, fsync, atomic rename), then uploaded object by object. Its metadata.json is the completion
mark there too: the old one is deleted before anything else is replaced, and the new one is put
last, so a reader never takes a half-uploaded dir for a finished one.

Training never copies the corpus: each process fetches only the byte ranges of its own windows
(`read_ranges`, concurrent ranged GETs through fsspec's cat_ranges).
"""

from __future__ import annotations

import posixpath
from collections.abc import Sequence
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
from etils import epath

from jaxgpt import storage
from jaxgpt.config import AnyPath

METADATA = "metadata.json"
PROBE_PREFIX = ".jaxgpt-probe-"  # storage.check_writable's probe object, deleted right after it
READ_BLOCK = 8 << 20  # source files are streamed in blocks of this many bytes


def url(fs: Any, key: str) -> str:
    """The gs:// or s3:// URL of a key of fs."""
    return fs.unstrip_protocol(key)


def _fail(path: AnyPath | str, error: Exception, doing: str) -> Exception:
    """A bucket error as one message naming the path (FileNotFoundError stays one, so callers
    that expect a missing file still catch it)."""
    if isinstance(error, storage.StorageError):
        return error
    message = str(storage.explain(path, error, doing))
    return FileNotFoundError(message) if isinstance(error, FileNotFoundError) else OSError(message)


# ---------------------------------------------------------------- data dirs


def object_sizes(path: AnyPath) -> dict[str, int]:
    """Size of every object under the prefix `path`, by name relative to it ("sub/x" for nested
    ones), from one listing rather than a request per object; {} when there are none."""
    fs, base = storage.filesystem(path)
    base = base.rstrip("/")
    try:
        fs.invalidate_cache(base)  # another process may have written since we last looked
        found = fs.find(base, detail=True)
    except Exception as e:
        raise _fail(path, e, "listing the data dir") from e
    sizes = {}
    for key, info in found.items():
        if info.get("type") == "directory":
            continue
        name = key[len(base) + 1 :] if key.startswith(base + "/") else posixpath.basename(key)
        sizes[name] = int(info["size"])
    return sizes


def read_object(path: AnyPath) -> bytes | None:
    """A whole object's bytes, or None when it does not exist."""
    fs, key = storage.filesystem(path)
    try:
        return fs.cat_file(key)
    except FileNotFoundError:
        if _bucket_exists(fs, key):
            return None
        gone = FileNotFoundError(f"the bucket {key.split('/')[0]} does not exist")
        raise _fail(path, gone, "reading") from None
    except Exception as e:
        raise _fail(path, e, "reading") from e


def _bucket_exists(fs: Any, key: str) -> bool:
    try:
        return bool(fs.exists(key.split("/", 1)[0]))
    except Exception:
        return False


def upload_data_dir(local: Path, remote: AnyPath, verbose: bool) -> None:
    """Put the finished local data dir `local` at the bucket prefix `remote`: un-commit the old
    one (delete its metadata.json), upload every other file, put metadata.json last (the commit),
    then delete the objects the new dir does not name (an old build's extra shards)."""
    fs, base = storage.filesystem(remote)
    base = base.rstrip("/")
    names = sorted(p.name for p in local.iterdir() if p.is_file() and p.name != METADATA)
    total = sum((local / n).stat().st_size for n in names)
    if verbose:
        print(f"data: uploading {len(names) + 1} files ({total / 1e6:,.1f} MB) to {remote}")
    try:
        if fs.exists(f"{base}/{METADATA}"):
            fs.rm_file(f"{base}/{METADATA}")
        fs.put([str(local / n) for n in names], [f"{base}/{n}" for n in names])
        fs.put_file(str(local / METADATA), f"{base}/{METADATA}")
        keep = {*names, METADATA}
        stale = [f"{base}/{n}" for n in object_sizes(remote) if n not in keep]
        if stale:
            fs.rm(stale)
    except Exception as e:
        raise _fail(remote, e, "uploading the data dir to") from e


def foreign_objects(remote: AnyPath, allowed) -> list[str]:
    """Names under the prefix that a data dir does not hold (`allowed` matches a data dir's
    names), so a build never deletes someone else's objects; the object itself when `remote`
    names an object rather than a prefix."""
    fs, key = storage.filesystem(remote)
    try:
        if fs.isfile(key):
            return [posixpath.basename(key)]
    except Exception as e:
        raise _fail(remote, e, "listing the data dir") from e
    return sorted(
        name
        for name in object_sizes(remote)
        if not allowed.fullmatch(name) and not name.startswith(PROBE_PREFIX)
    )


# ---------------------------------------------------------------- token shards


def read_ranges(
    fs: Any, keys: Sequence[str], starts: Sequence[int], ends: Sequence[int]
) -> list[bytes]:
    """Bytes [start, end) of each key, fetched concurrently in one call; a short read (an object
    replaced or truncated under us) is an error naming the object."""
    if not keys:
        return []
    try:
        blobs = fs.cat_ranges(list(keys), list(starts), list(ends), on_error="raise")
    except Exception as e:
        raise _fail(url(fs, keys[0]), e, "reading token shards from") from e
    for blob, key, start, end in zip(blobs, keys, starts, ends, strict=True):
        if len(blob) != end - start:
            raise OSError(
                f"{url(fs, key)}: asked for bytes {start:,}-{end:,} and got {len(blob):,}; the "
                "shard is shorter than metadata.json says (replaced while training?). Rebuild "
                "the data dir with python -m jaxgpt.prepare --force"
            )
    return blobs


class RemoteShard:
    """A token shard in a bucket, read by byte ranges; its length comes from metadata.json, so
    opening a split makes no request."""

    def __init__(self, path: AnyPath, dtype: np.dtype | str, n_tokens: int):
        self.fs, self.key = storage.filesystem(path)
        self.dtype = np.dtype(dtype)
        self.n_tokens = int(n_tokens)

    def __len__(self) -> int:
        return self.n_tokens

    def __getitem__(self, index: slice) -> np.ndarray:
        if not isinstance(index, slice) or index.step not in (None, 1):
            raise TypeError("a remote shard is read by contiguous slices only")
        start, stop, _ = index.indices(self.n_tokens)
        if stop <= start:
            return np.zeros(0, self.dtype)
        size = self.dtype.itemsize
        (blob,) = read_ranges(self.fs, [self.key], [start * size], [stop * size])
        return np.frombuffer(blob, self.dtype).copy()

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        """The whole shard (validation splits are read whole)."""
        whole = self[:]
        return whole if dtype is None else whole.astype(dtype)


# ---------------------------------------------------------------- source files


def expand(pattern: str, keep) -> list[tuple[AnyPath, dict]]:
    """(path, info) of the objects matching a gs:// or s3:// path or glob (`**` included); a
    prefix that holds objects gives those for which keep(name) is true. Sorted, like local
    globs. A bucket that does not exist is a FileNotFoundError naming it."""
    fs, key = storage.filesystem(pattern)
    try:
        matches = fs.glob(key, detail=True)
    except FileNotFoundError as e:
        raise FileNotFoundError(_missing(fs, key, pattern)) from e
    except Exception as e:
        raise _fail(pattern, e, "listing the source files") from e
    found: list[tuple[AnyPath, dict]] = []
    for name, info in sorted(matches.items()):
        if info.get("type") == "directory":
            below = fs.find(name, detail=True)
            found += [
                (epath.Path(url(fs, k)), i)
                for k, i in sorted(below.items())
                if i.get("type") != "directory" and keep(posixpath.basename(k))
            ]
        else:
            found.append((epath.Path(url(fs, name)), info))
    return found


def check_matches(pattern: str, what: str) -> None:
    """FileNotFoundError naming the pattern when it matches nothing (or its bucket is gone)."""
    fs, key = storage.filesystem(pattern)
    try:
        matches = fs.glob(key)
    except FileNotFoundError as e:
        raise FileNotFoundError(f"{what} {pattern!r}: {_missing(fs, key, pattern)}") from e
    except Exception as e:
        raise _fail(pattern, e, f"listing {what}") from e
    if not matches:
        raise FileNotFoundError(f"{what} {pattern!r}: {_missing(fs, key, pattern)}")


def _missing(fs: Any, key: str, pattern: str) -> str:
    bucket = key.split("/", 1)[0]
    scheme = storage.scheme(pattern)
    if not _bucket_exists(fs, key):
        return (
            f"the bucket {scheme}://{bucket} does not exist or these credentials cannot see it; "
            "create it, or fix the name"
        )
    return f"no object in {scheme}://{bucket} matches it"


def version(info: dict) -> str:
    """What changes when an object is rewritten: its GCS generation, else its ETag, else its
    modification time."""
    for field in ("generation", "ETag", "etag", "md5Hash", "LastModified", "updated", "mtime"):
        if info.get(field):
            return str(info[field])
    return ""


def size(path: AnyPath) -> int:
    fs, key = storage.filesystem(path)
    try:
        return int(fs.size(key))
    except Exception as e:
        raise _fail(path, e, "reading the size of") from e


def open_object(path: AnyPath) -> BinaryIO:
    """An object opened for streaming binary reads (read-ahead in READ_BLOCK blocks)."""
    fs, key = storage.filesystem(path)
    try:
        return fs.open(key, "rb", block_size=READ_BLOCK, cache_type="readahead")
    except Exception as e:
        raise _fail(path, e, "opening") from e
