"""What every reader shares: a Source, the ReadStats it counts into, and the files it names.

Kept apart from sources.py (the kinds and their dispatch) and readers.py (the structured
readers) so that both import it and neither imports the other's module back. Mixture weights
(`kind:path@weight`) are applied here, in ReadStats.keep, which every reader calls for every
document: whatever runs the readers (one process, a pool, a cluster) honors them alike.
"""

from __future__ import annotations

import contextlib
import dataclasses
import glob
import hashlib
import io
import json
import os
import re
from collections.abc import Iterator
from pathlib import Path, PurePosixPath

from jaxgpt.config import AnyPath, is_remote, location
from jaxgpt.data import remote

TEXT_SUFFIXES = (".txt", ".md", ".rst", ".text", "")
COMPRESSED_SUFFIXES = ("", ".gz", ".bz2", ".xz", ".zst")
JSONL_ENDINGS = tuple(
    f"{e}{c}" for e in (".jsonl", ".json", ".ndjson") for c in COMPRESSED_SUFFIXES
)
WIKI_ENDINGS = (".xml", ".xml.bz2", ".xml.gz")
WET_ENDINGS = (".warc.wet.gz", ".warc.wet", ".wet.gz", ".wet")
WARC_ENDINGS = (".warc.gz", ".warc")  # not *.warc.wet.gz: that ends in .wet.gz
PARQUET_ENDINGS = (".parquet", ".pq")
HF_ENDINGS = (".arrow", ".json")  # a save_to_disk dir: Arrow stream files and its JSON state
# What a folder given to each file kind contributes (an explicit file or glob is always taken).
FILE_ENDINGS = {
    "jsonl": JSONL_ENDINGS,
    "wiki": WIKI_ENDINGS,
    "wet": WET_ENDINGS,
    "warc": WARC_ENDINGS,
    "parquet": PARQUET_ENDINGS,
    "hf": HF_ENDINGS,
}
BUILT_IN = ("stdlib", "shakespeare")  # kinds that are a corpus themselves, given without a path
# hf:NAME or hf:NAME:CONFIG, a dataset in the local Hugging Face cache (NAME may be ORG/NAME).
HF_NAME = re.compile(r"[\w.-]+(/[\w.-]+)?(:[\w.+-]+)?")
NOT_FILES = (*BUILT_IN, "tfds")  # kinds whose spec names no file on disk
MAX_PROBLEMS = 20
BOUNDED_LISTS = ("problems", "no_documents")  # ReadStats lists that keep the first MAX_PROBLEMS


class FillingReader(io.RawIOBase):
    """A raw byte stream made a chunk at a time. Subclasses define `_fill()`, which sets
    self._out (the next bytes) or self._eof; readers wrap them in io.BufferedReader."""

    _out: memoryview = memoryview(b"")
    _eof: bool = False

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        while not self._out and not self._eof:
            self._fill()
        n = min(len(buffer), len(self._out))
        buffer[:n] = self._out[:n]
        self._out = self._out[n:]
        return n


class CorruptInputError(ValueError):
    """A file that ends early or cannot be decompressed or parsed; the message names the file."""


@dataclasses.dataclass(frozen=True)
class Source:
    kind: str
    path: str = ""
    weight: float | None = None  # mixture weight (kind:path@weight); None: no mixture given
    rate: float = 1.0  # share of its documents a mixture keeps: weight / the largest weight

    @property
    def spec(self) -> str:
        """The spec item this came from, e.g. "jsonl:data/*.jsonl" (without its @weight); keys
        the per-source counts."""
        return f"{self.kind}:{self.path}" if self.path else self.kind


def mixture_draw(doc: str) -> float:
    """A document's fixed draw in [0, 1) for mixture sampling: a hash of its text alone, so the
    choice never depends on order, worker or engine, and copies of a text are kept or left out
    together. Salted, so it is independent of the validation split's hash of the same text."""
    digest = hashlib.blake2b(
        doc.encode("utf-8", "surrogatepass"), digest_size=8, person=b"jaxgpt-mixture"
    ).digest()
    return int.from_bytes(digest, "big") / 2**64


