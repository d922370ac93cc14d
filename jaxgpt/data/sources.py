"""Where documents come from: a spec like "text:PATH,jsonl:DIR/*.jsonl.zst" or the "stdlib" corpus.

Kinds: text (files or folders), jsonl (JSON Lines, optionally compressed), tfds (a prepared
TensorFlow Datasets split, tfds:NAME[/CONFIG][:SPLIT]), wiki (MediaWiki XML dumps), wet (Common
Crawl WET files) and stdlib. Each kind is a function in READERS that yields documents (str) and
counts into a ReadStats; the structured kinds live in readers.py.
"""

from __future__ import annotations

import dataclasses
import glob
import hashlib
import os
import sysconfig
from collections.abc import Callable, Iterator
from pathlib import Path

from jaxgpt.data import readers

TEXT_SUFFIXES = (".txt", ".md", ".rst", ".text", "")
# What a folder given to each file kind contributes (an explicit file or glob is always taken).
FILE_ENDINGS = {
    "jsonl": readers.JSONL_ENDINGS,
    "wiki": readers.WIKI_ENDINGS,
    "wet": readers.WET_ENDINGS,
}
NOT_FILES = ("stdlib", "tfds")  # kinds whose spec names no file on disk
MAX_PROBLEMS = 20


@dataclasses.dataclass(frozen=True)
class Source:
    kind: str
    path: str = ""

    @property
    def spec(self) -> str:
        """The spec item this came from, e.g. "jsonl:data/*.jsonl"; keys the per-source counts."""
        return f"{self.kind}:{self.path}" if self.path else self.kind


@dataclasses.dataclass
class ReadStats:
    """What reading found: documents and bytes per source, and every input skipped or repaired."""

    documents: int = 0  # documents yielded
    bytes: int = 0  # UTF-8 bytes of the yielded documents' text (after decoding and cleaning)
    files: int = 0  # input files opened (text, stdlib, jsonl, wiki, wet)
    input_bytes: int = 0  # on-disk size of those files (compressed size for .gz/.bz2/.zst)
    bad_utf8_files: int = 0  # text/stdlib/wiki files with invalid UTF-8 (replaced by U+FFFD)
    bad_utf8_lines: int = 0  # JSONL lines with invalid UTF-8 (replaced)
    bad_utf8_records: int = 0  # WET records and TFDS examples with invalid UTF-8 (replaced)
    bad_json_lines: int = 0  # JSONL lines skipped: invalid JSON, or JSON that is not an object
    missing_field_lines: int = 0  # JSONL lines skipped: text field absent or not a string
    corrupt_files: int = 0  # files that broke off (truncated/corrupt); documents before kept
    # Documents left out on purpose, by reason: "empty", "wiki_redirect", "wiki_namespace".
    skipped: dict[str, int] = dataclasses.field(default_factory=dict)
    docs_by_source: dict[str, int] = dataclasses.field(default_factory=dict)  # by Source.spec
    bytes_by_source: dict[str, int] = dataclasses.field(default_factory=dict)  # by Source.spec
    problems: list[str] = dataclasses.field(default_factory=list)  # first MAX_PROBLEMS "where: why"
    problem_count: int = 0  # all problems, including those past MAX_PROBLEMS

    @property
    def bad_utf8(self) -> int:
        """Files, lines and records that had invalid UTF-8, together."""
        return self.bad_utf8_files + self.bad_utf8_lines + self.bad_utf8_records

    def add(self, source: Source, doc: str) -> None:
        """Count one yielded document."""
        size = len(doc.encode("utf-8"))
        self.documents += 1
        self.bytes += size
        self.docs_by_source[source.spec] = self.docs_by_source.get(source.spec, 0) + 1
        self.bytes_by_source[source.spec] = self.bytes_by_source.get(source.spec, 0) + size

    def accept(self, source: Source, doc: str) -> bool:
        """Count doc as read if it holds any text (else as skipped, "empty"); say which."""
        if not doc.strip():
            self.skip("empty")
            return False
        self.add(source, doc)
        return True

    def skip(self, reason: str) -> None:
        """Count one document left out on purpose."""
        self.skipped[reason] = self.skipped.get(reason, 0) + 1

    def note(self, problem: str) -> None:
        """Remember a problem ("path:line: reason"); only the first MAX_PROBLEMS are kept."""
        self.problem_count += 1
        if len(self.problems) < MAX_PROBLEMS:
            self.problems.append(problem)


def parse_sources(spec: str) -> list[Source]:
    """Parse "kind:path,kind:path" (or a bare "stdlib") into Sources, checking kinds and paths."""
    sources = []
    for item in (part.strip() for part in spec.split(",")):
        if not item:
            continue
        kind, _, path = item.partition(":")
        if kind not in READERS:
            raise ValueError(
                f"data.sources: unknown kind {kind!r} in {item!r}; known kinds: {sorted(READERS)}"
            )
        if kind != "stdlib" and not path:
            raise ValueError(f"data.sources: {item!r} needs a path, as in {kind}:PATH")
        if kind == "tfds":
            readers.parse_tfds_spec(path)  # a dataset name, not a path: checked when read
        elif kind != "stdlib" and not glob.glob(os.path.expanduser(path)):
            raise FileNotFoundError(
                f"data.sources: {kind} path {path!r} does not exist (cwd: {os.getcwd()})"
            )
        sources.append(Source(kind, path))
    if not sources:
        raise ValueError('data.sources is empty: give e.g. "text:PATH" or "stdlib"')
    return sources


