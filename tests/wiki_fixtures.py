"""MediaWiki dumps the wiki tests (and benchmarks/wiki_read.py) build themselves: pages with the
markup real articles carry (infoboxes with nested templates, references with citation
templates, tables, files with captions, categories, interwiki links, comments, math, lists,
headings, entities, link trails), redirects, disambiguation, talk and template pages, edge
cases; dumps laid out as MediaWiki exports them, multistream .bz2 files with their index,
and the same dump in other encodings. Nothing is downloaded."""

from __future__ import annotations

import bz2
import random

WORDS = (
    "river valley castle ancient northern school village music history engine railway "
    "population council church island mountain harbour market bridge province museum "
    "Zürich Málaga naïve café Ørsted Łódź façade Ångström señor déjà"
).split()
TEMPLATE_NAMES = ("cite web", "cite book", "citation needed", "convert", "lang", "nowrap")


def _sentence(rng: random.Random, link: bool = True) -> str:
    words = [rng.choice(WORDS) for _ in range(rng.randint(6, 14))]
    if link and rng.random() < 0.7:
        i = rng.randrange(len(words))
        target = rng.choice(WORDS)
        words[i] = rng.choice(
            [f"[[{words[i]}]]", f"[[{target}|{words[i]}]]", f"[[{words[i][:-1]}]]{words[i][-1]}"]
        )
    if rng.random() < 0.3:
        words[0] = f"'''{words[0]}'''"
    if rng.random() < 0.3:
        words[-1] = f"''{words[-1]}''"
    return " ".join(words).capitalize() + "."


def _infobox(rng: random.Random) -> str:
    lat, lon = rng.randint(0, 89), rng.randint(0, 179)
    return (
        "{{Infobox settlement\n| name = " + rng.choice(WORDS) + "\n"
        f"| coordinates = {{{{coord|{lat}|{lon}|N|E|display=inline,title}}}}\n"
        "| population = {{formatnum:" + str(rng.randint(100, 99999)) + "}}\n"
        "| image = [[File:Town.jpg|200px]]\n}}\n"
    )


def _ref(rng: random.Random) -> str:
    kind = rng.random()
    if kind < 0.4:
        name = rng.choice(TEMPLATE_NAMES[:2])
        return f'<ref name="r{rng.randint(0, 9)}">{{{{{name} |title=Some title |year=1999}}}}</ref>'
    if kind < 0.7:
        return f'<ref name="r{rng.randint(0, 9)}" />'
    return "<ref>A plain reference, with a [https://example.org link].</ref>"


def _table(rng: random.Random) -> str:
    rows = "".join(
        f"|-\n| {{{{sort|{i}|{rng.choice(WORDS)}}}}} || [[{rng.choice(WORDS)}]] || {i * 7}\n"
        for i in range(rng.randint(2, 5))
    )
    head = '{| class="wikitable sortable"\n|+ Caption words\n! Name !! Place !! Count\n'
    return head + rows + "|}\n"


def _paragraph(rng: random.Random) -> str:
    parts = []
    for _ in range(rng.randint(2, 5)):
        parts.append(_sentence(rng))
        if rng.random() < 0.4:
            parts[-1] += _ref(rng)
        if rng.random() < 0.15:
            parts[-1] += "{{" + rng.choice(TEMPLATE_NAMES[2:]) + "|date=May 2020}}"
    if rng.random() < 0.2:
        parts.append("It is 5&nbsp;km &ndash; more or less &amp; so on.")
    if rng.random() < 0.15:
        parts.append("The formula <math>E = mc^2</math> holds.")
    if rng.random() < 0.2:
        parts.append("<!-- an editor's comment with [[links]] -->")
    return " ".join(parts)


