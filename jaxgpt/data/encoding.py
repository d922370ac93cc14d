"""Character encodings of input files: which one a file is in, and its text as UTF-8.

XML (wiki dumps) is sniffed as the XML specification's appendix F says: a byte-order mark
(UTF-32 before UTF-16, whose mark is a prefix of UTF-32-LE's), then the NUL pattern of a
BOM-less UTF-16/32 `<`, then the `encoding="..."` of the XML declaration, else UTF-8. Text and
JSONL files honor a byte-order mark; without one they are UTF-8, or, with
data.detect_encoding, whatever charset-normalizer finds when they are not valid UTF-8.

Whatever the encoding, readers see UTF-8: a _Transcoding stream decodes incrementally,
replaces bad sequences with U+FFFD (one per sequence, as errors="replace" does) and counts
them, or with strict=True fails naming the file and byte.
"""

from __future__ import annotations

import codecs
import dataclasses
import io
import re
import threading
from typing import BinaryIO

from jaxgpt.config import AnyPath
from jaxgpt.data.inputs import FillingReader, ReadStats

READ_CHUNK = 1 << 20
# UTF-32 first: its little-endian mark FF FE 00 00 starts with UTF-16-LE's FF FE.
BOMS = (
    (codecs.BOM_UTF32_LE, "utf-32-le"),
    (codecs.BOM_UTF32_BE, "utf-32-be"),
    (codecs.BOM_UTF8, "utf-8"),
    (codecs.BOM_UTF16_LE, "utf-16-le"),
    (codecs.BOM_UTF16_BE, "utf-16-be"),
)
# How "<" (0x3C) looks in each BOM-less wide encoding (XML spec, appendix F.1).
NUL_PATTERNS = (
    (b"<\0\0\0", "utf-32-le"),
    (b"\0\0\0<", "utf-32-be"),
    (b"<\0", "utf-16-le"),
    (b"\0<", "utf-16-be"),
)
XML_DECLARATION = re.compile(rb"<\?xml[^>]*?encoding\s*=\s*[\"']([A-Za-z0-9._:-]+)[\"']")
DECLARED = re.compile(r"(<\?xml[^>]*?encoding\s*=\s*)([\"'])[A-Za-z0-9._:-]+\2")
DETECT_BYTES = 1 << 20  # what charset-normalizer sees of a JSONL file (its head)
REPLACE = "jaxgpt-count-replace"
_COUNTS = threading.local()


def _count_replace(error: UnicodeError) -> tuple[str, int]:
    """errors="replace", counting each bad sequence in this thread's counter."""
    if not isinstance(error, UnicodeDecodeError):
        raise error
    _COUNTS.n = getattr(_COUNTS, "n", 0) + 1
    return "\ufffd", error.end


codecs.register_error(REPLACE, _count_replace)


def canonical(name: str) -> str | None:
    """Python's name for an encoding ("UTF8" -> "utf-8"), None if Python does not know it."""
    try:
        return codecs.lookup(name).name
    except LookupError:
        return None


def sniff_bom(head: bytes) -> tuple[str, int] | None:
    """(encoding, length of the mark) if head starts with a byte-order mark."""
    for bom, name in BOMS:
        if head.startswith(bom):
            return name, len(bom)
    return None


def sniff_xml(head: bytes) -> tuple[str, int, str]:
    """(encoding, bytes to skip, how it was found) for the first bytes of an XML document."""
    found = sniff_bom(head)
    if found:
        return found[0], found[1], "byte-order mark"
    for pattern, name in NUL_PATTERNS:
        if head.startswith(pattern) or head.lstrip(b" \t\r\n").startswith(pattern):
            return name, 0, "no byte-order mark: NUL pattern"
    declared = XML_DECLARATION.match(head.lstrip())
    if declared:
        return declared.group(1).decode("ascii").lower(), 0, "XML declaration"
    return "utf-8", 0, "default"


@dataclasses.dataclass
class Decoded:
    """A file's bytes as a UTF-8 stream, and how they were decoded."""

    stream: BinaryIO
    encoding: str  # Python's codec name, e.g. "utf-16-le"
    how: str  # "byte-order mark", "XML declaration", "detected", "default", ...
    transcoder: _Transcoding | None = None

    @property
    def replaced(self) -> int:
        """Bad sequences replaced with U+FFFD so far."""
        return self.transcoder.replaced if self.transcoder else 0

    def note(self, path: AnyPath) -> str | None:
        """ "FILE: decoded as UTF-16-LE (byte-order mark)" when it was not plain UTF-8."""
        if self.encoding == "utf-8" and self.how == "default":
            return None
        return f"{path}: decoded as {self.encoding.upper()} ({self.how})"


class _Prefixed(io.RawIOBase):
    """head, then the rest of stream: the bytes read to sniff, given back."""

    def __init__(self, head: bytes, stream: BinaryIO):
        self._head, self._stream = memoryview(head), stream

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        if self._head:
            n = min(len(buffer), len(self._head))
            buffer[:n] = self._head[:n]
            self._head = self._head[n:]
            return n
        data = self._stream.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)


