"""Reading Wikipedia: MB/s of XML per core for each wikitext parser, the cost of each stage, and
a multistream dump read in parts on all cores.

    python benchmarks/wiki_read.py [--pages 3000] [--sections 6] [--repeats 3]

The dump is GENERATED (tests/wiki_fixtures.py: infoboxes, references, tables, files,
categories, lists; 20% redirects, 10% talk pages): real English Wikipedia pages are
template-heavier, and mwparserfromhell was 3.8x slower on a real 2016 fragment than on this
kind of input, so read the absolute figures as an upper bound and the ratios as the result.
Prints medians of --repeats runs and the load average (the machine is shared).
"""

from __future__ import annotations

import argparse
import bz2
import concurrent.futures as cf
import multiprocessing
import os
import statistics
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE.parent / "tests"))

from wiki_fixtures import dump_xml, generate_pages, multistream  # noqa: E402

from jaxgpt.data import wiki, wikitext  # noqa: E402
from jaxgpt.data.inputs import ReadStats, Source  # noqa: E402


def timed(fn, repeats: int) -> float:
    """Median seconds of fn() over repeats runs."""
    times = []
    for _ in range(repeats):
        began = time.perf_counter()
        fn()
        times.append(time.perf_counter() - began)
    return statistics.median(times)


def read_all(path: Path, parser: str) -> int:
    stats = ReadStats()
    docs = list(wiki.read_wiki(Source("wiki", str(path)), stats, False, wiki_parser=parser))
    return len(docs)


def read_part(part: wiki.WikiPart) -> int:
    stats = ReadStats()
    return sum(1 for _ in wiki.read_wiki_part(Source("wiki", part.path), part, stats, False))


def read_parallel(parts: list[wiki.WikiPart], workers: int) -> int:
    ctx = multiprocessing.get_context("fork")
    with cf.ProcessPoolExecutor(workers, mp_context=ctx) as pool:
        return sum(pool.map(read_part, parts))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pages", type=int, default=3000)
    parser.add_argument("--sections", type=int, default=6)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    pages = generate_pages(args.pages, seed=0, sections=args.sections)
    xml = dump_xml(pages).encode()
    mb = len(xml) / 1e6
    texts = [p[3] for p in pages if p[1] == 0 and not p[2]]
    text_mb = sum(len(t.encode()) for t in texts) / 1e6
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "enwiki-pages-articles-multistream.xml.bz2"
        dump, index = multistream(pages, per=100)
        path.write_bytes(dump)
        path.with_name("enwiki-pages-articles-multistream-index.txt.bz2").write_bytes(index)
        print(f"generated dump: {len(pages)} pages, {mb:.1f} MB of XML, {len(dump) / 1e6:.1f} MB "
              f"bz2; load average {os.getloadavg()[0]:.1f}, {os.cpu_count()} CPUs")  # fmt: skip
        stages = {
            "bz2 decompress (stdlib)": (lambda: bz2.decompress(dump), mb),
            "XML parse (ET.iterparse)": (lambda: list(wiki._iter_pages(_bytes(xml), {})), mb),
            "strip, fast": (lambda: [wikitext.plain_text(t) for t in texts], text_mb),
        }
        for name, (fn, size) in stages.items():
            print(f"  stage {name:<28} {size / timed(fn, args.repeats):7.1f} MB/s")
        old = timed(lambda: read_all(path, "mwparserfromhell"), max(1, args.repeats - 2))
        fast = timed(lambda: read_all(path, "fast"), args.repeats)
        print(f"read_wiki, 1 core, mwparserfromhell {mb / old:7.2f} MB/s of XML")
        print(f"read_wiki, 1 core, fast             {mb / fast:7.2f} MB/s of XML "
              f"({old / fast:.1f}x)")  # fmt: skip
        parts = wiki.plan_parts(path, part_bytes=len(dump) // 8)
        for workers in sorted({1, os.cpu_count() or 1}):
            t = timed(lambda w=workers: read_parallel(parts, w), args.repeats)
            print(f"multistream, {len(parts)} parts, {workers} workers, fast  {mb / t:7.2f} MB/s")
        print(f"load average at the end {os.getloadavg()[0]:.1f}")


def _bytes(data: bytes):
    import io

    return io.BytesIO(data)


if __name__ == "__main__":
    ET.register_namespace("", "http://www.mediawiki.org/xml/export-0.10/")
    main()
