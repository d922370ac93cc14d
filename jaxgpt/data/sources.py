"""Where documents come from: a spec like "text:PATH,text:OTHER" or the built-in "stdlib" corpus.

Each kind is a function that yields documents (str). New kinds (jsonl, tfds, wiki, wet) are new
functions added to READERS; nothing else changes.
"""

from __future__ import annotations

import dataclasses
import glob
import hashlib
import os
import sysconfig
from collections.abc import Callable, Iterator
from pathlib import Path

TEXT_SUFFIXES = (".txt", ".md", ".rst", ".text", "")


@dataclasses.dataclass(frozen=True)
class Source:
    kind: str
    path: str = ""


@dataclasses.dataclass
class ReadStats:
    """Counts reported after reading: documents, bytes and lines with undecodable bytes."""

    documents: int = 0
    bytes: int = 0
    files: int = 0
    bad_utf8_files: int = 0


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
        if kind != "stdlib":
            if not path:
                raise ValueError(f"data.sources: {item!r} needs a path, as in {kind}:PATH")
            if not glob.glob(os.path.expanduser(path)):
                raise FileNotFoundError(
                    f"data.sources: {kind} path {path!r} does not exist (cwd: {os.getcwd()})"
                )
        sources.append(Source(kind, path))
    if not sources:
        raise ValueError('data.sources is empty: give e.g. "text:PATH" or "stdlib"')
    return sources


def expand_files(path: str) -> list[Path]:
    files: list[Path] = []
    for match in sorted(glob.glob(os.path.expanduser(path))):
        p = Path(match)
        if p.is_dir():
            files.extend(
                f for f in sorted(p.rglob("*")) if f.is_file() and f.suffix in TEXT_SUFFIXES
            )
        else:
            files.append(p)
    return files


def _read_text(path: Path, stats: ReadStats, strict: bool) -> str:
    raw = path.read_bytes()
    stats.files += 1
    stats.bytes += len(raw)
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        if strict:
            raise ValueError(f"{path}: not valid UTF-8 at byte {e.start} (data.strict=True)") from e
        stats.bad_utf8_files += 1
        return raw.decode("utf-8", errors="replace")


def read_text(source: Source, split: str, stats: ReadStats, strict: bool, **_) -> Iterator[str]:
    """Plain text files or folders; one document per file or per blank-line-separated block."""
    if split not in ("file", "blank_line"):
        raise ValueError(f"data.text_split={split!r} is not one of ('file', 'blank_line')")
    for path in expand_files(source.path):
        text = _read_text(path, stats, strict)
        docs = [text] if split == "file" else [d for d in text.split("\n\n") if d.strip()]
        for doc in docs:
            stats.documents += 1
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
    budget = int(stdlib_max_mb * 1e6)
    for path in stdlib_files():
        if stats.bytes >= budget:
            break
        text = _read_text(path, stats, strict)
        stats.documents += 1
        yield text


READERS: dict[str, Callable[..., Iterator[str]]] = {"text": read_text, "stdlib": read_stdlib}


def iter_documents(
    sources: list[Source],
    stats: ReadStats,
    text_split: str = "file",
    strict: bool = False,
    stdlib_max_mb: float = 8.0,
) -> Iterator[str]:
    """Documents from every source in order (deterministic: files are sorted)."""
    for source in sources:
        yield from READERS[source.kind](
            source, split=text_split, stats=stats, strict=strict, stdlib_max_mb=stdlib_max_mb
        )
