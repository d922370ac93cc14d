"""Side by side with a well-known extractor: jaxgpt's wiki text (fast and mwparserfromhell) and
WikiExtractor's (attardi/wikiextractor) on the same dump: MB/s of each, and per document
whether the words are equal, else the first differing span and a guess at why.

    python tools/wiki_compare.py DUMP.xml[.bz2] [--limit 500] [--show 5]
    python tools/wiki_compare.py --generate 300      # on a generated dump (tests/wiki_fixtures)

Dev only, not in CI: WikiExtractor is AGPL-3.0 and no dependency of jaxgpt; it is imported
only if installed (pip install wikiextractor). Without it, fast and mwparserfromhell are
compared. WikiExtractor differs by design, so "differs" is expected: it ends headings with a
period ("History."), turns ''x'' into "x", and drops list items unless --lists is given.
"""

from __future__ import annotations

import argparse
import bz2
import collections
import difflib
import importlib.util
import io
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from jaxgpt.data import wiki  # noqa: E402


def articles(data: bytes, limit: int) -> list[tuple[str, str]]:
    """(title, wikitext) of the dump's first `limit` articles (no redirects)."""
    out = []
    for title, is_article, is_redirect, text in wiki._iter_pages(io.BytesIO(data), {}):
        if is_article and not is_redirect:
            out.append((title, text))
            if len(out) >= limit:
                break
    return out


def wikiextractor():
    """A function wikitext -> text by WikiExtractor, or None when it is not installed."""
    if importlib.util.find_spec("wikiextractor") is None:
        return None
    from wikiextractor.extract import Extractor

    def extract(text: str) -> str:
        lines = Extractor(0, 0, "", "t", [text]).clean_text(text, expand_templates=False)
        return "\n".join(lines)

    return extract


def why(a: list[str], b: list[str]) -> str:
    """A guess at the class of the first difference between two word lists."""
    ops = [op for op in difflib.SequenceMatcher(a=a, b=b, autojunk=False).get_opcodes()]
    op = next((o for o in ops if o[0] != "equal"), None)
    if op is None:
        return "equal"
    left, right = " ".join(a[op[1] : op[2]]), " ".join(b[op[3] : op[4]])
    if right.rstrip(".") == left or left + "." == right:
        kind = "heading period"
    elif '"' in right and right.replace('"', "") == left:
        kind = "quotes"
    elif not right:
        kind = "dropped by the other (lists?)"
    elif "{" in left + right or "|" in left + right:
        kind = "template or table kept"
    else:
        kind = "other"
    return f"{kind}: {left[:60]!r} vs {right[:60]!r}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("dump", nargs="?")
    parser.add_argument("--generate", type=int, default=0, help="pages of a generated dump")
    parser.add_argument("--limit", type=int, default=500)
    parser.add_argument("--show", type=int, default=5)
    args = parser.parse_args()
    if args.generate:
        from wiki_fixtures import dump_xml, generate_pages

        data = dump_xml(generate_pages(args.generate, seed=0)).encode()
    elif args.dump:
        raw = Path(args.dump).read_bytes()
        data = bz2.decompress(raw) if args.dump.endswith(".bz2") else raw
    else:
        parser.error("give a DUMP or --generate N")
    pages = articles(data, args.limit)
    mb = sum(len(t.encode()) for _, t in pages) / 1e6
    extractors = {p: (lambda t, p=p: wiki.wikitext_to_text(t, p)) for p in wiki.PARSERS}
    if (other := wikiextractor()) is not None:
        extractors["wikiextractor"] = other
    else:
        print("wikiextractor not installed: comparing fast with mwparserfromhell only")
    outputs = {}
    for name, fn in extractors.items():
        began = time.perf_counter()
        outputs[name] = [fn(t) for _, t in pages]
        print(f"{name:<18} {mb / (time.perf_counter() - began):7.2f} MB/s of wikitext "
              f"({len(pages)} articles, {mb:.1f} MB)")  # fmt: skip
    base = outputs["fast"]
    for name, texts in outputs.items():
        if name == "fast":
            continue
        ratios, diffs = [], []
        for (title, _), a, b in zip(pages, base, texts, strict=True):
            aw, bw = a.split(), b.split()
            ratios.append(difflib.SequenceMatcher(a=aw, b=bw, autojunk=False).ratio())
            if aw != bw:
                diffs.append(f"  {title}: {why(aw, bw)}")
        print(
            f"fast vs {name}: {len(pages) - len(diffs)}/{len(pages)} equal in words; word "
            f"similarity median {statistics.median(ratios):.3f}, min {min(ratios):.3f}"
        )
        kinds = collections.Counter(d.split(": ", 2)[1] for d in diffs)
        if diffs:
            print("first difference by class: " + ", ".join(f"{k} {n}" for k, n in kinds.items()))
            print("\n".join(diffs[: args.show]))


if __name__ == "__main__":
    main()
