"""Document cleaning: Unicode normalization, invisible/control characters, whitespace, filters.

`clean_text` is pure; `clean_documents` applies it to a stream, drops documents that fail the
length and quality filters, and counts every removal in a CleanStats so a report can say why the
corpus shrank. Leading indentation is never touched, so source code survives cleaning.
"""

from __future__ import annotations

import dataclasses
import re
import unicodedata
from collections.abc import Callable, Iterable, Iterator

from jaxgpt.config.data import NORMALIZATIONS, CleanConfig  # noqa: F401  (re-exported)

# C0 and C1 controls except \t and \n (\r is turned into \n before this runs), and DEL.
_CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f]")
# Invisible characters that carry no meaning in training text: zero-width space, word joiner,
# BOM / zero-width no-break space. ZWNJ/ZWJ (U+200C/U+200D) are kept on purpose: they change
# spelling in Persian and Indic scripts and hold emoji sequences together.
_ZERO_WIDTH = re.compile("[\u200b\u2060\ufeff]")
# In a Python str every surrogate code point is unpaired (valid pairs decode to one code point);
# they cannot be encoded as UTF-8, so they would crash the tokenizer or the writer later.
_SURROGATE = re.compile("[\ud800-\udfff]")
_ANY_REMOVABLE = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u200b\u2060\ufeff\ud800-\udfff]")
# Runs of horizontal whitespace after a line's first non-blank character (indentation excluded).
_INNER_SPACES = re.compile(r"(?<=\S)[^\S\n]{2,}|(?<=\S)[^\S\n ]")
REPLACEMENT_CHAR = "\ufffd"


@dataclasses.dataclass
class CleanStats:
    """Counts from clean_documents; characters are Unicode code points, not bytes."""

    documents_in: int = 0  # documents read
    documents_out: int = 0  # documents kept
    documents_modified: int = 0  # documents (kept or dropped) whose text cleaning changed
    dropped: dict[str, int] = dataclasses.field(default_factory=dict)  # reason -> documents
    chars_in: int = 0  # characters of all documents read
    chars_out: int = 0  # characters of the documents kept, after cleaning
    line_breaks_normalized: int = 0  # \r\n and lone \r turned into \n
    control_chars_removed: int = 0  # C0/C1 control characters (other than \t, \n) and DEL
    zero_width_removed: int = 0  # U+200B, U+2060, U+FEFF (BOM)
    surrogates_removed: int = 0  # unpaired surrogate code points
    # data.quality: why each dropped document failed ("gopher_quality: too_few_words"), and the
    # lines the C4 filter removed from documents, by reason ("c4_no_terminal_punctuation").
    quality_reasons: dict[str, int] = dataclasses.field(default_factory=dict)
    lines_removed: dict[str, int] = dataclasses.field(default_factory=dict)

    @property
    def documents_dropped(self) -> int:
        return sum(self.dropped.values())

    def merge(self, other: CleanStats) -> None:
        """Add another CleanStats into this one (e.g. from a parallel worker)."""
        for f in dataclasses.fields(self):
            mine = getattr(self, f.name)
            if isinstance(mine, dict):
                for reason, n in getattr(other, f.name).items():
                    mine[reason] = mine.get(reason, 0) + n
            else:
                setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))

    def summary(self) -> str:
        """One line for logs."""
        drops = ", ".join(f"{k} {v:,}" for k, v in sorted(self.dropped.items())) or "none"
        return (
            f"clean: kept {self.documents_out:,}/{self.documents_in:,} documents "
            f"({self.chars_out:,}/{self.chars_in:,} chars); dropped: {drops}; "
            f"removed {self.control_chars_removed:,} control, {self.zero_width_removed:,} "
            f"zero-width, {self.surrogates_removed:,} surrogate chars"
        )


def _remove(pattern: re.Pattern, text: str) -> tuple[str, int]:
    out = pattern.sub("", text)
    return out, len(text) - len(out)


