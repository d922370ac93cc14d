"""Web crawls: the warc: kind (records kept and skipped, the charset chain, main-content
extraction), the wet:/warc: mix-up, and no silent zero (every input file that gave no training
text is named in the report with why; data.strict makes it an error)."""

from __future__ import annotations

import codecs
import json
from pathlib import Path

import pytest
from data_inputs import wiki_xml, write_wet
from web_fixtures import BOILERPLATE, PAGES, SKIPPED, write_warc

from jaxgpt.config.data import CleanConfig, DataConfig, QualityConfig, TokenizerConfig
from jaxgpt.data import sources as sources_lib
from jaxgpt.data import web
from jaxgpt.data.build import build_dataset
from jaxgpt.data.inputs import ReadStats


def read(spec: str, **kwargs) -> tuple[list[str], ReadStats]:
    stats = ReadStats()
    docs = list(sources_lib.iter_documents(sources_lib.parse_sources(spec), stats, **kwargs))
    return docs, stats


# ---------------------------------------------------------------- warc


@pytest.mark.parametrize("name", ["crawl.warc.gz", "crawl.warc"])
def test_warc_keeps_the_main_text_of_html_pages(tmp_path, name):
    """One document per 2xx HTML response, in every charset of the chain, without the page's
    navigation, sidebar, script, style or footer; every other record counted by reason."""
    path = write_warc(tmp_path / name, gzip_records=name.endswith(".gz"))
    docs, stats = read(f"warc:{path}")
    assert len(docs) == len(PAGES) and stats.documents == len(PAGES)
    for doc, (_, _, _, _, _, paragraphs) in zip(docs, PAGES.values(), strict=True):
        for paragraph in paragraphs:
            assert paragraph in doc
        for junk in (*BOILERPLATE, "Home", "About us", "color: red"):
            assert junk not in doc, (junk, doc)
    assert stats.skipped == {
        "warc_not_response": 1 + len(PAGES) + len(SKIPPED),  # warcinfo and the requests
        "warc_status_4xx": 1, "warc_status_3xx": 1, "warc_not_html": 1,
        "warc_empty_extraction": 1, "warc_revisit": 1,
    }  # fmt: skip
    assert stats.problems == [] and stats.bad_utf8_records == 0


@pytest.mark.parametrize(
    "body, content_type, expected",
    [
        (codecs.BOM_UTF8 + b"<p>x</p>", "text/html; charset=latin1",
         ("utf-8-sig", "byte-order mark")),
        ("<p>é</p>".encode("utf-16"), "text/html", ("utf-16", "byte-order mark")),
        (b"<p>x</p>", "text/html; charset=ISO-8859-1", ("cp1252", "HTTP header")),
        (b"<p>x</p>", 'text/html; charset="Shift_JIS"', ("shift_jis", "HTTP header")),
        (b'<meta charset="koi8-r"><p>x</p>', "text/html", ("koi8-r", "meta tag")),
        (b'<meta http-equiv="Content-Type" content="text/html; charset=windows-1251">',
         "text/html; charset=nonsense", ("cp1251", "meta tag")),
        ("<p>Река поднималась всю ночь, и к утру старый мост оказался под водой.</p>"
         .encode("koi8-r"), "text/html", ("koi8-r", "detected")),
        (b"<p>plain ascii</p>", "text/html", ("cp1252", "detected")),  # ASCII, as WHATWG reads it
    ],
)  # fmt: skip
def test_charset_chain(body, content_type, expected):
    """Byte-order mark, then the HTTP header, then a <meta> tag, then the detector; a label
    Python does not know is passed over; latin1 means windows-1252, as on the web."""
    assert web.charset(body, content_type) == expected


