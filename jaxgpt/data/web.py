"""Readers for web crawls: Common Crawl WET (the crawl's own plain text) and WARC (the raw HTTP
responses, turned into text here).

A WARC holds every record a crawler wrote: requests, metadata, redirects, images, error pages,
revisits. read_warc keeps the successful (2xx) HTML responses, decodes each with the first
charset that says something (byte-order mark, then the HTTP header, then a <meta> tag in the
first 2 KB, then Resiliparse's detector, else UTF-8 with bad bytes replaced and counted), and
keeps the page's main content (Resiliparse's extract_plain_text with main_content=True: no
navigation, sidebars, scripts or footers). Every record left out is counted by reason in
ReadStats.skipped (warc_not_response, warc_status_4xx, warc_not_html, warc_revisit,
warc_empty_extraction), so a report can say where a crawl's pages went.

A WARC given as wet: (or a WET as warc:) would give no documents: each reader counts the record
types it met and says which kind to use. warcio is a dependency; Resiliparse is the `web` extra
(pip install 'jaxgpt[web]'), imported when a warc: source is read.
"""

from __future__ import annotations

import codecs
import importlib.util
import re
from collections.abc import Iterator

from jaxgpt.config import AnyPath
from jaxgpt.data.inputs import CorruptInputError, ReadStats, Source, corrupt, input_files, reject
from jaxgpt.data.readers import open_input

INSTALL = "pip install 'jaxgpt[web]'  (or: pip install \"resiliparse>=2,<3\")"
HTML_TYPES = ("text/html", "application/xhtml+xml")
META_BYTES = 2048  # where a <meta charset> must be, as browsers look for it (HTML spec: 1024)
_META_CHARSET = re.compile(rb"""<meta[^>]*?charset\s*=\s*["']?\s*([A-Za-z0-9_.:-]+)""", re.I)
_HEADER_CHARSET = re.compile(r"""charset\s*=\s*["']?([A-Za-z0-9_.:-]+)""", re.I)
# Byte-order marks, UTF-32 before UTF-16 (the UTF-32-LE mark starts with UTF-16-LE's).
_BOMS = (
    (codecs.BOM_UTF8, "utf-8-sig"),
    (codecs.BOM_UTF32_LE, "utf-32"),
    (codecs.BOM_UTF32_BE, "utf-32"),
    (codecs.BOM_UTF16_LE, "utf-16"),
    (codecs.BOM_UTF16_BE, "utf-16"),
)


def has_resiliparse() -> bool:
    return importlib.util.find_spec("resiliparse") is not None


def require_resiliparse(what: str) -> None:
    """Fail at once (when the config is read, not hours into a build) without Resiliparse."""
    if not has_resiliparse():
        raise ImportError(f"{what} needs Resiliparse, which is not installed here: {INSTALL}")


# ---------------------------------------------------------------- records


def _records(path: AnyPath, stats: ReadStats, strict: bool, kinds: dict[str, int]):
    """(record, payload bytes) of every record of one file, counting record types into kinds;
    a truncated file is counted (or, strict, raised) as corrupt, records before it kept."""
    from warcio.archiveiterator import ArchiveIterator
    from warcio.exceptions import ArchiveLoadFailed

    # Decompressed here rather than by warcio, which ends silently at a truncated gzip member.
    with open_input(path) as stream:
        counted = _Counted(stream)
        try:
            records = ArchiveIterator(counted)
            for record in records:
                kinds[record.rec_type] = kinds.get(record.rec_type, 0) + 1
                yield record, _payload(record, path)
            if records.offset < counted.bytes:  # warcio stops silently at a cut-off header
                raise CorruptInputError(
                    f"{path}: ends inside a record header after byte {records.offset:,} of "
                    f"{counted.bytes:,} (a truncated file?)"
                )
        except CorruptInputError as e:
            corrupt(e, stats, strict)
        except ArchiveLoadFailed as e:
            message = f"{path}: not a valid WARC file ({str(e)[:120]})"
            corrupt(CorruptInputError(message), stats, strict)


class _Counted:
    """A stream that counts the bytes read from it (decompressed, as warcio sees them)."""

    def __init__(self, stream):
        self.stream, self.bytes = stream, 0

    def read(self, size: int = -1) -> bytes:
        data = self.stream.read(size)
        self.bytes += len(data)
        return data


def _payload(record, path: AnyPath) -> bytes:
    """The record's content (HTTP chunking and Content-Encoding undone), or CorruptInputError
    when the file ends inside it."""
    uri = record.rec_headers.get_header("WARC-Target-URI")
    try:
        payload = record.content_stream().read()
    except (OSError, ValueError, EOFError) as e:  # a gzip body that breaks off
        raise CorruptInputError(f"{path}: record {uri}: body cannot be decoded ({e})") from e
    left = getattr(record.raw_stream, "limit", 0)  # bytes the WARC header promised but lacked
    if left > 0:
        raise CorruptInputError(f"{path}: record {uri} is truncated ({left:,} bytes missing)")
    return payload


def _wrong_kind(stats: ReadStats, strict: bool, path: AnyPath, message: str) -> None:
    reject(stats, strict, str(path), message, "wrong_kind_files")


# ---------------------------------------------------------------- wet


