"""Quality filters for web text (data.quality.*, all off by default): the heuristics of the
Gopher, C4 and FineWeb corpora, with the thresholds of datatrove's implementations, and a
language filter (Resiliparse's fast n-gram language identification).

Each filter takes a cleaned document and says why it is dropped, or None to keep it; the C4
filter also removes lines (counted in CleanStats.lines_removed). They run in the order
language → gopher_quality → c4 → fineweb → gopher_repetition: cheap rules first, and the n-gram
loops of the repetition filter only for what is left. A dropped document is counted in
CleanStats.dropped as quality_<rule>, and the exact test that failed in
CleanStats.quality_reasons ("gopher_quality: too_few_words"). Words are whitespace-separated
(datatrove uses a per-language word tokenizer, so counts differ slightly for some scripts).
"""

from __future__ import annotations

import itertools
import re
from collections import Counter
from collections.abc import Callable

from jaxgpt.config.data import QualityConfig
from jaxgpt.data.clean import CleanStats

# Gopher (Rae et al. 2021, appendix A; datatrove GopherRepetitionFilter defaults).
DUP_PARAGRAPH_FRAC, DUP_PARAGRAPH_CHAR_FRAC = 0.30, 0.20
DUP_LINE_FRAC, DUP_LINE_CHAR_FRAC = 0.30, 0.20
TOP_NGRAM_CHAR_FRAC = ((2, 0.20), (3, 0.18), (4, 0.16))
DUP_NGRAM_CHAR_FRAC = ((5, 0.15), (6, 0.14), (7, 0.13), (8, 0.12), (9, 0.11), (10, 0.10))
# Gopher quality (datatrove GopherQualityFilter defaults).
MIN_WORDS, MAX_WORDS = 50, 100_000
MIN_MEAN_WORD, MAX_MEAN_WORD = 3, 10
MAX_SYMBOL_WORD_RATIO = 0.1  # "#" and ellipses per word
MAX_BULLET_LINES, MAX_ELLIPSIS_LINES = 0.9, 0.3
MIN_ALPHA_WORDS = 0.8  # share of words with at least one letter
STOP_WORDS = frozenset(("the", "be", "to", "of", "and", "that", "have", "with"))
MIN_STOP_WORDS = 2
# C4 (Raffel et al. 2020; datatrove C4QualityFilter defaults).
C4_END_PUNCTUATION = (".", "?", "!", '"', "'")
C4_MIN_LINE_WORDS, C4_MAX_WORD, C4_MIN_SENTENCES = 3, 1000, 5
C4_POLICY = (
    "terms of use", "privacy policy", "cookie policy", "uses cookies", "use of cookies",
    "use cookies",
)  # fmt: skip
_CITATION = re.compile(r"\[\d*]|\[edit]|\[citation needed]")
_SENTENCE_END = re.compile(r"[.!?。！？]+(?=[\s\"')\]]|$)")
# FineWeb (Penedo et al. 2024; datatrove FineWebQualityFilter defaults).
FW_LINE_PUNCT, FW_SHORT_LINE, FW_SHORT_LINE_CHARS = 0.12, 0.67, 30
FW_DUP_LINE_CHARS, FW_NEWLINE_PER_WORD = 0.01, 0.3
FW_STOP_CHARS = (".", "!", "?", '"', "'", "…", "。", "！", "？", "։", "؟", "।", "॥", "።")
_PARAGRAPHS = re.compile(r"\n{2,}")
_LINES = re.compile(r"\n+")
_PUNCTUATION_ONLY = re.compile(r"[^\w]+$")
_LETTER = re.compile(r"[^\W\d_]")  # a letter in any script

Check = Callable[[str, CleanStats], "tuple[str, str | None]"]


def find_duplicates(items: list[str]) -> tuple[int, int]:
    """(items seen before, their characters): repeats after the first occurrence."""
    seen: set[str] = set()
    count = chars = 0
    for item in items:
        if item in seen:
            count, chars = count + 1, chars + len(item)
        else:
            seen.add(item)
    return count, chars


