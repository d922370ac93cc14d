"""Readers for the structured source kinds: JSON Lines, TFDS, MediaWiki XML dumps, Parquet and
Hugging Face datasets (the web crawls, WET and WARC, are read in web.py).

Each reader yields documents (str) and counts what it read, skipped or repaired into a ReadStats
(see inputs.py). Bad input is counted and remembered as "path:line: reason" by default, and is a
ValueError naming the place with strict=True. Slow imports (zstandard, mwparserfromhell,
tensorflow_datasets, pyarrow) happen inside the reader that needs them.
"""

from __future__ import annotations

import bz2
import gzip
import io
import json
import lzma
import os
import re
import zlib
from collections.abc import Iterator
from typing import BinaryIO

from jaxgpt.config import AnyPath, is_remote
from jaxgpt.data import encoding, remote
from jaxgpt.data.inputs import (
    CorruptInputError,
    FillingReader,
    ReadStats,
    Source,
    corrupt,
    file_size,
    hf_splits,
    input_files,
    reject,
)

TFDS_SPEC = re.compile(r"[A-Za-z0-9_]+(/[\w.+-]+)?")
READ_CHUNK = 1 << 20
# Rows turned into Python strings at a time (Parquet, Arrow): memory stays one row group's
# compressed column chunk plus this many documents, whatever the file's size.
ARROW_BATCH_ROWS = 1024


# ---------------------------------------------------------------- opening and decoding


class _ZstdReader(FillingReader):
    """Streaming .zst decompression that, unlike zstandard.stream_reader, notices truncation."""

    def __init__(self, fh: BinaryIO):
        import zstandard

        # Large windows let files made with `zstd --long=31` (common for web corpora) decode.
        self._dctx = zstandard.ZstdDecompressor(max_window_size=2**31)
        self._fh, self._dobj, self._out, self._eof = fh, None, memoryview(b""), False

    def _fill(self) -> None:
        chunk = self._fh.read(READ_CHUNK)
        if not chunk:
            if self._dobj is not None:
                raise EOFError("zstd data ended inside a frame")
            self._eof = True
            return
        out = []
        while chunk:  # a file may hold several frames back to back
            if self._dobj is None:
                self._dobj = self._dctx.decompressobj()
            out.append(self._dobj.decompress(chunk))
            chunk = b""
            if self._dobj.eof:
                chunk, self._dobj = self._dobj.unused_data, None
        self._out = memoryview(b"".join(out))


class _Checked(io.RawIOBase):
    """A decompressing stream whose low-level errors become CorruptInputError naming the file."""

    def __init__(self, inner: BinaryIO, fh: BinaryIO, path: AnyPath, errors: tuple[type, ...]):
        self._inner, self._fh, self._path, self._errors = inner, fh, path, errors
        self._pos = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        try:
            n = self._inner.readinto(buffer)
        except self._errors as e:
            raise CorruptInputError(
                f"{self._path}: truncated or corrupt compressed data after {self._pos:,} "
                f"decompressed bytes ({type(e).__name__}: {e})"
            ) from e
        self._pos += n
        return n

    def close(self) -> None:
        if not self.closed:
            self._inner.close()
            self._fh.close()
        super().close()


_DECOMPRESSORS = {
    ".gz": lambda fh: gzip.GzipFile(fileobj=fh),
    ".bz2": bz2.BZ2File,
    ".xz": lzma.LZMAFile,
    ".zst": _ZstdReader,
}


def open_input(path: AnyPath) -> BinaryIO:
    """path opened for binary reading, decompressed by its suffix (.gz, .bz2, .xz, .zst); a
    gs:// or s3:// object is streamed through fsspec."""
    suffix = path.suffix.lower()
    # Both are closed by the returned stream.
    fh = remote.open_object(path) if is_remote(path) else open(path, "rb")  # noqa: SIM115
    if suffix not in _DECOMPRESSORS:
        return fh
    errors: tuple[type, ...] = (EOFError, OSError, zlib.error, lzma.LZMAError)
    if suffix == ".zst":
        import zstandard

        errors = (*errors, zstandard.ZstdError)
    inner = _DECOMPRESSORS[suffix](fh)
    return io.BufferedReader(_Checked(inner, fh, path, errors), buffer_size=READ_CHUNK)


