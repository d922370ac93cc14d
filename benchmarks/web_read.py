"""Reading web text: MB/s per core of the warc: reader (records, charsets, main-content
extraction) and of each quality filter, and the same for wet: as a baseline.

    python benchmarks/web_read.py [--pages 2000] [--repeats 3]

The WARC is GENERATED (tests/web_fixtures.py: an article of 4-12 paragraphs inside navigation,
sidebar, script, style and footer, in several charsets; a request record before every
response; some 404s, redirects and images). Real pages are larger and messier (more markup per
word of text), so read the WARC figure as MB/s of WARC on THIS input and the ratios as the
result. The quality filters are timed on the extracted text (MB/s of the text they judge).
Everything runs on one core, in this process. Prints medians of --repeats runs and the load
average (the machine is shared).
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE.parent / "tests"))

from web_fixtures import ENGLISH, FRENCH, GERMAN, RUSSIAN, SKIPPED, page, write_warc  # noqa: E402

from jaxgpt.config.data import QualityConfig  # noqa: E402
from jaxgpt.data import quality, web  # noqa: E402
from jaxgpt.data.clean import CleanStats  # noqa: E402
from jaxgpt.data.inputs import ReadStats, Source  # noqa: E402

CHARSETS = [("utf-8", "text/html; charset=utf-8", ""), ("cp1252", "text/html", "windows-1252"),
            ("koi8-r", "text/html", ""), ("utf-8", "text/html", "")]  # fmt: skip


def pages(n: int, seed: int = 0) -> dict:
    """n pages of English-like prose (and some German, French, Russian), charsets mixed."""
    rng = random.Random(seed)
    words = " ".join(ENGLISH + GERMAN + FRENCH).split()
    out = {}
    for i in range(n):
        encoding, ctype, meta = CHARSETS[i % len(CHARSETS)]
        lines = RUSSIAN if encoding == "koi8-r" else [
            " ".join(rng.choice(words) for _ in range(rng.randint(15, 40))) + "."
            for _ in range(rng.randint(4, 12))
        ]  # fmt: skip
        body = page(f"Page {i}", lines, meta_charset=meta).encode(encoding, errors="replace")
        out[i] = (f"https://example.com/{i}", "200 OK", ctype, body, [], lines)
    return out


def timed(fn, repeats: int) -> tuple[float, object]:
    """(median seconds, last result) of fn() over repeats runs."""
    times, result = [], None
    for _ in range(repeats):
        began = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - began)
    return statistics.median(times), result


def read_warc(path: Path) -> list[str]:
    return list(web.read_warc(Source("warc", str(path)), ReadStats(), False))


def filter_all(texts: list[str], cfg: QualityConfig) -> int:
    check, stats = quality.make_check(cfg), CleanStats()
    return sum(check(t, stats)[1] is None for t in texts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pages", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = write_warc(Path(tmp) / "crawl.warc.gz", pages(args.pages), SKIPPED)
        size = path.stat().st_size
        seconds, texts = timed(lambda: read_warc(path), args.repeats)
    text_mb = sum(len(t.encode()) for t in texts) / 1e6
    print(f"load average {os.getloadavg()[0]:.2f} (1 min); {len(texts)} pages, one core")
    print(f"{'warc: read + extract':<28} {size / 1e6 / seconds:8.2f} MB/s of .warc.gz "
          f"({size / 1e6:.1f} MB -> {text_mb:.1f} MB text, {seconds:.2f}s)")  # fmt: skip
    rules = ("language", "gopher_quality", "c4", "fineweb", "gopher_repetition")
    for rule in rules:
        seconds, kept = timed(lambda r=rule: filter_all(texts, QualityConfig(**{r: True})), 3)
        print(f"{'quality.' + rule:<28} {text_mb / seconds:8.2f} MB/s of text "
              f"(kept {kept}/{len(texts)})")  # fmt: skip
    every = QualityConfig(**dict.fromkeys(rules, True))
    seconds, kept = timed(lambda: filter_all(texts, every), 3)
    print(f"{'quality: all five':<28} {text_mb / seconds:8.2f} MB/s of text (kept {kept})")


if __name__ == "__main__":
    main()
