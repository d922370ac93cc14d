"""Inputs the data tests build: documents on disk, a MediaWiki dump, a WET file; and readers
of a prepared data dir."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np


def write_docs(folder: Path, texts: list[str]) -> Path:
    """One UTF-8 text file per document, named so they sort in order."""
    folder.mkdir(parents=True, exist_ok=True)
    for i, text in enumerate(texts):
        (folder / f"doc_{i:03d}.txt").write_text(text, encoding="utf-8")
    return folder


def decoded_documents(info, split: str) -> list[str]:
    """The split's shards cut at EOT and decoded, in order."""
    tok = info.tokenizer()
    stream = info.tokens(split).read_all()
    assert stream[-1] == info.eot_id
    cuts = np.flatnonzero(stream == info.eot_id)
    return [tok.decode(part[:-1]) for part in np.split(stream, cuts + 1)[:-1]]


def jsonl_texts(path: Path) -> list[str]:
    return [json.loads(line)["text"] for line in path.read_text(encoding="utf-8").splitlines()]


WIKI_PAGES = [
    # (title, ns, redirect, wikitext)
    (
        "Ada Lovelace",
        0,
        False,
        "{{Infobox person|name=Ada|birth={{birth date|1815|12|10}}}}\n"
        "'''Ada Lovelace''' was an ''English'' [[mathematician]] and [[Writer|writer]]."
        '<ref name="b">{{cite book |title=Ada |year=1990}}</ref> She worked on the '
        "[[Analytical Engine]].<ref>A plain reference.</ref>\n"
        "__TOC__\n== Early life ==\n"
        "She was born in [[London]] &amp; raised there.<!-- hidden -->\n"
        "[[File:Ada.jpg|thumb|Portrait of [[Ada Lovelace|Ada]]]]\n"
        '{| class="wikitable"\n|-\n! Year !! Event\n|-\n| 1815 || Born\n|}\n'
        "* an item with [https://example.com an external link]\n"
        "<references />\n[[Category:Mathematicians]]\n[[de:Ada Lovelace]]\n",
    ),
    ("Countess Lovelace", 0, True, "#REDIRECT [[Ada Lovelace]]"),
    ("Talk:Ada Lovelace", 1, False, "This talk page is not an article."),
    ("Stub", 0, False, "{{stub}}\n[[Category:Empty]]"),
    ("Second", 0, False, "A '''second''' article &lt;with&gt; entities."),
]
WIKI_TEXTS = [
    "Ada Lovelace was an English mathematician and writer. She worked on the Analytical "
    "Engine.\n\nEarly life\nShe was born in London & raised there.\n\nan item with an "
    "external link",
    "A second article <with> entities.",
]


def wiki_xml(pages=WIKI_PAGES, text_bytes: bytes = b"") -> bytes:
    """A MediaWiki export-0.10 dump of pages, as real dumps lay it out."""
    out = [
        '<mediawiki xmlns="http://www.mediawiki.org/xml/export-0.10/" '
        'xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" version="0.10" xml:lang="en">\n'
        "  <siteinfo>\n    <sitename>Wikipedia</sitename>\n    <namespaces>\n"
        '      <namespace key="0" case="first-letter" />\n'
        '      <namespace key="1" case="first-letter">Talk</namespace>\n'
        "    </namespaces>\n  </siteinfo>\n"
    ]
    escape = {"&": "&amp;", "<": "&lt;", ">": "&gt;"}
    for i, (title, ns, redirect, text) in enumerate(pages):
        body = "".join(escape.get(c, c) for c in text)
        out.append(
            f"  <page>\n    <title>{title}</title>\n    <ns>{ns}</ns>\n    <id>{i + 1}</id>\n"
            + ('    <redirect title="Ada Lovelace" />\n' if redirect else "")
            + f"    <revision>\n      <id>{100 + i}</id>\n      <model>wikitext</model>\n"
            f'      <text bytes="{len(text)}" xml:space="preserve">{body}</text>\n'
            "    </revision>\n  </page>\n"
        )
    xml = "".join(out).encode()
    return xml.replace(b"raised there", b"raised there" + text_bytes) + b"</mediawiki>\n"


def write_wet(
    path: Path, records: list[tuple[str, str | bytes]], gzip_records: bool = True
) -> Path:
    """A WET file as Common Crawl writes it: a warcinfo record, then conversion records."""
    from warcio.warcwriter import WARCWriter

    with open(path, "wb") as fh:
        writer = WARCWriter(fh, gzip=gzip_records)
        info = {"software": "jaxgpt-test", "description": "tiny WET"}
        writer.write_record(writer.create_warcinfo_record(path.name, info))
        for uri, payload in records:
            record = writer.create_warc_record(
                uri,
                "conversion",
                payload=io.BytesIO(payload.encode() if isinstance(payload, str) else payload),
                warc_headers_dict={"Content-Type": "text/plain"},
            )
            writer.write_record(record)
    return path