# ---------------------------------------------------------------- jsonl


def _jsonl_text(line: bytes, where: str, field: str, stats: ReadStats, strict: bool) -> str | None:
    """The text field of one JSONL line, or None when the line is blank or bad (and counted)."""
    try:
        decoded = line.decode("utf-8")
    except UnicodeDecodeError as e:
        reject(stats, strict, where, f"not valid UTF-8 at byte {e.start}", "bad_utf8_lines")
        decoded = line.decode("utf-8", errors="replace")
    if not decoded.strip():
        return None
    try:
        record = json.loads(decoded)
    except json.JSONDecodeError as e:
        reject(stats, strict, where, f"invalid JSON ({e.msg}, column {e.colno})", "bad_json_lines")
        return None
    if not isinstance(record, dict):
        reason = f"not a JSON object (a {type(record).__name__})"
        reject(stats, strict, where, reason, "bad_json_lines")
        return None
    text = record.get(field)
    if not isinstance(text, str):
        reason = f"no {field!r} field" if field not in record else f"{field!r} is not a string"
        keys = ", ".join(repr(k) for k in list(record)[:10]) or "none"  # which field to name
        reject(stats, strict, where, f"{reason} (data.jsonl_field); its keys: {keys}",
               "missing_field_lines")  # fmt: skip
        return None
    return text


def read_jsonl(
    source: Source,
    stats: ReadStats,
    strict: bool,
    jsonl_field: str = "text",
    detect_encoding: bool = False,
    **_,
) -> Iterator[str]:
    """JSON Lines (.jsonl, optionally .gz/.bz2/.xz/.zst), one document per line's text field.
    A byte-order mark is honored (UTF-16/32 lines decoded); with detect_encoding a file whose
    head is not UTF-8 is decoded as charset-normalizer finds."""
    for path in input_files(source, stats):
        with open_input(path) as raw:
            decoded = None
            try:
                decoded = encoding.open_lines(raw, path, detect_encoding)
                if note := decoded.note(path):
                    stats.note(note)
                # Lines are split on b"\n" only: JSON never holds a raw newline, other breaks
                # (\r, U+2028) inside strings stay part of the text.
                for lineno, line in enumerate(decoded.stream, 1):
                    text = _jsonl_text(line, f"{path}:{lineno}", jsonl_field, stats, strict)
                    if text is None:
                        continue
                    if stats.accept(source, text):
                        yield text
            except CorruptInputError as e:
                corrupt(e, stats, strict)
            if decoded is not None and decoded.replaced:  # decoded from another encoding
                stats.bad_utf8_files += 1
                name = decoded.encoding.upper()
                stats.note(f"{path}: {decoded.replaced} invalid {name} sequence(s) replaced")


# ---------------------------------------------------------------- tfds


def parse_tfds_spec(spec: str) -> tuple[str, str]:
    """'NAME[/CONFIG][:SPLIT]' -> (name, split); split defaults to 'train'."""
    name, _, split = spec.partition(":")
    name, split = name.strip(), split.strip() or "train"
    if not TFDS_SPEC.fullmatch(name):
        raise ValueError(f"data.sources: tfds:{spec!r} is not tfds:NAME[/CONFIG][:SPLIT]")
    return name, split


def resolve_tfds_data_dir(data_dir: str | None = None) -> str:
    """The TFDS data_dir: the argument, else $TFDS_DATA_DIR, else ~/tensorflow_datasets."""
    chosen = data_dir or os.environ.get("TFDS_DATA_DIR") or "~/tensorflow_datasets"
    return os.path.expanduser(chosen)


