"""What every reader shares: a Source, the ReadStats it counts into, and the files it names.

Kept apart from sources.py (the kinds and their dispatch) and readers.py (the structured
readers) so that both import it and neither imports the other's module back.
"""

from __future__ import annotations

import dataclasses
import glob
import os
from collections.abc import Iterator
from pathlib import Path, PurePosixPath

from jaxgpt.config import AnyPath, is_remote
from jaxgpt.data import remote

TEXT_SUFFIXES = (".txt", ".md", ".rst", ".text", "")
COMPRESSED_SUFFIXES = ("", ".gz", ".bz2", ".xz", ".zst")
JSONL_ENDINGS = tuple(
    f"{e}{c}" for e in (".jsonl", ".json", ".ndjson") for c in COMPRESSED_SUFFIXES
)
WIKI_ENDINGS = (".xml", ".xml.bz2", ".xml.gz")
WET_ENDINGS = (".warc.wet.gz", ".warc.wet", ".wet.gz", ".wet")
# What a folder given to each file kind contributes (an explicit file or glob is always taken).
FILE_ENDINGS = {"jsonl": JSONL_ENDINGS, "wiki": WIKI_ENDINGS, "wet": WET_ENDINGS}
BUILT_IN = ("stdlib", "shakespeare")  # kinds that are a corpus themselves, given without a path
NOT_FILES = (*BUILT_IN, "tfds")  # kinds whose spec names no file on disk
MAX_PROBLEMS = 20


class CorruptInputError(ValueError):
    """A file that ends early or cannot be decompressed or parsed; the message names the file."""


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


def expand_files(path: str, endings: tuple[str, ...] | None = None) -> list[AnyPath]:
    """Files matching a path or glob; folders give files ending in `endings` (default: text).
    gs:// and s3:// paths and globs give the matching objects (a prefix acts as a folder)."""
    if is_remote(path):
        return [f for f, _ in remote.expand(path, _wanted(endings))]
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


def _wanted(endings: tuple[str, ...] | None):
    """Which file names inside a folder a source takes."""
    if endings:
        return lambda name: name.lower().endswith(endings)
    return lambda name: PurePosixPath(name).suffix in TEXT_SUFFIXES


def source_files(source: Source) -> list[AnyPath]:
    """A source's input files (none for built-in corpora, tfds); FileNotFoundError if none."""
    if source.kind in NOT_FILES:
        return []
    endings = FILE_ENDINGS.get(source.kind)
    files = expand_files(source.path, endings)
    if not files:
        raise _no_files(source, endings)
    return files


def _no_files(source: Source, endings: tuple[str, ...] | None) -> FileNotFoundError:
    looked_for = f"files ending in {endings}" if endings else f"suffixes {TEXT_SUFFIXES}"
    return FileNotFoundError(f"data.sources: {source.spec} has no input files ({looked_for})")


def file_fingerprints(source: Source) -> list[list]:
    """[path, size, version] of each of a source's files, for the data dir's key: the local
    mtime in ns, or a bucket object's generation/ETag (from the glob's one listing)."""
    if not is_remote(source.path):
        prints = []
        for f in source_files(source):
            st = f.stat()
            prints.append([str(f.resolve()), st.st_size, st.st_mtime_ns])
        return prints
    endings = FILE_ENDINGS.get(source.kind)
    found = remote.expand(source.path, _wanted(endings))
    if not found:
        raise _no_files(source, endings)
    return [[str(f), int(info["size"]), remote.version(info)] for f, info in found]


def file_size(path: AnyPath) -> int:
    return remote.size(path) if is_remote(path) else path.stat().st_size


def input_files(source: Source, stats: ReadStats) -> Iterator[AnyPath]:
    """The source's files, each counted in stats as it is reached."""
    for path in source_files(source):
        stats.files += 1
        stats.input_bytes += file_size(path)
        yield path


def reject(stats: ReadStats, strict: bool, where: str, reason: str, counter: str) -> None:
    """Count one bad input (or, with strict, fail on it) and remember where it was."""
    if strict:
        raise ValueError(f"{where}: {reason} (data.strict=True)")
    setattr(stats, counter, getattr(stats, counter) + 1)
    stats.note(f"{where}: {reason}")


def corrupt(error: CorruptInputError, stats: ReadStats, strict: bool) -> None:
    """A file that broke off: documents before the break are kept unless strict."""
    if strict:
        raise error
    stats.corrupt_files += 1
    stats.note(f"{error} (documents before this point were kept)")
