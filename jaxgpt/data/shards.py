"""Token shards: flat uint16/uint32 files, read back as one stream (memory-mapped on disk, by
byte ranges in a bucket)."""

from __future__ import annotations

import bisect
import contextlib
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from jaxgpt.config import AnyPath, is_remote
from jaxgpt.data import remote, staging


def token_dtype(vocab_size: int) -> np.dtype:
    """uint16 when every id fits (half the disk and page cache), else uint32."""
    return np.dtype(np.uint16 if vocab_size <= 2**16 else np.uint32)


class ShardWriter:
    """Appends token arrays to NAME-00000.bin, NAME-00001.bin, ... of at most shard_tokens each.
    Use it in a with block: on an error, its open file is closed (and so frees its disk space
    once the staging dir is removed) rather than left to the garbage collector."""

    def __init__(self, directory: Path, name: str, dtype: np.dtype, shard_tokens: int):
        self.directory, self.name, self.dtype = Path(directory), name, np.dtype(dtype)
        self.shard_tokens = shard_tokens
        self.counts: list[int] = []
        self._file = None

    def _open_next(self) -> None:
        if self._file is not None:
            self._file.close()
        self._file = staging.create(self.directory / f"{self.name}-{len(self.counts):05d}.bin")
        self.counts.append(0)

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, kind, *_) -> None:
        if kind is not None and self._file is not None:
            with contextlib.suppress(OSError):
                self._file.close()

    def write(self, tokens: np.ndarray) -> None:
        tokens = np.ascontiguousarray(tokens, dtype=self.dtype)
        while len(tokens):
            if self._file is None or self.counts[-1] >= self.shard_tokens:
                self._open_next()
            room = self.shard_tokens - self.counts[-1]
            head, tokens = tokens[:room], tokens[room:]
            self._file.write(memoryview(head).cast("B"))  # through the file: errors name it
            self.counts[-1] += len(head)

    def close(self) -> list[dict]:
        """Finish; returns [{"file", "tokens"}] for metadata.json (one empty shard if nothing)."""
        if self._file is None:
            self._open_next()
        self._file.close()
        return [
            {"file": f"{self.name}-{i:05d}.bin", "tokens": n} for i, n in enumerate(self.counts)
        ]


class TokenStream:
    """Several shards viewed as one token sequence; slices may cross shard boundaries.

    Local shards are memory-mapped. Shards in a bucket (gs://, s3://) are read by byte ranges:
    `windows` fetches every window of a batch in one concurrent call, so a process reads only
    the tokens of its own rows. Their token counts come from metadata.json (`tokens`).
    """

    def __init__(
        self,
        files: Iterable[AnyPath],
        dtype: np.dtype | str,
        tokens: Sequence[int] | None = None,
    ):
        files = list(files)
        self.dtype = np.dtype(dtype)
        self.remote = bool(files) and is_remote(files[0])
        if self.remote:
            counts = (
                tokens
                if tokens is not None
                else [remote.size(f) // self.dtype.itemsize for f in files]
            )
            self.shards = [
                remote.RemoteShard(f, dtype, n) for f, n in zip(files, counts, strict=True) if n
            ]
        else:
            self.shards = [
                np.memmap(f, dtype=dtype, mode="r") for f in files if Path(f).stat().st_size
            ]
        self.starts = [0]
        for shard in self.shards:
            self.starts.append(self.starts[-1] + len(shard))

    def __len__(self) -> int:
        return self.starts[-1]

    def window(self, start: int, length: int) -> np.ndarray:
        """tokens[start : start + length] as a new array."""
        if self.remote:
            return self.ranges([start], [length])[0]
        i = bisect.bisect_right(self.starts, start) - 1
        offset = start - self.starts[i]
        piece = self.shards[i][offset : offset + length]
        if len(piece) == length:
            return np.array(piece)
        parts, need = [piece], length - len(piece)
        while need:
            i += 1
            parts.append(self.shards[i][:need])
            need -= len(parts[-1])
        return np.concatenate(parts)

    def windows(self, starts: Sequence[int], length: int) -> np.ndarray:
        """[len(starts), length]: tokens[s : s + length] for each s, read together."""
        if not len(starts):
            return np.zeros((0, length), self.dtype)
        return np.stack(self.ranges(starts, [length] * len(starts)))

    def ranges(self, starts: Sequence[int], lengths: Sequence[int]) -> list[np.ndarray]:
        """tokens[s : s + n] for each (s, n); bucket shards in one batch of ranged reads."""
        if not self.remote:
            return [self.window(int(s), int(n)) for s, n in zip(starts, lengths, strict=True)]
        spans = [self._spans(int(s), int(n)) for s, n in zip(starts, lengths, strict=True)]
        flat = [span for row in spans for span in row]
        size = self.dtype.itemsize
        blobs = iter(
            remote.read_ranges(
                self.shards[0].fs,
                [self.shards[i].key for i, _, _ in flat],
                [a * size for _, a, _ in flat],
                [b * size for _, _, b in flat],
            )
        )
        out = []
        for row in spans:
            parts = [np.frombuffer(next(blobs), self.dtype) for _ in row]
            out.append(np.concatenate(parts) if parts else np.zeros(0, self.dtype))
        return out

    def _spans(self, start: int, length: int) -> list[tuple[int, int, int]]:
        """(shard, first, end) token ranges that together hold tokens[start : start + length]."""
        if start < 0 or start + length > len(self):
            raise IndexError(
                f"tokens {start:,}..{start + length:,} are outside the stream of {len(self):,}"
            )
        spans = []
        i = bisect.bisect_right(self.starts, start) - 1
        while length > 0:
            offset = start - self.starts[i]
            n = min(length, len(self.shards[i]) - offset)
            spans.append((i, offset, offset + n))
            start, length, i = start + n, length - n, i + 1
        return spans

    def read_all(self) -> np.ndarray:
        return np.concatenate([np.asarray(s) for s in self.shards]) if self.shards else np.zeros(0)
