"""Where documents come from: a spec like "text:PATH,jsonl:DIR/*.jsonl.zst" or a built-in corpus.

Kinds: text (files or folders), jsonl (JSON Lines, optionally compressed), tfds (a prepared
TensorFlow Datasets split, tfds:NAME[/CONFIG][:SPLIT]), wiki (MediaWiki XML dumps), wet (Common
Crawl WET files), warc (WARC files: the main text of their HTML pages), parquet (a text column
of Parquet files), hf (a Hugging Face dataset saved with save_to_disk, or in the local cache by
name), and two built-in corpora that need no path: stdlib (the Python standard library's
sources) and shakespeare (tinyshakespeare, shipped with jaxgpt). Each kind is a function in
READERS that yields documents (str) and counts into a ReadStats; the structured kinds live in
readers.py, the web crawls in web.py, what all of them share in inputs.py.

A mixture weights sources against each other: "jsonl:a/*.jsonl@3,parquet:b/*.parquet@1" keeps
every document of a and a third of b's, chosen by a hash of each document's text (see
inputs.mixture_draw and ReadStats.keep, and docs/data.md for why sampling rather than repeats).
"""

from __future__ import annotations

import glob
import hashlib
import math
import os
import sysconfig
from collections.abc import Callable, Iterator
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path

from jaxgpt.config import AnyPath, DataConfig, check_location, is_remote
from jaxgpt.data import encoding, readers, remote, web, wiki
from jaxgpt.data.inputs import (  # noqa: F401  (re-exported: sources.Source, sources.ReadStats)
    BUILT_IN,
    MAX_PROBLEMS,
    ReadStats,
    Source,
    expand_files,
    is_hf_name,
    source_files,
)

# tinyshakespeare.txt (1,115,394 bytes, public domain): the classic small char-level corpus.
SHAKESPEARE = resources.files("jaxgpt.data") / "corpora" / "tinyshakespeare.txt"


def parse_sources(spec: str) -> list[Source]:
    """Parse "kind:path[@weight],..." (or a bare "stdlib") into Sources, checking kinds and
    paths. With a weight on any item it is a mixture: each source keeps the share
    weight / (the largest weight) of its documents (an item without one weighs 1)."""
    sources, weights = [], []
    for item in (part.strip() for part in spec.split(",")):
        if not item:
            continue
        item, weight = _weight(item)
        kind, _, path = item.partition(":")
        if kind not in READERS:
            raise ValueError(
                f"data.sources: unknown kind {kind!r} in {item!r}; known kinds: {sorted(READERS)}"
            )
        if kind not in BUILT_IN and not path:
            raise ValueError(f"data.sources: {item!r} needs a path, as in {kind}:PATH")
        _check_path(kind, path)
        if kind == "warc":
            web.require_resiliparse(f"data.sources: {item}")
        sources.append(Source(kind, path))
        weights.append(weight)
    if not sources:
        raise ValueError('data.sources is empty: give e.g. "text:PATH" or "stdlib"')
    if all(w is None for w in weights):
        return sources
    weights = [1.0 if w is None else w for w in weights]
    top = max(weights)
    return [Source(s.kind, s.path, w, w / top) for s, w in zip(sources, weights, strict=True)]


def _weight(item: str) -> tuple[str, float | None]:
    """("kind:path", weight) from "kind:path@weight"; an "@" not followed by a number is part
    of the path."""
    head, at, tail = item.rpartition("@")
    try:
        weight = float(tail)
    except ValueError:
        return item, None
    if not at:
        return item, None
    if not (math.isfinite(weight) and weight > 0):
        raise ValueError(
            f"data.sources: the weight in {item!r} must be a positive number (a source's "
            "documents are kept at weight / the largest weight); leave a source out to drop it"
        )
    return head.strip(), weight


def _check_path(kind: str, path: str) -> None:
    """That a source's path exists (a bucket glob matches something); dataset names (tfds:,
    hf:NAME) are checked when read."""
    check_location(path, f"data.sources ({kind})", remote_ok=kind != "tfds")
    if kind == "tfds":
        readers.parse_tfds_spec(path)  # a dataset name, not a path: checked when read
    elif is_remote(path):
        remote.check_matches(path, f"data.sources: {kind} path")
    elif kind == "hf" and is_hf_name(path):
        return  # looked up in the local Hugging Face cache when read
    elif kind not in BUILT_IN and not glob.glob(os.path.expanduser(path)):
        raise FileNotFoundError(
            f"data.sources: {kind} path {path!r} does not exist (cwd: {os.getcwd()})"
        )


