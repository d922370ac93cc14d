"""Tests for jaxgpt/data/sources.py, inputs.py and readers.py: every source kind, and bad input.

Every input is built here in tmp_path (nothing is downloaded): JSONL in plain/.gz/.bz2/.zst, a
hand-written MediaWiki export, WET files written with warcio, and a tiny TFDS dataset prepared
offline.
"""

import bz2
import gzip
import hashlib
import json
import re
from pathlib import Path

import pytest
import zstandard
from data_inputs import WIKI_PAGES, WIKI_TEXTS, wiki_xml, write_wet

from jaxgpt.data import readers, wiki
from jaxgpt.data import sources as sources_lib

COMPRESS = {
    "": lambda data: data,
    ".gz": gzip.compress,
    ".bz2": bz2.compress,
    ".zst": lambda data: zstandard.ZstdCompressor().compress(data),
}


def read(spec: str, **kwargs) -> tuple[list[str], sources_lib.ReadStats]:
    stats = sources_lib.ReadStats()
    docs = list(sources_lib.iter_documents(sources_lib.parse_sources(spec), stats, **kwargs))
    return docs, stats


def write_jsonl(path: Path, lines: list[str | bytes]) -> Path:
    """Lines exactly as given, compressed by the file's suffix."""
    raw = b"".join(line.encode() if isinstance(line, str) else line for line in lines)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(COMPRESS[path.suffix if path.suffix in COMPRESS else ""](raw))
    return path


def jsonl_lines(texts: list[str], field: str = "text") -> list[str]:
    return [json.dumps({field: t, "id": i}) + "\n" for i, t in enumerate(texts)]


# ---------------------------------------------------------------- specs


def test_parse_sources_new_kinds(tmp_path):
    """Every kind parses; tfds names a dataset, not a path, so nothing is checked on disk."""
    data = write_jsonl(tmp_path / "a.jsonl", jsonl_lines(["x"]))
    got = sources_lib.parse_sources(f"jsonl:{data}, tfds:wiki40b/en:validation, tfds:lm1b")
    assert got == [
        sources_lib.Source("jsonl", str(data)),
        sources_lib.Source("tfds", "wiki40b/en:validation"),
        sources_lib.Source("tfds", "lm1b"),
    ]
    assert got[1].spec == "tfds:wiki40b/en:validation"
    assert readers.parse_tfds_spec("lm1b") == ("lm1b", "train")
    assert readers.parse_tfds_spec("c4/en:validation[:1%]") == ("c4/en", "validation[:1%]")
    with pytest.raises(ValueError, match=r"tfds:NAME\[/CONFIG\]\[:SPLIT\]"):
        sources_lib.parse_sources("tfds:not a name")
    with pytest.raises(ValueError, match=r"'arc'.*known kinds.*jsonl.*tfds.*warc.*wet.*wiki"):
        sources_lib.parse_sources("arc:/tmp/x")
    for kind in ("jsonl", "wiki", "wet"):
        with pytest.raises(FileNotFoundError, match=r"nowhere/x"):
            sources_lib.parse_sources(f"{kind}:{tmp_path}/nowhere/x*")


def test_folder_takes_the_kinds_own_files(tmp_path):
    """A folder gives each kind its own file types; a folder with none is a clear error."""
    folder = tmp_path / "mixed"
    write_jsonl(folder / "a.jsonl", jsonl_lines(["from a"]))
    write_jsonl(folder / "sub" / "b.jsonl.zst", jsonl_lines(["from b"]))
    (folder / "notes.txt").write_text("a text file")
    docs, stats = read(f"jsonl:{folder}")
    assert docs == ["from a", "from b"] and stats.files == 2
    assert read(f"text:{folder}")[0] == ["a text file"]
    with pytest.raises(FileNotFoundError, match=r"wet:.*mixed has no input files.*\.warc\.wet"):
        read(f"wet:{folder}")


# ---------------------------------------------------------------- jsonl


