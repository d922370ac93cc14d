"""Document cleaning: Unicode forms, invisible characters, whitespace, code layout, filters."""

from __future__ import annotations

import ast
import dataclasses

import pytest

from jaxgpt.data.clean import CleanConfig, CleanStats, clean_documents, clean_text

DEFAULT = CleanConfig()

PYTHON_SOURCE = '''\
import os\r
\r
\r
\r
\r
class Walker:   \r
    """Walk a tree."""\r
\r
    def __init__(self, root):\t\r
        self.root = root\r
\r
    def walk(self):\r
        for dirpath, _, files in os.walk(self.root):\r
            for f in files:\r
                if f.endswith(".py"):\r
                    yield os.path.join(dirpath,   f)\r
'''


def _clean_all(docs: list[str], cfg: CleanConfig = DEFAULT) -> tuple[list[str], CleanStats]:
    stats = CleanStats()
    return list(clean_documents(docs, cfg, stats)), stats


def test_nfc_composes_but_keeps_compatibility_characters():
    text = "cafe\u0301 \ufb01le \uff21\u00b2"  # decomposed é, "fi" ligature, fullwidth A, ²
    assert clean_text(text, CleanConfig(normalization="NFC")) == "caf\u00e9 \ufb01le \uff21\u00b2"
    assert clean_text(text, CleanConfig(normalization="NFKC")) == "caf\u00e9 file A2"
    assert clean_text(text, CleanConfig(normalization="none")) == text


def test_removal_happens_before_normalization():
    # The zero-width space splits a combining sequence; once removed the pair must compose.
    assert clean_text("e\u200b\u0301", DEFAULT) == "\u00e9"


def test_control_characters_removed_and_counted():
    docs, stats = _clean_all(["a\x00b\x07c\x1bd\x7fe\x85f\x9fg\tend", "clean"])
    assert docs == ["abcdefg\tend", "clean"]
    assert stats.control_chars_removed == 6
    assert stats.documents_modified == 1


def test_line_endings():
    docs, stats = _clean_all(["a\r\nb\rc\n\rd"])
    assert docs == ["a\nb\nc\n\nd"]
    assert stats.line_breaks_normalized == 3


def test_zero_width_and_bom_removed_but_joiners_kept():
    docs, stats = _clean_all(["\ufeffhello\u200bworld\u2060!", "man\u200dwoman \u0645\u200c\u06cc"])
    assert docs == ["helloworld!", "man\u200dwoman \u0645\u200c\u06cc"]
    assert stats.zero_width_removed == 3


def test_lone_surrogates_removed():
    docs, stats = _clean_all(["a\ud800b\udfffc"])
    assert docs == ["abc"]
    assert stats.surrogates_removed == 2
    docs[0].encode("utf-8")  # would raise on a surrogate


def test_python_indentation_survives_exactly():
    cleaned = clean_text(PYTHON_SOURCE, DEFAULT)
    expected = [line.rstrip() for line in PYTHON_SOURCE.replace("\r\n", "\n").split("\n")]
    got = cleaned.split("\n")
    indent = lambda line: line[: len(line) - len(line.lstrip())]
    nonblank = [line for line in expected if line]
    assert [indent(line) for line in got if line] == [indent(line) for line in nonblank]
    assert "                    yield os.path.join(dirpath,   f)" in got  # inner spaces kept
    assert ast.dump(ast.parse(cleaned)) == ast.dump(ast.parse(PYTHON_SOURCE.replace("\r", "")))


def test_tab_indentation_survives():
    makefile = "all: build\r\n\r\nbuild:\r\n\tgo build  ./...\t\r\n\t\t@echo done\r\n"
    assert (
        clean_text(makefile, DEFAULT) == "all: build\n\nbuild:\n\tgo build  ./...\n\t\t@echo done"
    )


def test_collapse_spaces_keeps_indentation():
    cfg = CleanConfig(collapse_spaces=True)
    assert clean_text("    x  =\t 1   # c\n\tif a  and\tb:", cfg) == "    x = 1 # c\n\tif a and b:"
    cleaned = clean_text(PYTHON_SOURCE, cfg)
    assert "                    yield os.path.join(dirpath, f)" in cleaned
    assert ast.dump(ast.parse(cleaned)) == ast.dump(ast.parse(PYTHON_SOURCE.replace("\r", "")))