def _read_text(
    path: AnyPath | Traversable, stats: ReadStats, strict: bool, detect: bool = False
) -> str:
    """A file's text: a byte-order mark honored, else UTF-8 (or, detect, what
    charset-normalizer finds), bad bytes replaced and counted (see encoding.decode_text)."""
    raw = path.read_bytes()
    stats.files += 1
    stats.input_bytes += len(raw)
    return encoding.decode_text(raw, path, stats, strict, detect)


def read_text(
    source: Source, split: str, stats: ReadStats, strict: bool, detect_encoding: bool = False, **_
) -> Iterator[str]:
    """Plain text files or folders; one document per file or per blank-line-separated block."""
    if split not in ("file", "blank_line"):
        raise ValueError(f"data.text_split={split!r} is not one of ('file', 'blank_line')")
    for path in source_files(source):
        text = _read_text(path, stats, strict, detect_encoding)
        docs = [text] if split == "file" else [d for d in text.split("\n\n") if d.strip()]
        for doc in docs:
            if stats.keep(source, doc):
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
        if stats.keep(source, text):
            yield text


def read_shakespeare(source: Source, stats: ReadStats, strict: bool, **_) -> Iterator[str]:
    """The shipped tinyshakespeare corpus as one document: what text:FILE gives for that file."""
    text = _read_text(SHAKESPEARE, stats, strict)
    if stats.keep(source, text):
        yield text


READERS: dict[str, Callable[..., Iterator[str]]] = {
    "text": read_text,
    "jsonl": readers.read_jsonl,
    "tfds": readers.read_tfds,
    "wiki": wiki.read_wiki,
    "wet": web.read_wet,
    "warc": web.read_warc,
    "parquet": readers.read_parquet,
    "hf": readers.read_hf,
    "stdlib": read_stdlib,
    "shakespeare": read_shakespeare,
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
    parquet_column: str = "text",
    hf_split: str = "train",
    hf_field: str = "text",
    wiki_parser: str = "fast",
    detect_encoding: bool = False,
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
      parquet_column: the Parquet column that holds the text.
      hf_split: the split of an hf: dataset to read.
      hf_field: the hf: dataset's field (column) that holds the text.
      wiki_parser: wiki sources: "fast" (wikitext.plain_text) or "mwparserfromhell".
      detect_encoding: text and JSONL files without a byte-order mark that are not UTF-8 are
        decoded as charset-normalizer finds (else bad bytes are replaced and counted).
    """
    options = dict(
        split=text_split,
        strict=strict,
        stdlib_max_mb=stdlib_max_mb,
        jsonl_field=jsonl_field,
        tfds_data_dir=tfds_data_dir,
        tfds_text_field=tfds_text_field,
        parquet_column=parquet_column,
        hf_split=hf_split,
        hf_field=hf_field,
        wiki_parser=wiki_parser,
        detect_encoding=detect_encoding,
    )
    for source in sources:
        yield from READERS[source.kind](source, stats=stats, **options)


def documents(cfg: DataConfig, stats: ReadStats) -> Iterator[str]:
    """Documents of every source of cfg.sources, read with every reader option of cfg."""
    return iter_documents(
        parse_sources(cfg.sources),
        stats,
        text_split=cfg.text_split,
        strict=cfg.strict,
        stdlib_max_mb=cfg.stdlib_max_mb,
        jsonl_field=cfg.jsonl_field,
        tfds_data_dir=cfg.tfds_data_dir or None,
        tfds_text_field=cfg.tfds_text_field,
        parquet_column=cfg.parquet_column,
        hf_split=cfg.hf_split,
        hf_field=cfg.hf_field,
        wiki_parser=cfg.wiki_parser,
        detect_encoding=cfg.detect_encoding,
    )


def mixture_report(stats: ReadStats) -> list[str]:
    """The report's lines on a mixture (none without weights): per source its weight, the
    share of its documents kept, documents read and kept, and its share of the text before
    and after weighting (by bytes, close to its share of tokens)."""
    if not stats.mixture:
        return []
    read_bytes = {
        spec: stats.bytes_by_source.get(spec, 0) + entry["bytes_out"]
        for spec, entry in stats.mixture.items()
    }
    total_read = max(sum(read_bytes.values()), 1)
    total_kept = max(sum(stats.bytes_by_source.get(spec, 0) for spec in stats.mixture), 1)
    lines = ["mixture      documents sampled by weight (kept share = weight / largest weight)"]
    for spec, entry in stats.mixture.items():
        kept = stats.docs_by_source.get(spec, 0)
        before = read_bytes[spec] / total_read
        after = stats.bytes_by_source.get(spec, 0) / total_kept
        lines.append(
            f"  {spec} @{entry['weight']:g}: kept {kept:,} of {kept + entry['docs_out']:,} "
            f"documents ({entry['rate']:.1%}); share of text {before:.1%} -> {after:.1%}"
        )
    return lines