def test_undecodable_page_is_replaced_and_counted(tmp_path):
    """A page whose bytes are not what its header says: decoded with U+FFFD, counted, named;
    with data.strict an error naming the record."""
    body = "<html><body><article><p>Un café à la gare, s'il vous plaît.</p></article></body>"
    pages = {"bad": ("https://example.fr/x", "200 OK", "text/html; charset=utf-8",
                     body.encode("cp1252"), [], [])}  # fmt: skip
    path = write_warc(tmp_path / "bad.warc.gz", pages, {}, revisit=False)
    docs, stats = read(f"warc:{path}")
    assert docs == ["Un caf\ufffd \ufffd la gare, s'il vous pla\ufffdt."]
    assert stats.bad_utf8_records == 1
    assert stats.problems == [f"{path}: record https://example.fr/x: not valid utf-8 (HTTP header)"
                              " at byte 30"]  # fmt: skip
    with pytest.raises(ValueError, match=r"bad\.warc\.gz: record https://example\.fr/x"):
        read(f"warc:{path}", strict=True)


def test_warc_truncated(tmp_path):
    """A cut-off WARC is reported by name; the pages before the cut are kept."""
    whole = write_warc(tmp_path / "whole.warc", gzip_records=False)
    cut = tmp_path / "cut.warc"
    cut.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    docs, stats = read(f"warc:{cut}")
    assert 0 < len(docs) < len(PAGES) and stats.corrupt_files == 1
    assert str(cut) in stats.problems[0]
    with pytest.raises(ValueError, match=str(cut)):
        read(f"warc:{cut}", strict=True)


def test_wet_and_warc_mixed_up(tmp_path):
    """A WARC given as wet: and a WET given as warc: say which kind to use."""
    warc = write_warc(tmp_path / "crawl.warc.gz")
    wet = write_wet(tmp_path / "crawl.warc.wet.gz", [("https://example.com/a", "Some text.")])
    docs, stats = read(f"wet:{warc}")
    assert docs == [] and stats.wrong_kind_files == 1
    assert stats.problems == [
        f"{warc}: a WARC file ({len(PAGES) + len(SKIPPED)} response records, no WET conversion "
        f"records): use warc:{warc}"
    ]
    docs, stats = read(f"warc:{wet}")
    assert docs == [] and stats.wrong_kind_files == 1
    assert stats.problems[0].endswith(f"no HTTP response records): use wet:{wet}")
    with pytest.raises(ValueError, match=rf"use warc:{warc}.*data\.strict"):
        read(f"wet:{warc}", strict=True)


def test_warc_file_endings(tmp_path):
    """A folder given to warc: takes .warc.gz and .warc, not WET files, and the reverse."""
    for name in ("a.warc.gz", "b.warc", "c.warc.wet.gz"):
        (tmp_path / name).write_bytes(b"")
    files = sources_lib.source_files(sources_lib.Source("warc", str(tmp_path)))
    assert [f.name for f in files] == ["a.warc.gz", "b.warc"]
    files = sources_lib.source_files(sources_lib.Source("wet", str(tmp_path)))
    assert [f.name for f in files] == ["c.warc.wet.gz"]


def test_warc_without_resiliparse_fails_when_parsed(tmp_path, monkeypatch):
    path = write_warc(tmp_path / "crawl.warc.gz")
    monkeypatch.setattr(web, "has_resiliparse", lambda: False)
    with pytest.raises(ImportError, match=r"warc:.*Resiliparse.*pip install 'jaxgpt\[web\]'"):
        sources_lib.parse_sources(f"warc:{path}")


# ---------------------------------------------------------------- no silent zero


def config(sources: str, **overrides) -> DataConfig:
    settings = dict(sources=sources, tokenizer=TokenizerConfig("char", 0, train_mb=0.1))
    return DataConfig(**{**settings, **overrides})


@pytest.fixture
def good(tmp_path) -> Path:
    path = tmp_path / "good.jsonl"
    lines = [json.dumps({"text": f"Document {i} says something. " * 5}) for i in range(120)]
    path.write_text("\n".join(lines) + "\n")
    return path