def _ngrams(words: list[str], n: int) -> list[tuple[str, ...]]:
    """The n-grams of words as tuples: zip runs in C, and tuples hash without joining."""
    return list(zip(*(words[i:] for i in range(n)), strict=False))


def _duplicated_ngram_chars(words: list[str], n: int) -> int:
    """Characters of n-grams that repeat an earlier one, stepping over each repeat whole so a
    word is counted once (datatrove's find_all_duplicate; its n-grams are joined without
    spaces, so "ab c" equals "a bc" there and not here)."""
    seen: set[tuple[str, ...]] = set()
    chars = i = 0
    while i < len(words) - n + 1:
        gram = tuple(words[i : i + n])
        if gram in seen:
            chars, i = chars + sum(map(len, gram)), i + n
        else:
            seen.add(gram)
            i += 1
    return chars


def gopher_repetition(text: str) -> str | None:
    """Repeated paragraphs, lines and n-grams (menus, boilerplate, spam)."""
    size = len(text)
    paragraphs = _PARAGRAPHS.split(text.strip())
    dups, chars = find_duplicates(paragraphs)
    if dups / len(paragraphs) > DUP_PARAGRAPH_FRAC:
        return "dup_paragraph_frac"
    if chars / size > DUP_PARAGRAPH_CHAR_FRAC:
        return "dup_paragraph_char_frac"
    lines = _LINES.split(text)
    dups, chars = find_duplicates(lines)
    if dups / len(lines) > DUP_LINE_FRAC:
        return "dup_line_frac"
    if chars / size > DUP_LINE_CHAR_FRAC:
        return "dup_line_char_frac"
    words = text.split()
    for n, limit in TOP_NGRAM_CHAR_FRAC:
        grams = _ngrams(words, n)
        if grams:
            gram, count = Counter(grams).most_common(1)[0]
            if (sum(map(len, gram)) + n - 1) * count / size > limit:
                return f"top_{n}_gram"
    grams = _ngrams(words, DUP_NGRAM_CHAR_FRAC[0][0])
    if len(set(grams)) == len(grams):
        return None  # no 5-gram repeats, so no longer one does: skip the slow loops
    for n, limit in DUP_NGRAM_CHAR_FRAC:
        if _duplicated_ngram_chars(words, n) / size > limit:
            return f"dup_{n}_gram"
    return None


def gopher_quality(text: str, english: bool) -> str | None:
    """Too few or many words, odd word lengths, symbols, bullet or ellipsis lines, few words
    with letters, and (English only) too few stop words."""
    words = text.split()
    if not words:
        return "too_few_words"
    # map() over C functions: per-word Python code would make this the slowest filter.
    real = list(itertools.compress(words, [not m for m in map(_PUNCTUATION_ONLY.match, words)]))
    if len(real) < MIN_WORDS:
        return "too_few_words"
    if len(real) > MAX_WORDS:
        return "too_many_words"
    mean = sum(map(len, real)) / len(real)
    if not MIN_MEAN_WORD <= mean <= MAX_MEAN_WORD:
        return "mean_word_length"
    if text.count("#") / len(words) > MAX_SYMBOL_WORD_RATIO:
        return "hashes"
    if (text.count("...") + text.count("…")) / len(words) > MAX_SYMBOL_WORD_RATIO:
        return "ellipses"
    lines = text.splitlines()
    if sum(s.lstrip().startswith(("•", "-")) for s in lines) / len(lines) > MAX_BULLET_LINES:
        return "bullet_lines"
    if sum(s.rstrip().endswith(("...", "…")) for s in lines) / len(lines) > MAX_ELLIPSIS_LINES:
        return "ellipsis_lines"
    if sum(map(bool, map(_LETTER.search, words))) / len(words) < MIN_ALPHA_WORDS:
        return "alpha_words"
    if english and sum(map(STOP_WORDS.__contains__, map(str.lower, words))) < MIN_STOP_WORDS:
        return "stop_words"
    return None