def test_first_line_indentation_kept_when_blank_edges_are_stripped():
    assert clean_text("\n  \n\n    return x  \n   \n\n", DEFAULT) == "    return x"


def test_blank_line_collapsing():
    assert clean_text("a\n\n\nb", DEFAULT) == "a\n\n\nb"  # two blank lines: kept
    assert clean_text("a\n\n\n\n\n\nb", DEFAULT) == "a\n\n\nb"  # five: down to two
    assert clean_text("a\n \n\t\n  \n\nb", DEFAULT) == "a\n\n\nb"  # whitespace-only lines count
    assert clean_text("a\n\n\n\nb", CleanConfig(max_blank_lines=0)) == "a\nb"
    assert clean_text("a\n\n\n\n\nb", CleanConfig(max_blank_lines=-1)) == "a\n\n\n\n\nb"


def test_trailing_whitespace_and_edges():
    assert clean_text("\n\nx  \t\ny\u3000\n\n", DEFAULT) == "x\ny"
    keep = CleanConfig(strip_trailing_whitespace=False, strip_blank_edges=False)
    assert clean_text("\nx  \ny\n", keep) == "\nx  \ny\n"


def test_clean_text_is_idempotent():
    messy = "\ufeff\r\n\r\n  a\x00b  \r\n\n\n\n\n\tc\u200b  \r\n\r\n"
    for cfg in (DEFAULT, CleanConfig(normalization="NFKC", collapse_spaces=True)):
        once = clean_text(messy, cfg)
        assert clean_text(once, cfg) == once


def test_length_filters_count_every_drop_by_reason():
    cfg = CleanConfig(min_chars=3, max_chars=100)
    raw = ["", "  \n\t\n ", "\x00\u200b", "ab", "abc", "x" * 100, "y" * 101, "ok doc"]
    docs, stats = _clean_all(raw, cfg)
    assert docs == ["abc", "x" * 100, "ok doc"]  # too-long documents are dropped, not truncated
    assert stats.dropped == {"empty": 3, "too_short": 1, "too_long": 1}
    assert stats.documents_in == 8
    assert stats.documents_out == 3
    assert stats.documents_dropped == 5
    assert stats.chars_in == sum(map(len, raw))
    assert stats.chars_out == 3 + 100 + 6


def test_empty_documents_dropped_by_default():
    docs, stats = _clean_all(["", "\n\n", "\ufeff", "x"])
    assert docs == ["x"]
    assert stats.dropped == {"empty": 3}


def test_quality_filters():
    cfg = CleanConfig(min_words=3, max_line_chars=20, max_replacement_fraction=0.1)
    raw = ["one two three", "one two", "short line\n" + "z" * 21, "a b c \ufffd\ufffd"]
    docs, stats = _clean_all(raw, cfg)
    assert docs == ["one two three"]
    assert stats.dropped == {"too_few_words": 1, "line_too_long": 1, "bad_encoding": 1}


def test_defaults_keep_text_as_is():
    text = "def f():\n    return  1\t# x\n\n\nprint(f())"
    assert clean_text(text, DEFAULT) == text


def test_stats_merge_and_summary():
    _, a = _clean_all(["", "x\x00"])
    _, b = _clean_all(["", "y"])
    a.merge(b)
    assert (a.documents_in, a.documents_out, a.dropped) == (4, 2, {"empty": 2})
    assert a.control_chars_removed == 1
    assert "kept 2/4" in a.summary()
    assert set(dataclasses.asdict(a)) >= {"documents_in", "documents_out", "dropped", "chars_in"}


@pytest.mark.parametrize(
    "kwargs",
    [
        {"normalization": "NFD"},
        {"min_chars": 5, "max_chars": 4},
        {"max_blank_lines": -2},
        {"max_replacement_fraction": 1.5},
    ],
)
def test_bad_config_is_rejected(kwargs):
    with pytest.raises(ValueError):
        CleanConfig(**kwargs)
