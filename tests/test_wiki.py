"""Tests for jaxgpt/data/wikitext.py and wiki.py: the fast stripper against mwparserfromhell (the
oracle) on generated pages, edge cases, what is skipped and counted, and multistream dumps
split into parts (with the index and without) giving what reading them whole gives.

Every dump is built here by tests/wiki_fixtures.py; nothing is downloaded."""

from __future__ import annotations

import bz2
import dataclasses
import itertools

import pytest
from wiki_fixtures import EDGE_PAGES, dump_xml, generate_pages, multistream

from jaxgpt.config.data import DataConfig
from jaxgpt.data import stages, wiki, wikitext
from jaxgpt.data.inputs import CorruptInputError, ReadStats, Source

LEFTOVERS = ("{{", "}}", "[[", "]]", "<ref", "{|", "|}", "'''", "__NOTOC__", "Category:", "<math")


@pytest.fixture(scope="module")
def pages():
    return generate_pages(300, seed=3)


def read(path, **options) -> tuple[list[str], ReadStats]:
    stats = ReadStats()
    return list(wiki.read_wiki(Source("wiki", str(path)), stats, False, **options)), stats


# ---------------------------------------------------------------- the stripper


def test_fast_stripper_gives_the_oracles_words(pages):
    """Same words as mwparserfromhell on every generated article, and no markup left."""
    articles = [p for p in pages if p[1] == 0 and not p[2]]
    assert len(articles) > 150
    for title, _, _, text in articles:
        fast = wikitext.plain_text(text)
        oracle = wiki._strip(text, "mwparserfromhell", wikitext.DROP_PREFIXES)
        assert fast.text.split() == oracle.text.split(), title
        assert fast.disambiguation == oracle.disambiguation, title
        assert not fast.unbalanced, title
        for leftover in LEFTOVERS:
            assert leftover not in fast.text, (title, leftover)


@pytest.mark.parametrize(("title", "text", "expected"), EDGE_PAGES, ids=[p[0] for p in EDGE_PAGES])
def test_edge_cases(title, text, expected):
    got = wikitext.plain_text(text)
    assert got.text.split() == expected.split()
    assert got.unbalanced == (title in ("Unclosed", "Stray"))
    assert not got.disambiguation


def test_disambiguation_names():
    for name in ("Disambiguation", "disambig", "Template:Dab", " hndis ", "Set_index_article"):
        assert wikitext.is_disambiguation(name), name
    for name in ("Disambiguation needed", "dn", "cite web", "Infobox"):
        assert not wikitext.is_disambiguation(name), name
    page = wikitext.plain_text("'''X''' may refer to:\n* [[X (band)]]\n{{disambiguation|geo}}")
    assert page.disambiguation and page.text.split() == "X may refer to: X (band)".split()


def test_dump_namespace_names_drop_links():
    """A German dump's Datei:/Kategorie: links go like File:/Category:, from its siteinfo."""
    text = "Ein Satz.[[Datei:Bild.jpg|mini|Bildtext]]\n[[Kategorie:Orte]] [[Bild:Alt.png]]"
    names = {-2: "Medium", 0: "", 6: "Datei", 14: "Kategorie"}
    prefixes = wiki.link_prefixes({str(k): v for k, v in names.items()})
    assert wikitext.plain_text(text, prefixes).text.split() == ["Ein", "Satz.", "Bild:Alt.png"]
    xml = dump_xml([("Ort", 0, False, text)], namespaces=names)
    for parser in wiki.PARSERS:
        docs, _ = read_xml(xml, parser)
        assert docs == ["Ein Satz.\nBild:Alt.png"], parser


def read_xml(xml: str, parser: str, tmp=None) -> tuple[list[str], ReadStats]:
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "dump.xml"
        path.write_text(xml, encoding="utf-8")
        return read(path, wiki_parser=parser)


# ---------------------------------------------------------------- reading a dump


def test_both_parsers_skip_and_count_alike(pages):
    """Articles out; redirects, talk/template pages and disambiguation pages skipped by
    reason; the fast parser's documents have the oracle's words."""
    xml = dump_xml(pages)
    fast, fast_stats = read_xml(xml, "fast")
    oracle, oracle_stats = read_xml(xml, "mwparserfromhell")
    assert [d.split() for d in fast] == [d.split() for d in oracle]
    assert fast_stats.skipped == oracle_stats.skipped
    expected = {
        "wiki_redirect": sum(1 for p in pages if p[2]),
        "wiki_namespace": sum(1 for p in pages if p[1] != 0),
        "wiki_disambiguation": sum(1 for p in pages if "may refer to" in p[3]),
    }
    assert fast_stats.skipped == expected and all(expected.values())
    assert fast_stats.documents == len(pages) - sum(expected.values())


