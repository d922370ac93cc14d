"""Tests for jaxgpt/data/encoding.py: a dump in UTF-16/32 (with and without a byte-order
mark), UTF-8 with a mark, or Latin-1 by its XML declaration gives the UTF-8 dump's documents
and a note naming the file and encoding; text and JSONL files honor a byte-order mark, and
with data.detect_encoding a BOM-less file in another encoding is decoded by charset-normalizer
(else its bad bytes are replaced and counted, the file named)."""

from __future__ import annotations

import json

import pytest
from wiki_fixtures import dump_xml, encodings, generate_pages

from jaxgpt.data import encoding
from jaxgpt.data import sources as sources_lib

FRENCH = (
    "Le château se trouve près de la rivière. Les élèves étudient l'histoire de la région, où "
    "l'on parle français depuis des siècles. Après le déjeuner, nous irons à la forêt voir les "
    "arbres centenaires et les fleurs qui poussent là-bas en été.\n"
)


def read(spec: str, **kwargs) -> tuple[list[str], sources_lib.ReadStats]:
    stats = sources_lib.ReadStats()
    docs = list(sources_lib.iter_documents(sources_lib.parse_sources(spec), stats, **kwargs))
    return docs, stats


@pytest.fixture(scope="module")
def dump() -> str:
    return dump_xml(generate_pages(40, seed=5))


def test_sniff_xml():
    xml = "<mediawiki>"
    assert encoding.sniff_xml(xml.encode("utf-16")) == ("utf-16-le", 2, "byte-order mark")
    assert encoding.sniff_xml(xml.encode("utf-32"))[:2] == ("utf-32-le", 4)
    assert encoding.sniff_xml(xml.encode("utf-32-be"))[0] == "utf-32-be"
    assert encoding.sniff_xml(xml.encode("utf-16-be"))[0] == "utf-16-be"
    assert encoding.sniff_xml(b'<?xml version="1.0" encoding="ISO-8859-1"?>')[0] == "iso-8859-1"
    assert encoding.sniff_xml(b"\xef\xbb\xbf<m>") == ("utf-8", 3, "byte-order mark")
    assert encoding.sniff_xml(b"<mediawiki>") == ("utf-8", 0, "default")


@pytest.mark.parametrize(
    "name",
    [
        "utf-8-bom",
        "utf-16-bom",
        "utf-16-le",
        "utf-16-be",
        "utf-32-bom",
        "utf-32-le",
        "latin-1-declared",
    ],
)
def test_dump_in_any_encoding_gives_the_utf8_documents(tmp_path, dump, name):
    reference = tmp_path / "utf8.xml"
    reference.write_bytes(encodings(dump)["utf-8"])
    expected, _ = read(f"wiki:{reference}")
    path = tmp_path / f"{name}.xml"
    path.write_bytes(encodings(dump)[name])
    docs, stats = read(f"wiki:{path}")
    assert docs == expected and len(docs) > 10
    assert stats.bad_utf8 == 0 and stats.corrupt_files == 0
    codec = {"latin-1-declared": "ISO8859-1", "utf-8-bom": "UTF-8", "utf-16-bom": "UTF-16-LE",
             "utf-32-bom": "UTF-32-LE"}  # fmt: skip
    codec = codec.get(name, name.replace("-bom", "").upper())
    assert any(p.startswith(f"{path}: decoded as {codec} (") for p in stats.problems), stats


def test_bad_bytes_in_utf16_dump(tmp_path, dump):
    data = bytearray(encodings(dump)["utf-16-le"])
    at = data.index("Talk:".encode("utf-16-le"))
    data[at : at + 2] = b"\x00\xd8"  # a lone high surrogate
    path = tmp_path / "bad.xml"
    path.write_bytes(bytes(data))
    _, stats = read(f"wiki:{path}")
    assert stats.bad_utf8_files == 1
    assert f"{path}: 1 invalid UTF-16-LE sequence(s) replaced" in stats.problems
    with pytest.raises(ValueError, match=r"bad\.xml: not valid UTF-16-LE at byte"):
        read(f"wiki:{path}", strict=True)


def test_unknown_declared_encoding(tmp_path):
    path = tmp_path / "odd.xml"
    path.write_bytes(b'<?xml version="1.0" encoding="x-martian"?>\n<mediawiki></mediawiki>')
    with pytest.raises(ValueError, match=r"odd\.xml: .*encoding 'x-martian'.*convert"):
        read(f"wiki:{path}")


# ---------------------------------------------------------------- text and JSONL


@pytest.mark.parametrize("codec", ["utf-8-sig", "utf-16", "utf-32"])
def test_text_with_byte_order_mark(tmp_path, codec):
    path = tmp_path / "a.txt"
    path.write_bytes(FRENCH.encode(codec))
    docs, stats = read(f"text:{path}")
    assert docs == [FRENCH] and stats.bad_utf8 == 0
    assert "decoded as" in stats.problems[0] and str(path) in stats.problems[0]


def test_text_not_utf8_detected_or_replaced(tmp_path):
    path = tmp_path / "latin.txt"
    path.write_bytes(FRENCH.encode("cp1252"))
    docs, stats = read(f"text:{path}", detect_encoding=True)
    assert docs == [FRENCH] and stats.bad_utf8 == 0
    assert stats.problems == [f"{path}: decoded as CP1252 (detected)"]
    docs, stats = read(f"text:{path}")
    assert "\ufffd" in docs[0] and stats.bad_utf8_files == 1
    assert stats.problems[0].startswith(f"{path}: not valid UTF-8 at byte 5")
    with pytest.raises(ValueError, match=r"latin\.txt: not valid UTF-8 at byte 5"):
        read(f"text:{path}", strict=True)


def jsonl(texts: list[str]) -> str:
    return "".join(json.dumps({"text": t}, ensure_ascii=False) + "\n" for t in texts)


@pytest.mark.parametrize("codec", ["utf-8-sig", "utf-16", "utf-32", "utf-32-be"])
def test_jsonl_with_byte_order_mark(tmp_path, codec):
    """A mark used to make the first line invalid JSON; now every line reads."""
    texts = [FRENCH, "Zürich, Łódź", "plain"]
    path = tmp_path / "a.jsonl"
    mark = b"\x00\x00\xfe\xff" if codec == "utf-32-be" else b""  # "utf-32-be" writes none
    path.write_bytes(mark + jsonl(texts).encode(codec))
    docs, stats = read(f"jsonl:{path}")
    assert docs == texts and stats.bad_json_lines == 0 and stats.bad_utf8 == 0


def test_jsonl_not_utf8_detected_or_counted(tmp_path):
    """A detector guesses: on this file charset-normalizer finds cp1252 (on two copies of the
    text it picks cp1250, a neighbour: docs/data.md says to convert files of known encoding)."""
    texts = [FRENCH, "ascii only"]
    path = tmp_path / "latin.jsonl"
    path.write_bytes(jsonl(texts).encode("cp1252"))
    docs, stats = read(f"jsonl:{path}", detect_encoding=True)
    assert docs == texts and stats.bad_utf8 == 0
    assert stats.problems == [f"{path}: decoded as CP1252 (detected)"]
    docs, stats = read(f"jsonl:{path}")
    assert stats.bad_utf8_lines == 1 and docs[1] == "ascii only"
    assert stats.problems[0].startswith(f"{path}:1: not valid UTF-8")
