"""MediaWiki XML dumps (wiki:): pages → plain-text documents, and multistream dumps split into
parts that workers read in parallel.

A page is a document when it is an article (namespace 0), not a redirect and not a
disambiguation page; the others are skipped and counted (wiki_namespace, wiki_redirect,
wiki_disambiguation). Its wikitext becomes text by wikitext.plain_text (data.wiki_parser="fast",
the default) or by mwparserfromhell ("mwparserfromhell": a full parser, 20-40x slower).

`*-pages-articles-multistream.xml.bz2` is a concatenation of independent bz2 streams: the
first holds `<mediawiki>` and `<siteinfo>`, then one per 100 pages, the last `</mediawiki>`.
plan_parts cuts such a file into WikiParts of about PART_BYTES of whole streams (cut points
from the `*-multistream-index.txt.bz2` beside it, else found by the bz2 block magic and
checked by decoding); read_wiki_part decodes one part, with the first stream's header in
front and `</mediawiki>` behind, so each worker parses a well-formed document. Documents come
out in the order of the whole file, so the parts of a dump give what reading it whole gives.
"""

from __future__ import annotations

import bisect
import bz2
import contextlib
import dataclasses
import itertools
import re
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path

from jaxgpt.config import AnyPath, is_remote
from jaxgpt.data import encoding, wikitext
from jaxgpt.data.inputs import (
    CorruptInputError,
    FillingReader,
    ReadStats,
    Source,
    corrupt,
    file_size,
    input_files,
)
from jaxgpt.data.readers import open_input

PARSERS = ("fast", "mwparserfromhell")
PART_BYTES = 64_000_000  # compressed bytes per part of a multistream dump (one read task)
READ_CHUNK = 1 << 20
BZ2_MAGIC = re.compile(rb"BZh[1-9]1AY&SY")  # a stream's header and its first block's magic
FOOTER = b"</mediawiki>\n"


# ---------------------------------------------------------------- pages


def _local(tag: str) -> str:
    """A tag without its namespace: export-0.10 and older dumps use different ones."""
    return tag.rpartition("}")[2]


def _iter_pages(stream, namespaces: dict[str, str]) -> Iterator[tuple[str, bool, bool, str]]:
    """(title, is_article, is_redirect, wikitext) per <page>, clearing parsed pages as it goes;
    namespaces fills with the siteinfo's {key: name} as it is read (before any page)."""
    root = None
    for event, elem in ET.iterparse(stream, events=("start", "end")):
        if root is None:
            root = elem
        if event != "end":
            continue
        tag = _local(elem.tag)
        if tag == "namespace" and elem.text:
            namespaces[elem.get("key", "")] = elem.text
        elif tag == "page":
            title = elem.findtext("{*}title") or ""
            ns = elem.findtext("{*}ns")
            if ns is not None:
                is_article = ns.strip() == "0"
            else:  # very old dumps have no <ns>: the title prefix says it
                other = {name for key, name in namespaces.items() if key != "0"}
                is_article = ":" not in title or title.partition(":")[0] not in other
            revisions = elem.findall("{*}revision")
            text = (revisions[-1].findtext("{*}text") if revisions else None) or ""
            redirect = elem.find("{*}redirect") is not None
            redirect = redirect or text.lstrip()[:9].upper() == "#REDIRECT"
            yield title, is_article, redirect, text
            root.clear()  # keeps memory flat over a multi-GB dump


def link_prefixes(namespaces: dict[str, str]) -> frozenset[str]:
    """Link prefixes whose links are not text: the English File/Image/Media/Category and the
    dump's own names of namespaces 6 (File), -2 (Media) and 14 (Category), e.g. Datei."""
    own = {namespaces.get(key, "").strip().lower() for key in ("6", "-2", "14")}
    return wikitext.DROP_PREFIXES | {name for name in own if name}


_DROP_LINK_PREFIXES = {"category", "file", "image", "media"}
_LANGUAGE_LINK = re.compile(r"[a-z]{2,3}(-[a-z]+)*:")
_MAGIC_WORD = re.compile(r"__[A-Z]+__")


def _mwparser(wikitext_: str, prefixes: frozenset[str]) -> wikitext.Stripped:
    """The page through mwparserfromhell (data.wiki_parser="mwparserfromhell")."""
    import mwparserfromhell

    code = mwparserfromhell.parse(wikitext_)
    templates = code.filter_templates()
    dab = any(wikitext.is_disambiguation(str(t.name)) for t in templates)
    drop = [t for t in code.filter_tags() if str(t.tag).strip().lower() in ("ref", "table")]
    for link in code.filter_wikilinks():
        title = str(link.title).strip()
        prefix = title.partition(":")[0].strip().lower()
        is_file_or_category = ":" in title and prefix in prefixes
        is_language_link = link.text is None and _LANGUAGE_LINK.match(title)  # [[de:Page]]
        if is_file_or_category or is_language_link:
            drop.append(link)
    for node in (*templates, *drop):
        with contextlib.suppress(ValueError):  # already gone with an enclosing node
            code.remove(node)
    text = _MAGIC_WORD.sub("", code.strip_code(normalize=True, collapse=True))
    return wikitext.Stripped(wikitext.tidy(text), dab)


