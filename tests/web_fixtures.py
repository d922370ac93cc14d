"""Web inputs built in code (no downloads at test time): WARC files as a crawler writes them,
written with warcio, and the pages they hold.

Each page wraps an <article> in the boilerplate real pages have (navigation, a sidebar, script,
style, a footer with the privacy policy), so a test can check that the extractor kept the one
and dropped the other. The charsets are the cases of the WARC reader's chain: declared in the
HTTP header, only in a <meta> tag, in neither (left to the detector), and a UTF-16 page.
"""

from __future__ import annotations

import gzip
import io
from pathlib import Path

BOILERPLATE = ("Privacy policy", "Related articles", "Subscribe to our newsletter", "var x")


def page(title: str, paragraphs: list[str], meta_charset: str = "") -> str:
    """An HTML page: one article of paragraphs inside navigation, sidebar, script and footer."""
    meta = f'<meta charset="{meta_charset}">' if meta_charset else ""
    body = "".join(f"<p>{p}</p>" for p in paragraphs)
    return (
        f"<!DOCTYPE html><html><head>{meta}<title>{title}</title>"
        "<style>body { color: red; }</style><script>var x = 1;</script></head><body>"
        '<nav><ul><li><a href="/">Home</a></li><li><a href="/news">News</a></li>'
        '<li><a href="/about">About us</a></li></ul></nav>'
        '<div class="sidebar"><h3>Related articles</h3><ul><li><a href="/a">Other story</a>'
        "</li><li><a href='/b'>Another story</a></li></ul></div>"
        f"<main><article><h1>{title}</h1>{body}</article></main>"
        '<footer><a href="/privacy">Privacy policy</a> | <a href="/terms">Terms</a> | '
        "Subscribe to our newsletter</footer></body></html>"
    )


ENGLISH = [
    "The river rose through the night and by morning the old bridge was under water.",
    "Farmers along the valley moved their animals to higher ground before the rain came.",
    "Officials said the water would fall again within two days if the weather held.",
]
GERMAN = [
    "Der Fluss stieg in der Nacht, und am Morgen stand die alte Brücke unter Wasser.",
    "Die Bauern im Tal brachten ihre Tiere vor dem Regen auf höheres Gelände.",
]
JAPANESE = ["東京の天気は晴れです。", "明日は雨が降るでしょう。川の水位が上がっています。"]
RUSSIAN = [
    "Река поднималась всю ночь, и к утру старый мост оказался под водой.",
    "Фермеры в долине перегнали скот на возвышенность до начала дождя.",
    "Власти сообщили, что вода спадёт через два дня, если погода не изменится.",
]
FRENCH = ["Le café de la gare ouvre à six heures.", "Les élèves déjeunent à midi et demi."]

# (uri, status line, Content-Type header, body bytes, extra HTTP headers, what a reader keeps)
PAGES = {
    "utf8": ("https://example.com/flood", "200 OK", "text/html; charset=utf-8",
             page("Flood", ENGLISH).encode("utf-8"), [], ENGLISH),
    "meta_cp1252": ("https://example.fr/cafe", "200 OK", "text/html",
                    page("Café", FRENCH, meta_charset="windows-1252").encode("cp1252"), [],
                    FRENCH),
    "shift_jis": ("https://example.jp/tenki", "200 OK", "text/html; charset=Shift_JIS",
                  page("天気", JAPANESE).encode("shift_jis"), [], JAPANESE),
    "koi8_r": ("https://example.ru/reka", "200 OK", "text/html",
               page("Река", RUSSIAN * 3).encode("koi8-r"), [], RUSSIAN),
    "utf16": ("https://example.de/fluss", "200 OK", "text/html; charset=utf-16",
              page("Fluss", GERMAN).encode("utf-16"), [], GERMAN),
    "gzip": ("https://example.com/gzipped", "200 OK", "text/html; charset=utf-8",
             gzip.compress(page("Gzipped", ENGLISH[:2]).encode()),
             [("Content-Encoding", "gzip")], ENGLISH[:2]),
}  # fmt: skip
# Records a reader must skip, with the reason it counts.
SKIPPED = {
    "not_found": ("https://example.com/missing", "404 Not Found", "text/html",
                  page("Not found", ["This page does not exist."]).encode(), [],
                  "warc_status_4xx"),
    "moved": ("https://example.com/old", "301 Moved Permanently", "text/html", b"",
              [("Location", "https://example.com/new")], "warc_status_3xx"),
    "image": ("https://example.com/logo.jpg", "200 OK", "image/jpeg",
              b"\xff\xd8\xff\xe0" + bytes(200), [], "warc_not_html"),
    "empty": ("https://example.com/blank", "200 OK", "text/html",
              b"<html><head><title>x</title></head><body><script>1</script></body></html>", [],
              "warc_empty_extraction"),
}  # fmt: skip


def write_warc(path: Path, pages: dict | None = None, skipped: dict | None = None,
               gzip_records: bool = True, revisit: bool = True) -> Path:  # fmt: skip
    """A WARC as a crawler writes it: warcinfo, then per page a request and its response;
    the skipped records (404, 301, an image, an empty page) and a revisit among them."""
    from warcio.statusandheaders import StatusAndHeaders
    from warcio.warcwriter import WARCWriter

    pages = PAGES if pages is None else pages
    skipped = SKIPPED if skipped is None else skipped
    with open(path, "wb") as fh:
        writer = WARCWriter(fh, gzip=gzip_records)
        info = {"software": "jaxgpt-test", "description": "tiny WARC"}
        writer.write_record(writer.create_warcinfo_record(path.name, info))
        for uri, status, ctype, body, extra, _ in [*pages.values(), *skipped.values()]:
            request = StatusAndHeaders(
                f"GET {uri} HTTP/1.1", [("Host", "example")], is_http_request=True
            )
            writer.write_record(writer.create_warc_record(uri, "request", http_headers=request))
            headers = StatusAndHeaders(
                status, [("Content-Type", ctype), *extra], protocol="HTTP/1.1"
            )
            record = writer.create_warc_record(
                uri, "response", payload=io.BytesIO(body), http_headers=headers
            )
            writer.write_record(record)
        if revisit:
            uri = PAGES["utf8"][0]
            headers = StatusAndHeaders(
                "200 OK", [("Content-Type", "text/html")], protocol="HTTP/1.1"
            )
            record = writer.create_revisit_record(uri, "sha1:AAAA", uri, "2026-11-28T00:00:00Z",
                                                  http_headers=headers)  # fmt: skip
            writer.write_record(record)
    return path