def _tfds_builder(name: str, data_dir: str):
    """The dataset's builder, found offline; FileNotFoundError saying how to prepare it if not."""
    import tensorflow_datasets as tfds

    how = (
        f"This reader never downloads. On a machine with internet, run\n"
        f'  python -c "import tensorflow_datasets as tfds; '
        f"tfds.builder('{name}', data_dir='{data_dir}').download_and_prepare()\"\n"
        f"then copy {data_dir} here (or point data.tfds_data_dir / $TFDS_DATA_DIR at it)."
    )
    try:
        # try_gcs=False: never look in the public bucket; unregistered names load from files.
        builder = tfds.builder(name, data_dir=data_dir, try_gcs=False)
    except tfds.core.DatasetNotFoundError as e:
        raise FileNotFoundError(
            f"TFDS dataset {name!r} is not prepared in data_dir {data_dir} and no builder by that "
            f"name is installed. {how}"
        ) from e
    if not builder.is_prepared():
        raise FileNotFoundError(
            f"TFDS dataset {name!r} is not prepared in data_dir {data_dir} "
            f"(no {builder.data_path}). {how}"
        )
    return builder


def read_tfds(
    source: Source,
    stats: ReadStats,
    strict: bool,
    tfds_data_dir: str | None = None,
    tfds_text_field: str = "text",
    **_,
) -> Iterator[str]:
    """A prepared TensorFlow Datasets split, read offline; one document per example's text."""
    name, split = parse_tfds_spec(source.path)
    data_dir = resolve_tfds_data_dir(tfds_data_dir)
    builder = _tfds_builder(name, data_dir)
    features = builder.info.features
    if tfds_text_field not in features:
        raise ValueError(
            f"tfds:{name} has no feature {tfds_text_field!r} (data.tfds_text_field); "
            f"its features are {sorted(features.keys())}"
        )
    for part in split.split("+"):
        if (base := part.split("[")[0].strip()) not in builder.info.splits:
            raise ValueError(
                f"tfds:{name} has no split {base!r}; its splits are {sorted(builder.info.splits)}"
            )
    ds = builder.as_dataset(split=split, shuffle_files=False).map(lambda ex: ex[tfds_text_field])
    for index, value in enumerate(ds.as_numpy_iterator()):
        if not isinstance(value, bytes):
            raise ValueError(f"tfds:{name} feature {tfds_text_field!r} is not a single text")
        try:
            text = value.decode("utf-8")
        except UnicodeDecodeError as e:
            where = f"tfds:{name}:{split} example {index}"
            reject(stats, strict, where, f"not valid UTF-8 at byte {e.start}", "bad_utf8_records")
            text = value.decode("utf-8", errors="replace")
        if stats.accept(source, text):
            yield text


# ---------------------------------------------------------------- parquet and hf (Arrow)


def _pyarrow(what: str):
    try:
        import pyarrow
    except ImportError as e:
        raise ImportError(f"{what} sources need pyarrow: pip install pyarrow") from e
    return pyarrow


def _arrow_input(pa, path):
    """A file for Arrow to read: a local one through Arrow's own reads (not mapped, so resident
    memory holds only the batch in hand), a bucket object streamed through fsspec, which Arrow
    reads with seeks (a Parquet footer first, then only the text column's chunks)."""
    return remote.open_object(path) if is_remote(path) else pa.OSFile(str(path))


def _text_column(schema, name: str, where: str, key: str) -> None:
    """ValueError unless schema has a text (string or binary) column `name`; Arrow would
    otherwise silently yield batches without it."""
    import pyarrow as pa

    if name not in schema.names:
        raise ValueError(
            f"{where} has no column {name!r} ({key}); its columns are {schema.names}. Set "
            f"{key} to the one that holds the text"
        )
    kind = schema.field(name).type
    text_types = ("string", "large_string", "binary", "large_binary", "string_view", "binary_view")
    # getattr: the *_view types arrived in pyarrow 16.
    if not any(getattr(pa.types, f"is_{t}", lambda _: False)(kind) for t in text_types):
        raise ValueError(
            f"{where}: column {name!r} ({key}) holds {kind}, not text; set {key} to a string "
            f"column (the columns are {schema.names})"
        )