class _Transcoding(FillingReader):
    """UTF-8 bytes of a stream in another encoding (or UTF-8 to check): bad sequences replaced
    and counted, or, strict, a ValueError naming the file and byte. xml=True rewrites the
    declaration's encoding to utf-8, else expat would decode the UTF-8 bytes a second time."""

    def __init__(self, stream: BinaryIO, encoding: str, path: AnyPath, strict: bool, xml: bool):
        self._stream, self._path, self._strict, self._xml = stream, path, strict, xml
        self._encoding = encoding
        self._decoder = codecs.getincrementaldecoder(encoding)("strict" if strict else REPLACE)
        self._out, self._fed, self._first, self._eof = memoryview(b""), 0, True, False
        self.replaced = 0

    def _fill(self) -> None:
        chunk = self._stream.read(READ_CHUNK)
        self._eof = not chunk
        pending = self._decoder.getstate()[0]
        before = getattr(_COUNTS, "n", 0)
        try:
            text = self._decoder.decode(chunk, final=self._eof)
        except UnicodeDecodeError as e:
            at = self._fed - len(pending) + e.start
            raise ValueError(
                f"{self._path}: not valid {self._encoding.upper()} at byte {at:,} "
                "(data.strict=True)"
            ) from e
        bad = getattr(_COUNTS, "n", 0) - before
        self.replaced += bad
        self._fed += len(chunk)
        if self._first:
            self._first = not text
            if self._xml:
                text = DECLARED.sub(r"\1\2utf-8\2", text, count=1)
        elif self._encoding == "utf-8" and not bad:
            # Valid UTF-8 passes as it came (less a sequence cut at the chunk's end): no need
            # to encode what was just decoded.
            data = pending + chunk
            self._out = memoryview(data[: len(data) - len(self._decoder.getstate()[0])])
            return
        self._out = memoryview(text.encode("utf-8", "surrogatepass"))


def _buffered(raw: io.RawIOBase) -> BinaryIO:
    return io.BufferedReader(raw, buffer_size=READ_CHUNK)


def open_xml(stream: BinaryIO, path: AnyPath, strict: bool) -> Decoded:
    """An XML file's bytes as UTF-8, whatever its mark, NUL pattern or declaration says."""
    head = stream.read(4096)
    name, skip, how = sniff_xml(head)
    encoding = canonical(name)
    if encoding is None:
        raise ValueError(
            f"{path}: the XML declaration names encoding {name!r}, which Python does not know; "
            "convert the file to UTF-8 (iconv -f ENCODING -t UTF-8)"
        )
    rest = _buffered(_Prefixed(head[skip:], stream))
    transcoder = _Transcoding(rest, encoding, path, strict, xml=True)
    return Decoded(_buffered(transcoder), encoding, how, transcoder)


def open_lines(stream: BinaryIO, path: AnyPath, detect: bool) -> Decoded:
    """A JSONL file as UTF-8 lines: a byte-order mark honored (and dropped); without one, with
    detect, a head that is not UTF-8 is given to charset-normalizer. Plain UTF-8 passes
    through untouched (lines are checked one by one by the reader)."""
    head = stream.read(DETECT_BYTES if detect else 4096)
    found = sniff_bom(head)
    encoding, how, skip = "utf-8", "default", 0
    if found:
        (encoding, skip), how = found, "byte-order mark"
    elif detect and not _is_utf8_head(head):
        encoding = _detect(head) or "utf-8"
        how = "detected" if encoding != "utf-8" else "default"
    rest = _Prefixed(head[skip:], stream)
    if encoding == "utf-8":
        return Decoded(_buffered(rest), encoding, how)
    transcoder = _Transcoding(_buffered(rest), encoding, path, False, xml=False)
    return Decoded(_buffered(transcoder), encoding, how, transcoder)


def _is_utf8_head(head: bytes) -> bool:
    """Whether head is UTF-8 (a sequence cut at its end allowed)."""
    try:
        codecs.utf_8_decode(head, "strict", False)
    except UnicodeDecodeError:
        return False
    return True


def _detect(raw: bytes) -> str | None:
    """charset-normalizer's best guess (a codec name), None when it has none."""
    import charset_normalizer

    best = charset_normalizer.from_bytes(raw).best()
    return canonical(best.encoding) if best is not None else None


def decode_text(raw: bytes, path: AnyPath, stats: ReadStats, strict: bool, detect: bool) -> str:
    """A whole text file's text: a byte-order mark honored; else UTF-8; else (detect) what
    charset-normalizer finds; else bad bytes replaced, the file counted and named."""
    found = sniff_bom(raw)
    if found:
        encoding, skip = found
        stats.note(f"{path}: decoded as {encoding.upper()} (byte-order mark)")
        return _decode_counted(raw[skip:], encoding, path, stats, strict)
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        if strict and not detect:
            raise ValueError(f"{path}: not valid UTF-8 at byte {e.start} (data.strict=True)") from e
        first_bad = e.start
    encoding = _detect(raw) if detect else None
    if encoding and encoding != "utf-8":
        stats.note(f"{path}: decoded as {encoding.upper()} (detected)")
        return _decode_counted(raw, encoding, path, stats, strict)
    if strict:
        raise ValueError(f"{path}: not valid UTF-8 at byte {first_bad} (data.strict=True)")
    stats.bad_utf8_files += 1
    stats.note(f"{path}: not valid UTF-8 at byte {first_bad}; bad bytes replaced")
    return raw.decode("utf-8", errors="replace")


def _decode_counted(raw: bytes, encoding: str, path: AnyPath, stats: ReadStats, strict: bool):
    """raw in encoding; bad sequences replaced and the file counted (strict: an error)."""
    try:
        return raw.decode(encoding)
    except UnicodeDecodeError as e:
        if strict:
            raise ValueError(
                f"{path}: not valid {encoding.upper()} at byte {e.start} (data.strict=True)"
            ) from e
        stats.bad_utf8_files += 1
        stats.note(f"{path}: not valid {encoding.upper()} at byte {e.start}; bad bytes replaced")
        return raw.decode(encoding, errors="replace")