def c4(text: str, removed: dict[str, int]) -> tuple[str, str | None]:
    """C4's line rules: lines without terminal punctuation, with fewer than 3 words, or naming
    javascript or a policy are removed (counted in `removed`); "lorem ipsum", a "{" or fewer
    than 5 sentences left drop the document. Returns (text left, reason or None)."""
    kept, sentences = [], 0
    for line in text.split("\n"):
        line = line.strip()
        if not line:
            continue
        words = line.split()
        if any(len(w) > C4_MAX_WORD for w in words):
            return text, "long_word"
        line = _CITATION.sub("", line)
        lower = line.lower()
        if "lorem ipsum" in lower:
            return text, "lorem_ipsum"
        if "{" in line:
            return text, "curly_bracket"
        why = _c4_line(line, lower, words)
        if why:
            removed[f"c4_{why}"] = removed.get(f"c4_{why}", 0) + 1
            continue
        sentences += max(1, len(_SENTENCE_END.findall(line)))
        kept.append(line)
    if sentences < C4_MIN_SENTENCES:
        return text, "too_few_sentences"
    return "\n".join(kept), None


def _c4_line(line: str, lower: str, words: list[str]) -> str | None:
    if not line.endswith(C4_END_PUNCTUATION) or line.endswith("..."):
        return "no_terminal_punctuation"
    if len(words) < C4_MIN_LINE_WORDS:
        return "too_few_words"
    if "javascript" in lower:
        return "javascript"
    if any(p in lower for p in C4_POLICY):
        return "policy"
    return None


def fineweb(text: str) -> str | None:
    """Few lines ending in punctuation, mostly short lines, repeated lines, list-like text."""
    lines = [line for line in text.split("\n") if line.strip()]
    if not lines:
        return "empty"
    if sum(line.endswith(FW_STOP_CHARS) for line in lines) / len(lines) < FW_LINE_PUNCT:
        return "line_punctuation"
    if sum(len(line) <= FW_SHORT_LINE_CHARS for line in lines) / len(lines) > FW_SHORT_LINE:
        return "short_lines"
    if find_duplicates(lines)[1] / max(len(text.replace("\n", "")), 1) > FW_DUP_LINE_CHARS:
        return "dup_line_chars"
    if text.count("\n") / max(len(text.split()), 1) > FW_NEWLINE_PER_WORD:
        return "newlines_per_word"
    return None


def language_check(cfg: QualityConfig) -> Callable[[str], str | None]:
    """The language filter: the detected language must be one of cfg.languages, with an
    out-of-place rank (distance to the language's profile) of at most cfg.max_rank."""
    from resiliparse.parse.lang import detect_fast

    wanted = set(cfg.language_codes)

    def check(text: str) -> str | None:
        lang, rank = detect_fast(text, cutoff=cfg.max_rank)
        if lang == "unknown" or rank > cfg.max_rank:
            return "unsure"  # no profile close enough: mixed, code, or too little text
        return None if lang in wanted else f"detected {lang}"

    return check


def make_check(cfg: QualityConfig) -> Check | None:
    """check(text, stats) -> (text left, "quality_<rule>" or None) for the enabled filters,
    counting the exact reason into stats.quality_reasons and C4's removed lines into
    stats.lines_removed (also for a document a later rule drops); None if no filter is on."""
    if not cfg.enabled:
        return None
    language = language_check(cfg) if cfg.language else None
    english = set(cfg.language_codes) == {"en"}

    def first_failure(text: str, stats: CleanStats) -> tuple[str, str, str | None]:
        if language and (why := language(text)):
            return text, "language", why
        if cfg.gopher_quality and (why := gopher_quality(text, english)):
            return text, "gopher_quality", why
        if cfg.c4:
            text, why = c4(text, stats.lines_removed)
            if why:
                return text, "c4", why
        if cfg.fineweb and (why := fineweb(text)):
            return text, "fineweb", why
        if cfg.gopher_repetition and (why := gopher_repetition(text)):
            return text, "gopher_repetition", why
        return text, "", None

    def check(text: str, stats: CleanStats) -> tuple[str, str | None]:
        text, rule, why = first_failure(text, stats)
        if why is None:
            return text, None
        key = f"{rule}: {why}"
        stats.quality_reasons[key] = stats.quality_reasons.get(key, 0) + 1
        return text, f"quality_{rule}"

    return check