def article(rng: random.Random, sections: int = 3) -> str:
    """The wikitext of one generated article."""
    out = []
    if rng.random() < 0.6:
        out.append(_infobox(rng))
    out.append(_paragraph(rng) + "\n")
    for s in range(sections):
        out.append(f"\n== {rng.choice(WORDS).capitalize()} section {s} ==\n")
        out.append(_paragraph(rng) + "\n")
        if rng.random() < 0.3:
            out.append(
                f"[[File:Picture {s}.jpg|thumb|right|A caption about [[{rng.choice(WORDS)}]]]]\n"
            )
        if rng.random() < 0.3:
            out.append(_table(rng))
        if rng.random() < 0.4:
            out.append("".join(f"* {_sentence(rng)}\n" for _ in range(rng.randint(2, 4))))
        if rng.random() < 0.2:
            out.append("=== Subsection ===\n# first point\n# second point\n")
    out.append("\n== References ==\n{{reflist}}\n\n__NOTOC__\n")
    out.append(f"[[Category:{rng.choice(WORDS).capitalize()}s]]\n[[Category:Places]]\n")
    out.append(f"[[de:{rng.choice(WORDS)}]]\n[[fr:{rng.choice(WORDS)}]]\n")
    return "".join(out)


def generate_pages(n: int, seed: int = 0, sections: int = 3) -> list[tuple[str, int, bool, str]]:
    """n pages (title, ns, redirect, wikitext): about 60% articles, 20% redirects, 5%
    disambiguation pages, 10% talk pages, 5% templates."""
    rng = random.Random(seed)
    pages = []
    for i in range(n):
        title = f"{rng.choice(WORDS).capitalize()} {i}"
        roll = rng.random()
        if roll < 0.6:
            pages.append((title, 0, False, article(rng, sections)))
        elif roll < 0.8:
            pages.append((title, 0, True, f"#REDIRECT [[{rng.choice(WORDS)} {i - 1}]]"))
        elif roll < 0.85:
            links = "".join(f"* [[{w} {i}]], a {rng.choice(WORDS)}\n" for w in WORDS[:4])
            name = rng.choice(["disambiguation", "Disambig", "dab", "hndis", "geodis"])
            pages.append((title, 0, False, f"'''{title}''' may refer to:\n{links}{{{{{name}}}}}"))
        elif roll < 0.95:
            pages.append((f"Talk:{title}", 1, False, _paragraph(rng)))
        else:
            pages.append((f"Template:{title}", 10, False, "{{{1}}} and {{{2|default}}}"))
    return pages


# Pages the generator does not make, each with the words the fast stripper must give.
EDGE_PAGES = [
    # Unbalanced: the lone token goes, the text around it stays (MediaWiki shows it as text).
    (
        "Unclosed",
        "Before {{cite web|title=x\nThe rest of the page stays.",
        "Before cite web|title=x\nThe rest of the page stays.",
    ),
    ("Stray", "Words ]] and more }} words.", "Words and more words."),
    (
        "Nowiki",
        "Literal <nowiki>{{not a template}}</nowiki> text.",
        "Literal {{not a template}} text.",
    ),
    ("Pipe in table", "A\n{| class=x\n| a {{!}} b || c\n|}\nB", "A\n\nB"),
    ("Html table", "A <table><tr><td>cell</td></tr></table> B", "A B"),
    (
        "Colon link",
        "See [[:Category:Rivers]] and [[:fr:Paris|Paris]].",
        "See Category:Rivers and Paris.",
    ),
    ("Nested", "{{a|{{b|{{c}}}}}}Text [[File:x.png|thumb|[[a|b]] {{c}}]] here.", "Text here."),
    ("Break", "One<br>two<br />three", "One\ntwo\nthree"),
    ("Poem", "<poem>Line one\nLine two</poem>", "Line one\nLine two"),
    ("Span", 'A <span style="color:red">red</span> word<sup>2</sup>.', "A red word2."),
    ("Not dab", "Text{{disambiguation needed|date=May}} more.", "Text more."),
    (
        "Ext links",
        "[https://a.org] [https://b.org B label] [//c.org C] http://d.org",
        "B label C http://d.org",
    ),
]