@pytest.mark.parametrize("suffix", ["", ".gz", ".bz2", ".zst"])
def test_jsonl_compressed(tmp_path, suffix):
    """JSONL reads the same plain or compressed; counts documents, bytes and files."""
    texts = ["first document", "zweites Dokument: naïve 東京", "line one\nline two\r\n"]
    path = write_jsonl(tmp_path / f"data.jsonl{suffix}", jsonl_lines(texts))
    docs, stats = read(f"jsonl:{path}")
    assert docs == texts
    assert stats.documents == 3 and stats.files == 1
    assert stats.bytes == sum(len(t.encode()) for t in texts)
    assert stats.input_bytes == path.stat().st_size
    assert stats.docs_by_source == {f"jsonl:{path}": 3}
    assert stats.problems == [] and stats.bad_json_lines == stats.missing_field_lines == 0


def test_jsonl_custom_field_and_glob(tmp_path):
    """jsonl_field picks the text field; a glob reads several files in sorted order."""
    write_jsonl(tmp_path / "b.jsonl.gz", jsonl_lines(["b0", "b1"], field="content"))
    write_jsonl(tmp_path / "a.jsonl", jsonl_lines(["a0"], field="content"))
    docs, stats = read(f"jsonl:{tmp_path}/*.jsonl*", jsonl_field="content")
    assert docs == ["a0", "b0", "b1"] and stats.files == 2
    _, stats = read(f"jsonl:{tmp_path}/a.jsonl")  # default field "text" is missing
    assert stats.missing_field_lines == 1 and stats.documents == 0
    assert "no 'text' field (data.jsonl_field)" in stats.problems[0]


BAD_LINES = [
    (b"{not json}\n", "bad_json_lines", "invalid JSON"),
    (b'["a", "list"]\n', "bad_json_lines", "not a JSON object"),
    (b'{"other": "x"}\n', "missing_field_lines", "no 'text' field"),
    (b'{"text": 42}\n', "missing_field_lines", "'text' is not a string"),
    (b'{"text": "caf\xe9"}\n', "bad_utf8_lines", "not valid UTF-8 at byte 13"),
]


def test_jsonl_bad_lines_counted_with_file_and_line(tmp_path):
    """Bad lines are skipped and counted, each remembered as 'path:line: reason'."""
    lines = [b'{"text": "good one"}\n', b"\n"]  # a blank line is neither a doc nor a problem
    lines += [bad for bad, _, _ in BAD_LINES]
    lines += [b'{"text": ""}\n', b'{"text": "good two"}']  # last line without a newline
    path = write_jsonl(tmp_path / "mixed.jsonl.gz", lines)
    docs, stats = read(f"jsonl:{path}")
    # The bad-UTF-8 line is repaired, not dropped; the empty text is skipped on purpose.
    assert docs == ["good one", "caf\ufffd", "good two"]
    assert (stats.bad_json_lines, stats.missing_field_lines, stats.bad_utf8_lines) == (2, 2, 1)
    assert stats.bad_utf8 == 1 and stats.skipped == {"empty": 1}
    assert stats.problem_count == len(stats.problems) == 5
    for lineno, (problem, (_, _, reason)) in enumerate(
        zip(stats.problems, BAD_LINES, strict=True), 3
    ):
        assert problem.startswith(f"{path}:{lineno}: {reason}")


@pytest.mark.parametrize(("line", "reason"), [(b, r) for b, _, r in BAD_LINES])
def test_jsonl_strict_raises_with_file_and_line(tmp_path, line, reason):
    """strict=True fails on the first bad line with path:line and the reason."""
    path = write_jsonl(tmp_path / "data.jsonl", [b'{"text": "ok"}\n', b"\n", line])
    with pytest.raises(ValueError, match=rf"data\.jsonl:3: {re.escape(reason)}.*strict"):
        read(f"jsonl:{path}", strict=True)


def test_problems_are_capped(tmp_path):
    """Only the first MAX_PROBLEMS locations are kept; the counts and problem_count are exact."""
    path = write_jsonl(tmp_path / "bad.jsonl", [b"oops\n"] * 30)
    _, stats = read(f"jsonl:{path}")
    assert stats.bad_json_lines == stats.problem_count == 30
    assert len(stats.problems) == sources_lib.MAX_PROBLEMS
    assert stats.problems[-1].startswith(f"{path}:{sources_lib.MAX_PROBLEMS}: invalid JSON")