@dataclasses.dataclass
class ReadStats:
    """What reading found: documents and bytes per source, and every input skipped or repaired."""

    documents: int = 0  # documents yielded
    bytes: int = 0  # UTF-8 bytes of the yielded documents' text (after decoding and cleaning)
    files: int = 0  # input files opened (text, stdlib, jsonl, wiki, wet)
    input_bytes: int = 0  # on-disk size of those files (compressed size for .gz/.bz2/.zst)
    bad_utf8_files: int = 0  # text/stdlib/wiki files with invalid UTF-8 (replaced by U+FFFD)
    bad_utf8_lines: int = 0  # JSONL lines with invalid UTF-8 (replaced)
    bad_utf8_records: int = 0  # WET/WARC records, TFDS examples not valid in their charset
    bad_json_lines: int = 0  # JSONL lines skipped: invalid JSON, or JSON that is not an object
    missing_field_lines: int = 0  # JSONL lines skipped: text field absent or not a string
    null_texts: int = 0  # Parquet rows and Hugging Face examples skipped: their text is null
    corrupt_files: int = 0  # files that broke off (truncated/corrupt); documents before kept
    # Wiki pages kept although an unclosed or stray {{ [[ {| was in them (the token dropped).
    wiki_unbalanced_markup: int = 0
    wrong_kind_files: int = 0  # files of another kind than their source's (a WARC given as wet:)
    # Documents left out on purpose, by reason: "empty", "wiki_redirect", "wiki_namespace".
    skipped: dict[str, int] = dataclasses.field(default_factory=dict)
    docs_by_source: dict[str, int] = dataclasses.field(default_factory=dict)  # by Source.spec
    bytes_by_source: dict[str, int] = dataclasses.field(default_factory=dict)  # by Source.spec
    problems: list[str] = dataclasses.field(default_factory=list)  # first MAX_PROBLEMS "where: why"
    problem_count: int = 0  # all problems, including those past MAX_PROBLEMS
    # No silent zero: the first MAX_PROBLEMS "FILE: why" for input that gave no documents (a
    # non-empty file that gave none, or whose documents cleaning dropped), and how many in all.
    no_documents: list[str] = dataclasses.field(default_factory=list)
    no_document_files: int = 0
    # By Source.spec, for sources of a mixture only: {"weight", "rate", "docs_out", "bytes_out"}
    # (documents read but left out by the weight); what it kept is in docs/bytes_by_source.
    mixture: dict[str, dict] = dataclasses.field(default_factory=dict)

    @property
    def bad_utf8(self) -> int:
        """Files, lines and records that had invalid UTF-8, together."""
        return self.bad_utf8_files + self.bad_utf8_lines + self.bad_utf8_records

    def add(self, source: Source, doc: str) -> None:
        """Count one yielded document."""
        size = len(doc.encode("utf-8", "surrogatepass"))  # JSON's "\ud800" escapes decode alone
        self.documents += 1
        self.bytes += size
        self.docs_by_source[source.spec] = self.docs_by_source.get(source.spec, 0) + 1
        self.bytes_by_source[source.spec] = self.bytes_by_source.get(source.spec, 0) + size

    def accept(self, source: Source, doc: str) -> bool:
        """Count doc as read if it holds any text (else as skipped, "empty") and the mixture
        keeps it; say whether it is to be yielded."""
        if not doc.strip():
            self.skip("empty")
            return False
        return self.keep(source, doc)

    def keep(self, source: Source, doc: str) -> bool:
        """Whether the source's mixture weight keeps doc (always, without weights); counts it
        as yielded if so, as left out by the weight if not."""
        if source.weight is not None:
            entry = self.mixture.setdefault(
                source.spec,
                {"weight": source.weight, "rate": source.rate, "docs_out": 0, "bytes_out": 0},
            )
            if source.rate < 1.0 and mixture_draw(doc) >= source.rate:
                entry["docs_out"] += 1
                entry["bytes_out"] += len(doc.encode("utf-8", "surrogatepass"))
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

    def no_document(self, outcome: str) -> None:
        """Remember input that gave no documents ("FILE: why"), the first MAX_PROBLEMS."""
        self.no_document_files += 1
        if len(self.no_documents) < MAX_PROBLEMS:
            self.no_documents.append(outcome)

    def merge(self, other: ReadStats) -> None:
        """Add another reader's counts (a worker's, a file task's) to these."""
        for f in dataclasses.fields(self):
            mine, theirs = getattr(self, f.name), getattr(other, f.name)
            if isinstance(mine, int):
                setattr(self, f.name, mine + theirs)
            elif f.name in BOUNDED_LISTS:
                mine.extend(theirs[: MAX_PROBLEMS - len(mine)])
            elif f.name == "mixture":
                for spec, entry in theirs.items():
                    into = mine.setdefault(spec, {**entry, "docs_out": 0, "bytes_out": 0})
                    into["docs_out"] += entry["docs_out"]
                    into["bytes_out"] += entry["bytes_out"]
            else:
                for key, value in theirs.items():
                    mine[key] = mine.get(key, 0) + value


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
    """A source's input files (none for built-in corpora, tfds); FileNotFoundError if none.
    An hf: source gives every file of every split (its fingerprint; readers pick a split)."""
    if source.kind in NOT_FILES:
        return []
    if source.kind == "hf" and is_hf_name(source.path):
        return sorted({f for files in hf_splits(source.path).values() for f in files})
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


# ---------------------------------------------------------------- Hugging Face datasets