def read_wet(source: Source, stats: ReadStats, strict: bool, **_) -> Iterator[str]:
    """Common Crawl WET files: one document per 'conversion' record's extracted text."""
    for path in input_files(source, stats):
        kinds: dict[str, int] = {}
        for record, payload in _records(path, stats, strict, kinds):
            if record.rec_type != "conversion":
                continue
            uri = record.rec_headers.get_header("WARC-Target-URI")
            try:
                text = payload.decode("utf-8")
            except UnicodeDecodeError as e:
                reason = f"not valid UTF-8 at byte {e.start}"
                reject(stats, strict, f"{path}: record {uri}", reason, "bad_utf8_records")
                text = payload.decode("utf-8", errors="replace")
            if stats.accept(source, text):
                yield text
        if kinds.get("response") and not kinds.get("conversion"):
            message = (
                f"a WARC file ({kinds['response']:,} response records, no WET conversion "
                f"records): use warc:{path}"
            )
            _wrong_kind(stats, strict, path, message)


# ---------------------------------------------------------------- warc


def read_warc(source: Source, stats: ReadStats, strict: bool, **_) -> Iterator[str]:
    """WARC files: the main text of every successful HTML response (see the module doc)."""
    require_resiliparse(f"data.sources: {source.spec}")
    for path in input_files(source, stats):
        kinds: dict[str, int] = {}
        for record, payload in _records(path, stats, strict, kinds):
            reason = _skip_reason(record, payload)
            if reason:
                stats.skip(reason)
                continue
            uri = record.rec_headers.get_header("WARC-Target-URI")
            header = record.http_headers.get_header("Content-Type") or ""
            html = decode_html(payload, header, f"{path}: record {uri}", stats, strict)
            text = main_text(html)
            if not text.strip():
                stats.skip("warc_empty_extraction")
                continue
            if stats.keep(source, text):
                yield text
        if kinds.get("conversion") and not kinds.get("response"):
            message = (
                f"a WET file ({kinds['conversion']:,} conversion records, no HTTP response "
                f"records): use wet:{path}"
            )
            _wrong_kind(stats, strict, path, message)


def _skip_reason(record, payload: bytes) -> str:
    """Why a record holds no page to read ("" if it does)."""
    if record.rec_type == "revisit":
        return "warc_revisit"  # a pointer to an earlier capture: its text is read there
    if record.rec_type != "response":
        return "warc_not_response"  # warcinfo, request, metadata, resource, conversion
    if record.http_headers is None:
        return "warc_not_http"  # dns: and other non-HTTP captures
    status = record.http_headers.get_statuscode() or ""
    if not status.startswith("2"):
        return f"warc_status_{status[:1]}xx" if status[:1].isdigit() else "warc_status_bad"
    mime = (record.http_headers.get_header("Content-Type") or "").split(";")[0].strip().lower()
    if mime in HTML_TYPES:
        return ""
    if not mime and payload[:512].lstrip().lower().startswith((b"<!doctype html", b"<html")):
        return ""  # no Content-Type: the page itself says it is HTML
    return "warc_not_html"


def charset(body: bytes, content_type: str) -> tuple[str, str]:
    """(Python codec name, how it was found): byte-order mark, the HTTP header's charset=, a
    <meta> tag in the first META_BYTES, Resiliparse's detector, else utf-8."""
    from resiliparse.parse.encoding import detect_encoding, map_encoding_to_html5

    for bom, name in _BOMS:
        if body.startswith(bom):
            return name, "byte-order mark"
    declared = _HEADER_CHARSET.search(content_type)
    if declared and (name := _known(declared.group(1), map_encoding_to_html5)):
        return name, "HTTP header"
    declared = _META_CHARSET.search(body[:META_BYTES])
    if declared and (name := _known(declared.group(1).decode("ascii"), map_encoding_to_html5)):
        return name, "meta tag"
    found = detect_encoding(body, html5_compatible=False)
    if found and (name := _known(found, map_encoding_to_html5)):
        return name, "detected"
    return "utf-8", "default"


def _known(label: str, to_html5) -> str:
    """The codec a charset label means on the web (WHATWG: latin1 is windows-1252), or ""
    for a label Python does not know (then the next step of the chain decides)."""
    try:
        codecs.lookup(label)
    except LookupError:
        return ""
    name = to_html5(label)
    if name.startswith("utf-16"):
        return "utf-16"  # a UTF-16 page without a mark is the one case to keep the label's order
    return name


def decode_html(body: bytes, content_type: str, where: str, stats: ReadStats, strict: bool) -> str:
    """The page as text, in the charset charset() finds; bytes that do not decode are replaced
    and the record counted (or, strict, an error naming it)."""
    name, how = charset(body, content_type)
    if name == "utf-16" and not body.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        name = "utf-16-be" if body[:1] == b"\x00" else "utf-16-le"  # "<" is b"\x00<" in BE
    try:
        return body.decode(name)
    except UnicodeDecodeError as e:
        reason = f"not valid {name} ({how}) at byte {e.start}"
        reject(stats, strict, where, reason, "bad_utf8_records")
        return body.decode(name, errors="replace")


def main_text(html: str) -> str:
    """The page's main content as plain text, paragraphs on their own lines."""
    from resiliparse.extract.html2text import extract_plain_text
    from resiliparse.parse.html import HTMLTree

    tree = HTMLTree.parse(html)
    return extract_plain_text(
        tree, preserve_formatting=True, main_content=True, list_bullets=True, alt_texts=False,
        links=False, form_fields=False, noscript=False, comments=False,
    )  # fmt: skip