def wikitext_to_text(wikitext_: str, parser: str = "mwparserfromhell") -> str:
    """Plain text of a page: markup, templates, tables, refs, files and categories removed."""
    return _strip(wikitext_, parser, wikitext.DROP_PREFIXES).text


def _strip(wikitext_: str, parser: str, prefixes: frozenset[str]) -> wikitext.Stripped:
    if parser == "fast":
        return wikitext.plain_text(wikitext_, prefixes)
    return _mwparser(wikitext_, prefixes)


# ---------------------------------------------------------------- reading


def _documents(
    raw, path: AnyPath, source: Source, stats: ReadStats, strict: bool, parser: str
) -> Iterator[str]:
    """The documents of one XML stream (a whole file or a part), counted into stats."""
    if parser not in PARSERS:
        raise ValueError(f"data.wiki_parser={parser!r} is not one of {PARSERS}")
    decoded = None
    try:
        decoded = encoding.open_xml(raw, path, strict)
        if note := decoded.note(path):
            stats.note(note)
        namespaces: dict[str, str] = {}
        prefixes = None
        for _title, is_article, is_redirect, text in _iter_pages(decoded.stream, namespaces):
            if not is_article or is_redirect:
                stats.skip("wiki_namespace" if not is_article else "wiki_redirect")
                continue
            prefixes = prefixes or link_prefixes(namespaces)
            page = _strip(text, parser, prefixes)
            stats.wiki_unbalanced_markup += page.unbalanced  # counted; the page is kept
            if page.disambiguation:
                stats.skip("wiki_disambiguation")
            elif stats.accept(source, page.text):
                yield page.text
    except CorruptInputError as e:
        corrupt(e, stats, strict)
    except ET.ParseError as e:
        corrupt(CorruptInputError(f"{path}: malformed or truncated XML ({e})"), stats, strict)
    if decoded is not None and decoded.replaced:
        stats.bad_utf8_files += 1
        name = decoded.encoding.upper()
        stats.note(f"{path}: {decoded.replaced} invalid {name} sequence(s) replaced")


def read_wiki(
    source: Source, stats: ReadStats, strict: bool, wiki_parser: str = "fast", **_
) -> Iterator[str]:
    """MediaWiki XML dumps (.xml, .xml.bz2, .xml.gz): one plain-text document per article."""
    for path in input_files(source, stats):
        if str(path).endswith(".bz2") and file_size(path) > PART_BYTES:
            stats.note(
                f"{path}: read whole by one worker ({file_size(path) / 1e6:,.0f} MB): only a "
                "local multistream dump is split across workers"
            )
        with open_input(path) as raw:
            yield from _documents(raw, path, source, stats, strict, wiki_parser)


def read_wiki_part(
    source: Source, part: WikiPart, stats: ReadStats, strict: bool, wiki_parser: str = "fast", **_
) -> Iterator[str]:
    """One part of a multistream dump (source: that one file)."""
    path = Path(part.path)
    if part.first:
        stats.files += 1
    stats.input_bytes += part.end - part.start
    with _PartStream(part) as raw:
        yield from _documents(raw, path, source, stats, strict, wiki_parser)


# ---------------------------------------------------------------- multistream parts


@dataclasses.dataclass(frozen=True)
class WikiPart:
    """A byte range of whole bz2 streams of a multistream dump: what one read task decodes."""

    path: str
    start: int  # offset of its first stream (0: the part that holds the header stream)
    end: int  # offset past its last stream
    header_end: int  # the header stream (<mediawiki>, <siteinfo>) is bytes [0, header_end)
    first: bool  # the file's first part (it counts the file)
    last: bool  # the file's last part (its data ends with </mediawiki>)


class _PartStream(FillingReader):
    """The XML of one part: the header stream, the part's streams, and </mediawiki> unless the
    part is the last; a stream that does not end by the part's end is CorruptInputError."""

    def __init__(self, part: WikiPart):
        self._part, self._fh = part, open(part.path, "rb")  # noqa: SIM115 (closed in close)
        self._pos, self._stream_at, self._dec = part.start, part.start, bz2.BZ2Decompressor()
        self._out = memoryview(b"" if part.start == 0 else _header(self._fh, part))
        self._fh.seek(part.start)

    def _fill(self) -> None:
        self._out = memoryview(self._next_bytes())

    def _next_bytes(self) -> bytes:
        chunk = self._fh.read(min(READ_CHUNK, self._part.end - self._pos))
        if not chunk:
            self._eof = True
            if self._pos < self._part.end or not self._dec.eof:
                raise CorruptInputError(
                    f"{self._part.path}: the bz2 stream at byte {self._stream_at:,} ends "
                    f"early (file truncated or corrupt)"
                )
            return b"" if self._part.last else FOOTER
        out = []
        while chunk:
            if self._dec.eof:  # the next stream starts here
                self._stream_at = self._pos
                self._dec = bz2.BZ2Decompressor()
            try:
                out.append(self._dec.decompress(chunk))
            except OSError as e:
                raise CorruptInputError(
                    f"{self._part.path}: corrupt bz2 stream at byte {self._stream_at:,} ({e})"
                ) from e
            used = len(chunk) - len(self._dec.unused_data) if self._dec.eof else len(chunk)
            self._pos += used
            chunk = self._dec.unused_data if self._dec.eof else b""
        return b"".join(out)

    def close(self) -> None:
        if not self.closed:
            self._fh.close()
        super().close()