def is_hf_name(path: str) -> bool:
    """Whether an hf: source names a dataset in the local Hugging Face cache rather than a
    folder written by save_to_disk (a bucket prefix, an existing folder, or a path-like name)."""
    if is_remote(path) or path.startswith(("/", ".", "~")):
        return False
    return not os.path.isdir(path)


def hf_splits(path: str) -> dict[str, list[AnyPath]]:
    """The Arrow files of each split of an hf: source, in order; {"": files} for a folder that
    holds one saved Dataset rather than a DatasetDict. Never downloads anything."""
    return _hf_cached(path) if is_hf_name(path) else _hf_saved(path)


def _hf_saved(path: str) -> dict[str, list[AnyPath]]:
    """A save_to_disk folder, read from its JSON alone (no `datasets` import needed)."""
    root = location(os.path.expanduser(path), "data.sources (hf)")
    if not root.exists():
        raise FileNotFoundError(f"data.sources: hf:{path}: no such folder (cwd: {os.getcwd()})")
    if (root / "dataset_dict.json").exists():
        splits = _json(root / "dataset_dict.json").get("splits", [])
        return {str(split): _state_files(root / str(split)) for split in splits}
    if (root / "state.json").exists():
        return {"": _state_files(root)}
    raise FileNotFoundError(
        f"data.sources: hf:{path} is not a dataset saved with save_to_disk (it has neither "
        "dataset_dict.json nor state.json); save one with Dataset.save_to_disk(DIR) or "
        "DatasetDict.save_to_disk(DIR), or give a dataset name from the local cache"
    )


def _state_files(folder: AnyPath) -> list[AnyPath]:
    state = _json(folder / "state.json")
    try:
        return [folder / entry["filename"] for entry in state["_data_files"]]
    except (KeyError, TypeError) as e:
        raise ValueError(
            f"{folder / 'state.json'} lists no data files (_data_files); is it a folder written "
            "by save_to_disk?"
        ) from e


def _json(path: AnyPath) -> dict:
    try:
        return json.loads(path.read_text())
    except ValueError as e:
        raise ValueError(f"{path} is not valid JSON ({e}): a copy that did not finish?") from e


def _hf_cached(spec: str) -> dict[str, list[AnyPath]]:
    """A dataset by name from the local Hugging Face cache, through `datasets` in offline mode."""
    if not HF_NAME.fullmatch(spec):
        raise ValueError(
            f"data.sources: hf:{spec!r} is neither a folder nor a dataset name; write hf:DIR "
            "(saved with save_to_disk), hf:NAME or hf:NAME:CONFIG"
        )
    name, _, config = spec.partition(":")
    datasets = _import_datasets(spec)
    cache = datasets.config.HF_DATASETS_CACHE
    with _hf_offline(datasets):
        try:
            found = datasets.load_dataset(name, config or None)
        except (ConnectionError, OSError, ValueError) as e:
            raise FileNotFoundError(_not_cached(spec, name, config, cache, e)) from None
    return {split: [Path(f["filename"]) for f in ds.cache_files] for split, ds in found.items()}


def _import_datasets(spec: str):
    try:
        import datasets
    except ImportError as e:
        raise ImportError(
            f"data.sources: hf:{spec} names a dataset in the Hugging Face cache, which needs the "
            "datasets package: pip install 'jaxgpt[hf]' (a folder written by save_to_disk is "
            "read without it)"
        ) from e
    return datasets


@contextlib.contextmanager
def _hf_offline(datasets):
    """Offline mode (what HF_DATASETS_OFFLINE=1 gives) for this call only: any request to the
    Hub fails at once, and a later download elsewhere in the process (lm-eval tasks) still
    works. Also quiet: no "using the latest cached version" warnings."""
    import huggingface_hub.constants as hub

    saved = (datasets.config.HF_HUB_OFFLINE, hub.HF_HUB_OFFLINE)
    verbosity = datasets.logging.get_verbosity()
    datasets.config.HF_HUB_OFFLINE = hub.HF_HUB_OFFLINE = True
    datasets.logging.set_verbosity_error()
    try:
        yield
    finally:
        datasets.config.HF_HUB_OFFLINE, hub.HF_HUB_OFFLINE = saved
        datasets.logging.set_verbosity(verbosity)


def _not_cached(spec: str, name: str, config: str, cache: str, error: Exception) -> str:
    args = f"'{name}'" + (f", '{config}'" if config else "")
    reason = str(error).strip().replace("\n", "; ")
    return (
        f"data.sources: hf:{spec} is not a folder here and not in the local Hugging Face "
        f"datasets cache ({cache}); this reader never downloads. On a machine with internet "
        f"run\n  python -c \"import datasets; datasets.load_dataset({args}).save_to_disk('DIR')\""
        f"\nthen copy DIR here and give hf:DIR (or copy that machine's cache into {cache}). "
        f"({reason})"
    )
