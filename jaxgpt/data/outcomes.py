"""No silent zero: every input file that gave no training text is named, with why.

A build that reads 0 documents from a file is almost always a mistake (the wrong kind, the wrong
field, an XML that is not a MediaWiki dump, a file cut short) and the one sign of it would be a
smaller corpus. FileOutcomes watches pass B's batches as the driver takes them, in corpus order
(so on every engine alike), adds up each file's counts, and when a file is done and it gave no
documents, or cleaning and the quality filters dropped all of them, it records one line in
ReadStats.no_documents ("FILE: why"), which the report lists under `read`; with data.strict
that line is an error instead. Files of 0 bytes are left alone: there is nothing to lose.
"""

from __future__ import annotations

import glob
import re
import zlib

from jaxgpt.config import location
from jaxgpt.data.inputs import CorruptInputError, ReadStats, Source
from jaxgpt.data.readers import open_input
from jaxgpt.data.stages import KeptBatch, ReadTask, merge_read_stats

SNIFF_BYTES = 65536  # enough for a WARC's warcinfo record and the next record's header
_COUNTERS = (
    "bad_json_lines", "missing_field_lines", "null_texts", "corrupt_files", "wrong_kind_files",
    "bad_utf8_files", "bad_utf8_lines", "bad_utf8_records",
)  # fmt: skip
_XML_ROOT = re.compile(rb"<([A-Za-z_][\w.:-]*)")
KIND_NAMES = {
    "warc": "a WARC file (HTTP responses)",
    "wet": "a WET file (Common Crawl's extracted text)",
    "wiki": "a MediaWiki XML dump",
    "parquet": "a Parquet file",
    "jsonl": "a JSON Lines file",
}


class FileOutcomes:
    """Adds up pass B's batches per input file and records the files that gave nothing."""

    def __init__(self, tasks: list[ReadTask], strict: bool):
        self.tasks, self.strict = tasks, strict
        self._name: str | None = None
        self._task: ReadTask | None = None
        self._seen, self._cleaned, self._dropped = ReadStats(), 0, {}

    def add(self, batch: KeptBatch, into: ReadStats) -> None:
        """Count one batch (in corpus order); a batch of the next file closes the last one."""
        task = self.tasks[batch.task]
        name = file_name(task.source)
        if (task.spec, name) != (self._task and self._task.spec, self._name):
            self.finish(into)
            self._name, self._task = name, task
            self._seen, self._cleaned, self._dropped = ReadStats(), 0, {}
        merge_read_stats(self._seen, batch.read)
        self._cleaned += batch.cleaned
        for reason, n in batch.clean.dropped.items():
            self._dropped[reason] = self._dropped.get(reason, 0) + n

    def finish(self, into: ReadStats) -> None:
        """Close the file being counted: record it in `into` if it gave nothing."""
        if self._task is None:
            return
        kind, name = self._task.source.kind, self._name or ""
        outcome = explain(kind, name, self._seen, self._cleaned, self._dropped)
        self._task = None
        if outcome is None:
            return
        if self.strict:
            raise ValueError(f"{outcome} (data.strict=True)")
        into.no_document(outcome)


def file_name(source: Source) -> str:
    """The file a per-file task reads (its path without glob escapes), else the source spec."""
    if source.kind in ("stdlib", "shakespeare", "tfds") or not source.path:
        return source.spec
    return re.sub(r"\[(.)\]", r"\1", source.path) if glob.has_magic(source.path) else source.path


def explain(kind: str, name: str, seen: ReadStats, cleaned: int, dropped: dict) -> str | None:
    """Why a file gave no training text, or None if it gave some (or was empty)."""
    if not seen.input_bytes and not seen.documents:
        return None
    if seen.documents:
        if cleaned:
            return None
        reasons = ", ".join(f"{k} {v:,}" for k, v in sorted(dropped.items(), key=_by_count))
        return f"{name}: all {seen.documents:,} documents dropped by clean ({reasons})"
    if any(entry["docs_out"] for entry in seen.mixture.values()):
        return None  # its documents were read, and left out by the mixture weight on purpose
    return f"{name}: 0 documents from {seen.input_bytes:,} bytes read as {kind}: " + _why(
        kind, name, seen
    )


def _by_count(item: tuple[str, int]) -> tuple[int, str]:
    return -item[1], item[0]


def _why(kind: str, name: str, seen: ReadStats) -> str:
    counted = {c: getattr(seen, c) for c in _COUNTERS if getattr(seen, c)}
    counted.update(seen.skipped)
    parts = []
    if counted:
        everything = ", ".join(f"{k} {v:,}" for k, v in sorted(counted.items(), key=_by_count))
        parts.append(f"everything in it was skipped ({everything})")
    if seen.problems:
        parts.append(f"first problem: {seen.problems[0]}")
    if not seen.wrong_kind_files:
        hint = kind_hint(kind, name)
        if hint:
            parts.append(hint)
    return "; ".join(parts) or f"it holds nothing a {kind}: source reads"


def kind_hint(kind: str, name: str) -> str:
    """What the file looks like when that is not the kind it was given as ("" if unknown)."""
    if kind in ("text", "stdlib", "shakespeare", "tfds", "hf"):
        return ""
    head = _head(name)
    if not head:
        return ""
    looks = sniff_kind(head)
    if looks == "xml" and kind == "wiki":
        root = _XML_ROOT.search(head.split(b"?>")[-1]) if b"<" in head else None
        tag = root.group(1).decode("ascii", "replace") if root else "?"
        return f"its XML root is <{tag}>, not <mediawiki>: not a MediaWiki dump"
    if looks in KIND_NAMES and looks != kind:
        return f"it looks like {KIND_NAMES[looks]}: use {looks}:{name}"
    return ""


def _head(name: str) -> bytes:
    """The first SNIFF_BYTES of a file, decompressed ("" if it cannot be read)."""
    try:
        with open_input(location(name, "data.sources")) as stream:
            head = stream.read(SNIFF_BYTES)
        if head.startswith(b"\x1f\x8b"):  # gzip without a .gz name: look inside
            head = zlib.decompressobj(16 + zlib.MAX_WBITS).decompress(head)
        return head
    except (OSError, ValueError, CorruptInputError, EOFError, zlib.error):
        return b""


def sniff_kind(head: bytes) -> str:
    """The kind the first bytes of a (decompressed) file look like, or ""."""
    if head.startswith(b"PAR1"):
        return "parquet"
    body = head.lstrip(b"\xef\xbb\xbf \t\r\n")
    if body.startswith(b"WARC/"):
        if b"WARC-Type: conversion" in head:
            return "wet"
        return "warc"
    if body.startswith(b"<"):
        return "wiki" if b"<mediawiki" in body[:4096] else "xml"
    if body.startswith(b"{"):
        return "jsonl"
    return ""