def _header(fh, part: WikiPart) -> bytes:
    fh.seek(0)
    return bz2.decompress(fh.read(part.header_end))


def _first_stream(fh) -> tuple[bytes, int] | None:
    """(decoded first bz2 stream, its compressed length); None if it is not a whole stream
    within the first 64 MB (a single-stream file)."""
    dec, fed, out = bz2.BZ2Decompressor(), 0, []
    while not dec.eof and fed < PART_BYTES:
        chunk = fh.read(READ_CHUNK)
        if not chunk:
            return None
        try:
            out.append(dec.decompress(chunk))
        except OSError:
            return None
        fed += len(chunk)
    if not dec.eof:
        return None
    return b"".join(out), fed - len(dec.unused_data)


def plan_parts(path: AnyPath, part_bytes: int = 0) -> list[WikiPart] | None:
    """A local multistream .bz2 dump's parts of about part_bytes (default PART_BYTES); None
    for anything read whole (another suffix, a bucket object, a small or single-stream file)."""
    part_bytes = part_bytes or PART_BYTES
    if is_remote(path) or not str(path).endswith(".bz2"):
        return None
    size = Path(path).stat().st_size
    if size <= part_bytes:
        return None
    with open(path, "rb") as fh:
        first = _first_stream(fh)
        if first is None or b"<page" in first[0] or b"<mediawiki" not in first[0]:
            return None  # one stream, or a first stream that is not the header alone
        header_end = first[1]
        index = index_path(path)
        offsets = _index_offsets(index) if index is not None else None
        cuts = _cuts(fh, offsets, header_end, size, part_bytes)
    bounds = [0, *cuts, size]
    return [
        WikiPart(str(path), a, b, header_end, i == 0, i == len(bounds) - 2)
        for i, (a, b) in enumerate(itertools.pairwise(bounds))
    ]


def index_path(path: AnyPath) -> Path | None:
    """The multistream index beside a dump (X-multistream.xml.bz2 → X-multistream-index.txt.bz2,
    X-multistream1.xml-p1p41242.bz2 → X-multistream-index1.txt-p1p41242.bz2), if it exists."""
    name = re.sub(r"multistream(\d*)\.xml(.*)\.bz2$", r"multistream-index\1.txt\2.bz2", path.name)
    found = Path(path).with_name(name)
    return found if name != path.name and found.is_file() else None


def _index_offsets(index: Path) -> list[int]:
    """The sorted stream offsets of an index file (lines "offset:page_id:title")."""
    offsets = set()
    with bz2.open(index, "rb") as fh:
        for line in fh:
            head = line.split(b":", 1)[0]
            if head.isdigit():
                offsets.add(int(head))
    return sorted(offsets)


def _cuts(fh, offsets: list[int] | None, header_end: int, size: int, part_bytes: int):
    """Stream offsets to cut the file at, about part_bytes apart: from the index when there is
    one, else the first bz2 stream start found at or after each multiple of part_bytes."""
    cuts: list[int] = []
    target = part_bytes
    while target < size:
        at = _next_offset(offsets, target) if offsets is not None else _scan(fh, target, size)
        if at is None or at >= size:
            break
        if at > (cuts[-1] if cuts else header_end - 1):
            cuts.append(at)
        target = max(target + part_bytes, at + 1)
    return cuts


def _next_offset(offsets: list[int], target: int) -> int | None:
    i = bisect.bisect_left(offsets, target)
    return offsets[i] if i < len(offsets) else None


def _scan(fh, start: int, size: int) -> int | None:
    """The first offset at or after start where a bz2 stream of pages starts: the magic,
    checked by decoding its first block (a false match in compressed data fails there)."""
    pos = start
    while pos < size:
        fh.seek(pos)
        chunk = fh.read(READ_CHUNK + 9)  # 9 bytes overlap: a magic across two reads
        for m in BZ2_MAGIC.finditer(chunk):
            if m.start() + pos < start or not _is_page_stream(fh, pos + m.start()):
                continue
            return pos + m.start()
        if len(chunk) <= 9:
            return None
        pos += READ_CHUNK
    return None


def _is_page_stream(fh, offset: int) -> bool:
    """Whether a bz2 stream starting at offset decodes to text that starts with <page>."""
    fh.seek(offset)
    dec = bz2.BZ2Decompressor()
    try:
        out = dec.decompress(fh.read(2 * READ_CHUNK), max_length=64)
    except (OSError, EOFError):
        return False
    return out.lstrip().startswith(b"<page")