def bad_inputs(tmp_path: Path) -> dict[str, tuple[str, str]]:
    """spec -> (file, what its line in the report must say)."""
    warc = write_warc(tmp_path / "crawl.warc.gz")
    keys = tmp_path / "keys.jsonl"
    keys.write_text(json.dumps({"content": "x", "id": 1}) + "\n")
    rss = tmp_path / "feed.xml"
    rss.write_text('<?xml version="1.0"?><rss version="2.0"><channel></channel></rss>\n')
    redirects = tmp_path / "redirects.xml"
    redirects.write_bytes(wiki_xml([("A", 0, True, "#REDIRECT [[B]]"), ("Talk:B", 1, False, "hi")]))
    short = tmp_path / "short.jsonl"
    short.write_text("".join(json.dumps({"text": t}) + "\n" for t in ("a", "bb", "ccc")))
    return {
        f"wet:{warc}": (str(warc), f"wrong_kind_files 1); first problem: {warc}: a WARC file"),
        f"jsonl:{warc}": (str(warc), f"looks like a WARC file (HTTP responses): use warc:{warc}"),
        f"jsonl:{keys}": (str(keys), "no 'text' field (data.jsonl_field); its keys: 'content'"),
        f"wiki:{rss}": (str(rss), "its XML root is <rss>, not <mediawiki>"),
        f"wiki:{redirects}": (str(redirects), "skipped (wiki_namespace 1, wiki_redirect 1)"),
        f"jsonl:{short}": (str(short), "all 3 documents dropped by clean (too_short 3)"),
    }  # fmt: skip


def test_every_file_that_gave_nothing_is_named(tmp_path, good):
    """Each bad file gets one line under `read` in the report, saying why; the good file
    none; files of 0 bytes are left alone."""
    bad = bad_inputs(tmp_path)
    empty = tmp_path / "empty.jsonl"
    empty.write_bytes(b"")
    spec = ",".join([*bad, f"jsonl:{empty}", f"jsonl:{good}"])
    info = build_dataset(
        config(spec, clean=CleanConfig(min_chars=5)), tmp_path / "out", verbose=False
    )
    report = (info.path / "report.txt").read_text()
    lines = [line for line in report.splitlines() if line.startswith("  ! no documents: ")]
    assert len(lines) == len(bad), report
    for line, (name, says) in zip(lines, bad.values(), strict=True):
        assert line.startswith(f"  ! no documents: {name}: ") and says in line, (line, says)
    assert "no document files: 6" in report


def test_no_documents_lines_are_in_the_left_zero_error(tmp_path):
    keys = tmp_path / "keys.jsonl"
    keys.write_text(json.dumps({"body": "x"}) + "\n")
    with pytest.raises(ValueError, match=r"left 0 training(.|\n)*no documents: .*keys\.jsonl"):
        build_dataset(config(f"jsonl:{keys}"), tmp_path / "out", verbose=False)


@pytest.mark.parametrize("which", [0, 1, 3, 4, 5])
def test_strict_makes_each_an_error_naming_the_file(tmp_path, good, which):
    spec, (name, _) = list(bad_inputs(tmp_path).items())[which]
    cfg = config(f"{spec},jsonl:{good}", strict=True, clean=CleanConfig(min_chars=5))
    with pytest.raises(ValueError, match=r"data\.strict=True") as failed:
        build_dataset(cfg, tmp_path / "out", verbose=False)
    assert name in str(failed.value)


def test_quality_filters_in_a_build(tmp_path, good):
    """A build with warc: and the language filter: the report counts quality_language and
    why; a file whose every document the filters dropped is named."""
    warc = write_warc(tmp_path / "crawl.warc.gz")
    cfg = config(f"warc:{warc},jsonl:{good}", quality=QualityConfig(language=True, languages="de"))
    info = build_dataset(cfg, tmp_path / "out", verbose=False)
    report = (info.path / "report.txt").read_text()
    assert "quality_language" in report and "language: detected ru 1" in report
    assert f"no documents: {good}: all 120 documents dropped by clean (quality_language 120)" in (
        report
    )
    kept = [json.loads(x)["text"] for s in ("train", "val")
            for x in (info.path / f"{s}.jsonl").read_text().splitlines()]  # fmt: skip
    text = "".join(kept)  # one document, its tail held out (data.split=auto, few documents)
    assert PAGES["utf16"][5][0][:40] in text and "river" not in text and "Река" not in text