def _escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def header(namespaces: dict[int, str] | None = None) -> str:
    """A dump's <mediawiki> start and <siteinfo> (English namespace names by default)."""
    names = namespaces or {-2: "Media", 0: "", 1: "Talk", 6: "File", 10: "Template", 14: "Category"}
    spaces = "".join(
        f'      <namespace key="{k}" case="first-letter">{_escape(v)}</namespace>\n'
        if v
        else f'      <namespace key="{k}" case="first-letter" />\n'
        for k, v in sorted(names.items())
    )
    return (
        '<mediawiki xmlns="http://www.mediawiki.org/xml/export-0.10/" '
        'xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" version="0.10" xml:lang="en">\n'
        "  <siteinfo>\n    <sitename>Wikipedia</sitename>\n    <dbname>enwiki</dbname>\n"
        f"    <namespaces>\n{spaces}    </namespaces>\n  </siteinfo>\n"
    )


def page_xml(i: int, title: str, ns: int, redirect: bool, text: str) -> str:
    """One <page> as dumps write it."""
    return (
        f"  <page>\n    <title>{_escape(title)}</title>\n    <ns>{ns}</ns>\n    <id>{i + 1}</id>\n"
        + (f'    <redirect title="{_escape(title)}" />\n' if redirect else "")
        + f"    <revision>\n      <id>{1000 + i}</id>\n      <model>wikitext</model>\n"
        f"      <format>text/x-wiki</format>\n"
        f'      <text bytes="{len(text.encode())}" xml:space="preserve">{_escape(text)}</text>\n'
        "    </revision>\n  </page>\n"
    )


def dump_xml(pages, namespaces: dict[int, str] | None = None) -> str:
    """A whole pages-articles dump of pages, as text (encode it as the test needs)."""
    body = "".join(page_xml(i, *p) for i, p in enumerate(pages))
    return header(namespaces) + body + "</mediawiki>\n"


def multistream(pages, per: int = 100) -> tuple[bytes, bytes]:
    """(dump, index) as *-pages-articles-multistream.xml.bz2 and its *-index.txt.bz2 are made:
    one bz2 stream for the header, one per `per` pages, one for the footer; index lines
    "offset:page_id:title" give the offset of the stream holding each page."""
    streams, index, offset = [bz2.compress(header().encode())], [], 0
    offset = len(streams[0])
    for start in range(0, len(pages), per):
        chunk = pages[start : start + per]
        xml = "".join(page_xml(start + j, *p) for j, p in enumerate(chunk))
        for j, p in enumerate(chunk):
            index.append(f"{offset}:{start + j + 1}:{p[0]}\n")
        streams.append(bz2.compress(xml.encode()))
        offset += len(streams[-1])
    streams.append(bz2.compress(b"</mediawiki>\n"))
    return b"".join(streams), bz2.compress("".join(index).encode())


def encodings(xml: str) -> dict[str, bytes]:
    """The dump in each encoding a reader must honor, by name."""
    declaration = '<?xml version="1.0" encoding="ISO-8859-1"?>\n'
    declared = xml.replace("<mediawiki", declaration + "<mediawiki", 1)
    return {
        "utf-8": xml.encode(),
        "utf-8-bom": b"\xef\xbb\xbf" + xml.encode(),
        "utf-16-bom": xml.encode("utf-16"),
        "utf-16-le": xml.encode("utf-16-le"),
        "utf-16-be": xml.encode("utf-16-be"),
        "utf-32-bom": xml.encode("utf-32"),
        "utf-32-le": xml.encode("utf-32-le"),
        # Characters Latin-1 lacks become character references, as any encoder writes them.
        "latin-1-declared": declared.encode("latin-1", "xmlcharrefreplace"),
    }  # fmt: skip