def expand_files(path: str, endings: tuple[str, ...] | None = None) -> list[Path]:
    """Files matching a path or glob; folders give files ending in `endings` (default: text)."""
    files: list[Path] = []
    for match in sorted(glob.glob(os.path.expanduser(path))):
        p = Path(match)
        if p.is_dir():
            files.extend(
                f
                for f in sorted(p.rglob("*"))
                if f.is_file()
                and (f.name.lower().endswith(endings) if endings else f.suffix in TEXT_SUFFIXES)
            )
        else:
            files.append(p)
    return files


def source_files(source: Source) -> list[Path]:
    """A source's input files (none for stdlib, tfds); FileNotFoundError when a glob finds none."""
    if source.kind in NOT_FILES:
        return []
    endings = FILE_ENDINGS.get(source.kind)
    files = expand_files(source.path, endings)
    if not files:
        looked_for = f"files ending in {endings}" if endings else f"suffixes {TEXT_SUFFIXES}"
        raise FileNotFoundError(f"data.sources: {source.spec} has no input files ({looked_for})")
    return files


def _read_text(path: Path, stats: ReadStats, strict: bool) -> str:
    raw = path.read_bytes()
    stats.files += 1
    stats.input_bytes += len(raw)
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        if strict:
            raise ValueError(f"{path}: not valid UTF-8 at byte {e.start} (data.strict=True)") from e
        stats.bad_utf8_files += 1
        stats.note(f"{path}: not valid UTF-8 at byte {e.start}; bad bytes replaced")
        return raw.decode("utf-8", errors="replace")


def read_text(source: Source, split: str, stats: ReadStats, strict: bool, **_) -> Iterator[str]:
    """Plain text files or folders; one document per file or per blank-line-separated block."""
    if split not in ("file", "blank_line"):
        raise ValueError(f"data.text_split={split!r} is not one of ('file', 'blank_line')")
    for path in source_files(source):
        text = _read_text(path, stats, strict)
        docs = [text] if split == "file" else [d for d in text.split("\n\n") if d.strip()]
        for doc in docs:
            stats.add(source, doc)
            yield doc


def stdlib_files() -> list[Path]:
    """The interpreter's own standard-library sources: text every Python install has.

    Ordered by a hash of the relative path, so any size cap takes a spread of the library rather
    than its alphabetical head; generated tables (encodings, pydoc_data) and tests are left out.
    """
    root = Path(sysconfig.get_paths()["stdlib"])
    skip = {"site-packages", "test", "tests", "idlelib", "lib2to3", "__pycache__", "encodings"}
    skip |= {"pydoc_data", "unittest"}
    files = [p for p in root.rglob("*.py") if not skip.intersection(p.relative_to(root).parts)]
    return sorted(files, key=lambda p: hashlib.sha1(str(p.relative_to(root)).encode()).digest())


def read_stdlib(
    source: Source, stats: ReadStats, strict: bool, stdlib_max_mb: float = 8.0, **_
) -> Iterator[str]:
    """Python standard-library modules, one document each, up to stdlib_max_mb megabytes."""
    budget, read = int(stdlib_max_mb * 1e6), 0  # this source's own budget, whatever came before
    for path in stdlib_files():
        if read >= budget:
            break
        text = _read_text(path, stats, strict)
        read += len(text.encode("utf-8"))
        stats.add(source, text)
        yield text


READERS: dict[str, Callable[..., Iterator[str]]] = {
    "text": read_text,
    "jsonl": readers.read_jsonl,
    "tfds": readers.read_tfds,
    "wiki": readers.read_wiki,
    "wet": readers.read_wet,
    "stdlib": read_stdlib,
}


def iter_documents(
    sources: list[Source],
    stats: ReadStats,
    text_split: str = "file",
    strict: bool = False,
    stdlib_max_mb: float = 8.0,
    jsonl_field: str = "text",
    tfds_data_dir: str | None = None,
    tfds_text_field: str = "text",
) -> Iterator[str]:
    """Documents from every source in order (deterministic: files are sorted).

    Args:
      sources: from parse_sources.
      stats: counts are added to it as documents are read.
      text_split: text sources: one document per "file" or per "blank_line" block.
      strict: raise ValueError naming file:line on the first bad input instead of counting it.
      stdlib_max_mb: how much of the standard library the stdlib source reads.
      jsonl_field: the top-level JSONL field that holds the text.
      tfds_data_dir: where prepared TFDS datasets live (default $TFDS_DATA_DIR or
        ~/tensorflow_datasets); nothing is ever downloaded.
      tfds_text_field: the TFDS feature that holds the text.
    """
    for source in sources:
        yield from READERS[source.kind](
            source,
            split=text_split,
            stats=stats,
            strict=strict,
            stdlib_max_mb=stdlib_max_mb,
            jsonl_field=jsonl_field,
            tfds_data_dir=tfds_data_dir,
            tfds_text_field=tfds_text_field,
        )