def _column_texts(
    column, where: str, first_row: int, name: str, stats: ReadStats, strict: bool
) -> Iterator[str]:
    """The documents of one Arrow column chunk (string or binary): nulls and invalid UTF-8 are
    counted (or, strict, fail) with the file and row."""
    for row, value in enumerate(column.to_pylist(), first_row):
        if value is None:
            reject(stats, strict, f"{where}: row {row}", f"{name!r} is null", "null_texts")
            continue
        if isinstance(value, bytes):
            try:
                value = value.decode("utf-8")
            except UnicodeDecodeError as e:
                reason = f"not valid UTF-8 at byte {e.start}"
                reject(stats, strict, f"{where}: row {row}", reason, "bad_utf8_records")
                value = value.decode("utf-8", errors="replace")
        yield value


def read_parquet(
    source: Source, stats: ReadStats, strict: bool, parquet_column: str = "text", **_
) -> Iterator[str]:
    """Parquet files (local or in a bucket), one document per row's text column, streamed in
    batches of ARROW_BATCH_ROWS rows within each row group, reading only that column."""
    pa = _pyarrow("parquet:")
    import pyarrow.parquet as pq

    for path in input_files(source, stats):
        with _arrow_input(pa, path) as stream:
            try:
                parquet = pq.ParquetFile(stream)
            except pa.ArrowInvalid as e:
                corrupt(CorruptInputError(f"{path}: not a Parquet file ({e})"), stats, strict)
                continue
            _text_column(parquet.schema_arrow, parquet_column, str(path), "data.parquet_column")
            row = 0
            try:
                for batch in parquet.iter_batches(ARROW_BATCH_ROWS, columns=[parquet_column]):
                    column = batch.column(0)
                    for text in _column_texts(
                        column, str(path), row, parquet_column, stats, strict
                    ):
                        if stats.accept(source, text):
                            yield text
                    row += batch.num_rows
            except pa.ArrowInvalid as e:
                message = f"{path}: corrupt Parquet data after row {row:,} ({e})"
                corrupt(CorruptInputError(message), stats, strict)


def _hf_files(source: Source, split: str) -> list:
    """The Arrow files of the split data.hf_split; a saved single Dataset is read whole."""
    splits = hf_splits(source.path)
    if "" in splits:
        return splits[""]
    if split not in splits:
        raise ValueError(
            f"hf:{source.path} has no split {split!r} (data.hf_split); its splits are "
            f"{sorted(splits)}"
        )
    return splits[split]


def read_hf(
    source: Source,
    stats: ReadStats,
    strict: bool,
    hf_split: str = "train",
    hf_field: str = "text",
    **_,
) -> Iterator[str]:
    """A Hugging Face dataset saved with save_to_disk (a folder, local or in a bucket) or in the
    local cache by name, never downloaded: its Arrow stream files are read batch by batch
    (memory-mapped when local), only the field data.hf_field."""
    pa = _pyarrow("hf:")
    for path in _hf_files(source, hf_split):
        stats.files += 1
        stats.input_bytes += file_size(path)
        with _arrow_input(pa, path) as stream:
            reader = pa.ipc.open_stream(stream)
            _text_column(reader.schema, hf_field, f"hf:{source.path} ({path})", "data.hf_field")
            index = reader.schema.get_field_index(hf_field)
            row = 0
            for batch in reader:
                for start in range(0, batch.num_rows, ARROW_BATCH_ROWS):
                    column = batch.column(index).slice(start, ARROW_BATCH_ROWS)
                    for text in _column_texts(column, str(path), row, hf_field, stats, strict):
                        if stats.accept(source, text):
                            yield text
                    row += len(column)