def test_unbalanced_markup_is_counted_and_kept():
    edge = [(t, 0, False, text) for t, text, _ in EDGE_PAGES]
    docs, stats = read_xml(dump_xml(edge), "fast")
    assert stats.wiki_unbalanced_markup == 2 and len(docs) == len(EDGE_PAGES)
    assert "The rest of the page stays." in docs[0]


def test_unknown_parser_is_an_error(tmp_path):
    with pytest.raises(ValueError, match=r"data.wiki_parser='wtf' is not one of"):
        DataConfig(wiki_parser="wtf")
    path = tmp_path / "d.xml"
    path.write_text(dump_xml([]))
    with pytest.raises(ValueError, match="wiki_parser"):
        read(path, wiki_parser="wtf")


# ---------------------------------------------------------------- multistream


def write_multistream(folder, pages, index: bool = True, per: int = 10):
    dump, idx = multistream(pages, per=per)
    path = folder / "enwiki-20260101-pages-articles-multistream.xml.bz2"
    path.write_bytes(dump)
    if index:
        (folder / "enwiki-20260101-pages-articles-multistream-index.txt.bz2").write_bytes(idx)
    return path


def read_parts(parts, path) -> tuple[list[str], ReadStats]:
    docs, total = [], ReadStats()
    for part in parts:
        stats = ReadStats()
        docs += wiki.read_wiki_part(Source("wiki", str(path)), part, stats, False)
        stages.merge_read_stats(total, stats)
    return docs, total


@pytest.mark.parametrize("index", [True, False], ids=["index", "magic-scan"])
def test_multistream_parts_read_as_the_whole(tmp_path, pages, index):
    """Parts of whole streams (cut points from the index, or found by the bz2 magic) give the
    whole file's documents in order and its counts (one file, its size)."""
    path = write_multistream(tmp_path, pages, index=index)
    size = path.stat().st_size
    assert (wiki.index_path(path) is not None) == index
    whole, whole_stats = read(path)
    parts = wiki.plan_parts(path, part_bytes=size // 5)
    assert parts is not None and 4 <= len(parts) <= 6
    assert parts[0].start == 0 and parts[-1].end == size and parts[-1].last
    assert all(a.end == b.start for a, b in itertools.pairwise(parts))
    docs, stats = read_parts(parts, path)
    assert docs == whole and len(docs) > 100
    assert dataclasses.asdict(stats) == dataclasses.asdict(whole_stats)
    assert stats.files == 1 and stats.input_bytes == size


def test_index_and_magic_scan_cut_alike(tmp_path, pages):
    with_index = write_multistream(tmp_path, pages, index=True)
    cuts = [p.start for p in wiki.plan_parts(with_index, part_bytes=20_000)]
    other = tmp_path / "other"
    other.mkdir()
    without = write_multistream(other, pages, index=False)
    assert [p.start for p in wiki.plan_parts(without, part_bytes=20_000)] == cuts


def test_files_read_whole(tmp_path, pages):
    """Small files, single-stream .bz2, .xml and .gz are one task each."""
    xml = dump_xml(pages[:50]).encode()
    single = tmp_path / "single.xml.bz2"
    single.write_bytes(bz2.compress(xml))
    assert wiki.plan_parts(single, part_bytes=1000) is None
    plain = tmp_path / "plain.xml"
    plain.write_bytes(xml)
    assert wiki.plan_parts(plain, part_bytes=1000) is None
    multi = write_multistream(tmp_path, pages)
    assert wiki.plan_parts(multi) is None  # smaller than PART_BYTES


def test_truncated_part_names_the_stream(tmp_path, pages):
    path = write_multistream(tmp_path, pages)
    parts = wiki.plan_parts(path, part_bytes=path.stat().st_size // 3)
    cut = dataclasses.replace(parts[1], end=parts[1].end - 100)
    with pytest.raises(CorruptInputError, match=r"multistream\.xml\.bz2: the bz2 stream at byte"):
        list(wiki.read_wiki_part(Source("wiki", str(path)), cut, ReadStats(), True))
    stats = ReadStats()
    list(wiki.read_wiki_part(Source("wiki", str(path)), cut, stats, False))
    assert stats.corrupt_files == 1 and "ends early" in stats.problems[0], stats.problems


def test_plan_tasks_splits_a_multistream_dump(tmp_path, pages, monkeypatch):
    """plan_tasks makes one task per part; read_batches over them equals the unsplit read."""
    path = write_multistream(tmp_path, pages)
    cfg = DataConfig(sources=f"wiki:{path}")
    whole = stages.plan_tasks(cfg)
    assert len(whole) == 1 and whole[0].part is None
    monkeypatch.setattr(wiki, "PART_BYTES", path.stat().st_size // 4)
    split = stages.plan_tasks(cfg)
    assert len(split) >= 3 and all(t.part is not None for t in split)
    assert [t.index for t in split] == list(range(len(split)))
    options = stages.reader_options(cfg)

    def texts(tasks):
        return [d for t in tasks for b in stages.read_batches(t, options) for d in b.texts]

    assert texts(split) == texts(whole)