@pytest.mark.parametrize("suffix", [".gz", ".bz2", ".zst"])
def test_truncated_compressed_file(tmp_path, suffix):
    """A cut-off compressed file is reported by name; documents before the cut are kept."""
    texts = [f"document number {i} " + "filler " * (i % 13) for i in range(3000)]
    whole = write_jsonl(tmp_path / f"whole.jsonl{suffix}", jsonl_lines(texts))
    cut = tmp_path / f"cut.jsonl{suffix}"
    cut.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    docs, stats = read(f"jsonl:{cut}")
    assert docs == texts[: len(docs)] and len(docs) < len(texts)
    assert stats.corrupt_files == 1
    assert re.search(rf"cut\.jsonl{re.escape(suffix)}: truncated or corrupt", stats.problems[-1])
    with pytest.raises(ValueError, match=rf"cut\.jsonl{re.escape(suffix)}: truncated or corrupt"):
        read(f"jsonl:{cut}", strict=True)


def test_corrupt_gzip_is_named(tmp_path):
    """Garbage inside a .gz is reported with the file name, not as a bare zlib error."""
    path = tmp_path / "bad.jsonl.gz"
    data = bytearray(gzip.compress(b"".join(s.encode() for s in jsonl_lines(["x" * 50] * 2000))))
    data[len(data) // 2 : len(data) // 2 + 8] = b"\xff" * 8
    path.write_bytes(bytes(data))
    with pytest.raises(ValueError, match=r"bad\.jsonl\.gz: truncated or corrupt compressed data"):
        read(f"jsonl:{path}", strict=True)
    _, stats = read(f"jsonl:{path}")
    assert stats.corrupt_files == 1


# ---------------------------------------------------------------- wiki


@pytest.mark.parametrize("suffix", [".xml", ".xml.bz2"])
def test_wiki_dump(tmp_path, suffix):
    """Article pages become plain text; redirects, talk pages and empty pages are skipped."""
    path = tmp_path / f"enwiki-pages{suffix}"
    path.write_bytes(COMPRESS[".bz2" if suffix.endswith("bz2") else ""](wiki_xml()))
    docs, stats = read(f"wiki:{path}")
    assert docs == WIKI_TEXTS
    assert stats.skipped == {"wiki_redirect": 1, "wiki_namespace": 1, "empty": 1}
    assert stats.files == 1 and stats.documents == 2 and stats.problems == []


@pytest.mark.parametrize("parser", ["fast", "mwparserfromhell"])
def test_wikitext_to_text_drops_markup(parser):
    """No markup, template, reference, table, file, category or language link survives."""
    text = wiki.wikitext_to_text(WIKI_PAGES[0][3], parser)
    for leftover in ("{{", "[[", "'''", "cite", "plain reference", "Category", "Portrait",
                     "1815", "Born", "de:", "__TOC__", "hidden", "https", "=="):  # fmt: skip
        assert leftover not in text, leftover


def test_wiki_old_dump_without_ns_elements(tmp_path):
    """Dumps older than export-0.6 have no <ns>: the title prefix decides the namespace."""
    xml = wiki_xml().replace(b"export-0.10/", b"export-0.3/")
    xml = re.sub(rb"\s*<ns>\d+</ns>", b"", xml)
    xml = re.sub(rb'\s*<redirect title="[^"]*" />', b"", xml)
    path = tmp_path / "old.xml"
    path.write_bytes(xml)
    docs, stats = read(f"wiki:{path}")
    assert docs == WIKI_TEXTS
    assert stats.skipped == {"wiki_redirect": 1, "wiki_namespace": 1, "empty": 1}


def test_wiki_bad_utf8_and_truncation(tmp_path):
    """Bad bytes are replaced and the file counted (strict names it); cut-off XML is reported."""
    path = tmp_path / "bad.xml"
    path.write_bytes(wiki_xml(text_bytes=b" caf\xe9"))
    docs, stats = read(f"wiki:{path}")
    assert "raised there caf\ufffd" in docs[0] and stats.bad_utf8_files == 1
    assert stats.problems == [f"{path}: 1 invalid UTF-8 sequence(s) replaced"]
    with pytest.raises(ValueError, match=r"bad\.xml: not valid UTF-8 at byte"):
        read(f"wiki:{path}", strict=True)

    cut = tmp_path / "cut.xml"
    xml = wiki_xml()
    cut.write_bytes(xml[: xml.index(b"<title>Second")])
    docs, stats = read(f"wiki:{cut}")
    assert docs == WIKI_TEXTS[:1] and stats.corrupt_files == 1
    assert re.match(rf"{re.escape(str(cut))}: malformed or truncated XML", stats.problems[0])
    with pytest.raises(ValueError, match=r"cut\.xml: malformed or truncated XML"):
        read(f"wiki:{cut}", strict=True)


# ---------------------------------------------------------------- wet

WET_RECORDS = [
    ("https://example.com/a", b"First page text.\nSecond line of page a.\n"),
    ("https://example.org/b", "Zweite Seite: naïve 東京\n".encode()),
    ("https://example.net/c", b"Third page, latin-1 caf\xe9\n"),
]


@pytest.mark.parametrize("name", ["crawl.warc.wet.gz", "crawl.warc.wet"])
def test_wet(tmp_path, name):
    """Each conversion record is a document; bad UTF-8 is replaced and counted per record."""
    path = write_wet(tmp_path / name, WET_RECORDS, gzip_records=name.endswith(".gz"))
    docs, stats = read(f"wet:{path}")
    assert docs == [
        "First page text.\nSecond line of page a.\n",
        "Zweite Seite: naïve 東京\n",
        "Third page, latin-1 caf\ufffd\n",
    ]
    assert stats.documents == 3 and stats.bad_utf8_records == 1 and stats.files == 1
    assert stats.problems == [f"{path}: record https://example.net/c: not valid UTF-8 at byte 23"]
    with pytest.raises(ValueError, match=r"crawl\.warc\.wet.*example\.net/c.*UTF-8"):
        read(f"wet:{path}", strict=True)


@pytest.mark.parametrize("name", ["crawl.warc.wet.gz", "crawl.warc.wet"])
def test_wet_truncated(tmp_path, name):
    """A cut-off WET file is reported by name (warcio alone would stop silently)."""
    records = [(f"https://example.com/{i}", f"page {i} ".encode() * 300) for i in range(6)]
    whole = write_wet(tmp_path / f"whole-{name}", records, gzip_records=name.endswith(".gz"))
    cut = tmp_path / name
    cut.write_bytes(whole.read_bytes()[: whole.stat().st_size * 2 // 3])
    docs, stats = read(f"wet:{cut}")
    assert docs == [p.decode() for _, p in records[: len(docs)]] and len(docs) < 6
    assert stats.corrupt_files == 1 and str(cut) in stats.problems[0]
    with pytest.raises(ValueError, match=re.escape(str(cut))):
        read(f"wet:{cut}", strict=True)


# ---------------------------------------------------------------- tfds

TFDS_TRAIN = ["first tfds document", "second: naïve 東京", "third"]


@pytest.fixture(scope="module")
def tfds_dir(tmp_path_factory) -> Path:
    """A tiny text dataset prepared offline; its builder is not registered, as on a machine
    that received a prepared data_dir without the dataset's code."""
    import tensorflow_datasets as tfds

    class JaxgptTinyText(tfds.core.GeneratorBasedBuilder, skip_registration=True):
        VERSION = tfds.core.Version("1.0.0")

        def _info(self):
            features = {"text": tfds.features.Text(), "title": tfds.features.Text()}
            return tfds.core.DatasetInfo(
                builder=self, features=tfds.features.FeaturesDict(features)
            )

        def _split_generators(self, dl_manager):
            return {
                "train": self._generate_examples([*TFDS_TRAIN, b"caf\xe9", ""]),
                "validation": self._generate_examples(["held-out document"]),
            }

        def _generate_examples(self, texts):
            for i, text in enumerate(texts):
                yield i, {"text": text, "title": f"title {i}"}

    data_dir = tmp_path_factory.mktemp("tfds")
    JaxgptTinyText(data_dir=str(data_dir)).download_and_prepare()
    return data_dir


def test_tfds_reads_prepared_dataset(tfds_dir, monkeypatch):
    """Splits and the text feature are read from the local data_dir, with no network."""
    docs, stats = read("tfds:jaxgpt_tiny_text", tfds_data_dir=str(tfds_dir))
    assert sorted(docs) == sorted([*TFDS_TRAIN, "caf\ufffd"])
    assert stats.bad_utf8_records == 1 and stats.skipped == {"empty": 1}
    assert "tfds:jaxgpt_tiny_text:train example" in stats.problems[0]
    assert stats.docs_by_source == {"tfds:jaxgpt_tiny_text": 4}
    monkeypatch.setenv("TFDS_DATA_DIR", str(tfds_dir))  # the default data_dir
    assert read("tfds:jaxgpt_tiny_text:validation")[0] == ["held-out document"]
    titles, _ = read("tfds:jaxgpt_tiny_text:train[:2]", tfds_text_field="title")
    assert len(titles) == 2 and all(t.startswith("title ") for t in titles)
    with pytest.raises(ValueError, match=r"no feature 'body'.*\['text', 'title'\]"):
        read("tfds:jaxgpt_tiny_text", tfds_text_field="body")
    with pytest.raises(ValueError, match=r"no split 'test'.*\['train', 'validation'\]"):
        read("tfds:jaxgpt_tiny_text:test")


@pytest.mark.parametrize("name", ["mnist", "no_such_dataset_xyz"])
def test_tfds_not_prepared_says_how(tmp_path, name):
    """A dataset missing from data_dir (known builder or not) says how to prepare it offline."""
    with pytest.raises(FileNotFoundError) as err:
        read(f"tfds:{name}", tfds_data_dir=str(tmp_path))
    message = str(err.value)
    assert f"not prepared in data_dir {tmp_path}" in message
    assert f"tfds.builder('{name}', data_dir='{tmp_path}').download_and_prepare()" in message
    assert not (tmp_path / "downloads").exists()  # nothing was fetched


# ---------------------------------------------------------------- several sources


def test_counts_by_source(tmp_path):
    """Documents come in spec order; per-source counts add up to the totals."""
    text = tmp_path / "notes.txt"
    text.write_text("a text document")
    jsonl = write_jsonl(tmp_path / "d.jsonl.zst", jsonl_lines(["j0", "j1"]))
    wet = write_wet(tmp_path / "c.warc.wet.gz", WET_RECORDS[:2])
    wiki = tmp_path / "w.xml"
    wiki.write_bytes(wiki_xml())
    spec = f"text:{text},jsonl:{jsonl},wet:{wet},wiki:{wiki}"
    docs, stats = read(spec)
    assert docs[:3] == ["a text document", "j0", "j1"] and docs[-2:] == WIKI_TEXTS
    assert stats.docs_by_source == {
        f"text:{text}": 1,
        f"jsonl:{jsonl}": 2,
        f"wet:{wet}": 2,
        f"wiki:{wiki}": 2,
    }
    assert sum(stats.bytes_by_source.values()) == stats.bytes == sum(len(d.encode()) for d in docs)
    assert stats.documents == len(docs) == 7 and stats.files == 4
    assert stats.input_bytes == sum(p.stat().st_size for p in (text, jsonl, wet, wiki))


# ---------------------------------------------------------------- built-in corpora

# tinyshakespeare.txt as the classic char-level baseline uses it (1,115,394 bytes).
SHAKESPEARE_SHA256 = "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed"


def test_shakespeare_is_the_text_source_of_the_classic_file(tmp_path):
    """The built-in source gives exactly the one document text:FILE gives for that file, so a
    run on it sees the same data (and validation loss) as the classic command line."""
    copy = tmp_path / "tinyshakespeare.txt"
    copy.write_bytes(sources_lib.SHAKESPEARE.read_bytes())
    builtin, stats = read("shakespeare")
    from_file, _ = read(f"text:{copy}")
    assert builtin == from_file and len(builtin) == 1
    raw = copy.read_bytes()
    assert len(raw) == 1_115_394 and hashlib.sha256(raw).hexdigest() == SHAKESPEARE_SHA256
    assert stats.docs_by_source == {"shakespeare": 1} and stats.files == 1
    assert sources_lib.parse_sources("shakespeare") == [sources_lib.Source("shakespeare")]
    assert sources_lib.source_files(sources_lib.Source("shakespeare")) == []