def _clean(text: str, cfg: CleanConfig, stats: CleanStats | None) -> str:
    """clean_text, optionally counting what it removed into stats."""
    if "\r" in text:
        if stats is not None:
            stats.line_breaks_normalized += text.count("\r")  # one per \r\n or lone \r
        text = text.replace("\r\n", "\n").replace("\r", "\n")
    # Removal comes before normalization so that e.g. "e\u200b\u0301" composes to one "é".
    if _ANY_REMOVABLE.search(text):
        text, n_surr = _remove(_SURROGATE, text)
        text, n_ctrl = _remove(_CONTROL, text)
        text, n_zw = _remove(_ZERO_WIDTH, text)
        if stats is not None:
            stats.surrogates_removed += n_surr
            stats.control_chars_removed += n_ctrl
            stats.zero_width_removed += n_zw
    if cfg.normalization != "none":
        text = unicodedata.normalize(cfg.normalization, text)
    return _clean_whitespace(text, cfg)


def _clean_whitespace(text: str, cfg: CleanConfig) -> str:
    """Trailing whitespace, inner space runs and blank lines; never leading indentation."""
    # Line-by-line rstrip rather than a regex: a `\s+$` pattern backtracks quadratically on long
    # runs of spaces that are not at a line end.
    if cfg.strip_trailing_whitespace:
        text = "\n".join([line.rstrip() for line in text.split("\n")])
    if cfg.collapse_spaces:
        text = _INNER_SPACES.sub(" ", text)
    if cfg.max_blank_lines >= 0:
        keep = cfg.max_blank_lines
        # A newline followed by more than `keep` blank (whitespace-only) lines.
        text = re.sub(rf"\n(?:[^\S\n]*\n){{{keep + 1},}}", "\n" * (keep + 1), text)
    if cfg.strip_blank_edges:
        # Cut at line boundaries so the first line's indentation survives.
        body = text.lstrip()
        if not body:
            return ""
        start = text.rfind("\n", 0, len(text) - len(body)) + 1
        end = text.find("\n", len(text.rstrip()))
        text = text[start : end if end >= 0 else len(text)]
    return text


def clean_text(text: str, cfg: CleanConfig) -> str:
    """Normalize Unicode, drop control/invisible characters and tidy whitespace; pure."""
    return _clean(text, cfg, None)


def _drop_reason(text: str, cfg: CleanConfig) -> str | None:
    """Why a cleaned document is dropped, or None to keep it; the first failing check wins."""
    n = len(text)
    if n == 0 or text.isspace():
        return "empty"
    if n < cfg.min_chars:
        return "too_short"
    if n > cfg.max_chars:
        return "too_long"
    # The length test first: a document no longer than the limit cannot hold a longer line.
    if 0 < cfg.max_line_chars < n and max(map(len, text.split("\n"))) > cfg.max_line_chars:
        return "line_too_long"
    if cfg.min_words and len(text.split()) < cfg.min_words:
        return "too_few_words"
    if (
        cfg.max_replacement_fraction < 1.0
        and text.count(REPLACEMENT_CHAR) > cfg.max_replacement_fraction * n
    ):
        return "bad_encoding"
    return None


def clean_documents(docs: Iterable[str], cfg: CleanConfig, stats: CleanStats) -> Iterator[str]:
    """Yield cleaned documents that pass the filters, counting every drop by reason in stats.

    Args:
      docs: raw documents.
      cfg: cleaning settings.
      stats: updated in place as documents stream through (read it after the iterator ends).
    """
    for _, text in clean_indexed(docs, cfg, stats):
        yield text


# A further filter after cleaning (data.quality: quality.make_check): (text left, drop reason).
Extra = Callable[[str, CleanStats], tuple[str, "str | None"]]


def clean_indexed(
    docs: Iterable[str], cfg: CleanConfig, stats: CleanStats, extra: Extra | None = None
) -> Iterator[tuple[int, str]]:
    """clean_documents, yielding (position in docs, cleaned text): a kept document keeps the
    place it was read at, which is what identifies it across the passes of a build. `extra`
    filters (and may shorten) what cleaning kept."""
    for i, doc in enumerate(docs):
        stats.documents_in += 1
        stats.chars_in += len(doc)
        text = _clean(doc, cfg, stats)
        if text != doc:
            stats.documents_modified += 1
        reason = _drop_reason(text, cfg)
        if reason is None and extra is not None:
            text, reason = extra(text, stats)
        if reason is not None:
            stats.dropped[reason] = stats.dropped.get(reason, 0) + 1
            continue
        stats.documents_out += 1
        stats.chars_out += len(text)
        yield i, text
