"""Clean + dedup throughput: jaxgpt's numpy-hashed MinHash path vs datasketch's plain APIs.

Builds ~20 MB of synthetic documents from tinyshakespeare lines (random lines per document, some
with CRLF/BOM/zero-width noise), plants exact duplicates (verbatim, upper-cased, re-spaced, CRLF)
and near duplicates (~1 word in 130 changed), then times clean_documents -> deduplicate with the
MinHash signature computed three ways, in one run:

  numpy        jaxgpt.data.dedup: each word hashed once, shingles combined and permuted in numpy
  update_batch datasketch MinHash.update_batch: SHA-1 per shingle in Python, permutations batched
  update       datasketch MinHash.update per shingle (the documented plain usage)

    python benchmarks/dedup_speed.py [--mb 20] [--repeats 1] [--variants numpy,update_batch,update]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
from datasketch import LeanMinHash, MinHash

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from jaxgpt.data.clean import CleanConfig, CleanStats, clean_documents
from jaxgpt.data.dedup import SCHEME, DedupConfig, Deduplicator, DedupStats, deduplicate
from jaxgpt.data.sources import SHAKESPEARE  # the corpus shipped with jaxgpt


def _shingle_bytes(words: list[str], k: int) -> list[bytes]:
    """The same word shingles as jaxgpt's, as the bytes datasketch's default hash expects."""
    if len(words) < k:
        return [" ".join(words).encode()]
    return [" ".join(words[i : i + k]).encode() for i in range(len(words) - k + 1)]


class UpdateBatchDeduplicator(Deduplicator):
    """Signatures from datasketch's MinHash.update_batch (SHA-1 of each shingle)."""

    def _signature_of_words(self, words: list[str]) -> LeanMinHash:
        m = MinHash(num_perm=self.cfg.num_perm, seed=self.cfg.seed, scheme=SCHEME)
        m.update_batch(_shingle_bytes(words, self.cfg.shingle_size))
        return LeanMinHash(m)


class UpdateDeduplicator(Deduplicator):
    """Signatures from datasketch's MinHash.update, one call per shingle."""

    def _signature_of_words(self, words: list[str]) -> LeanMinHash:
        m = MinHash(num_perm=self.cfg.num_perm, seed=self.cfg.seed, scheme=SCHEME)
        for shingle in _shingle_bytes(words, self.cfg.shingle_size):
            m.update(shingle)
        return LeanMinHash(m)


VARIANTS = {
    "numpy": Deduplicator,
    "update_batch": UpdateBatchDeduplicator,
    "update": UpdateDeduplicator,
}


def _noisy(doc: str, rng: np.random.Generator) -> str:
    """Sometimes add what cleaning removes: CRLF, a BOM, zero-width spaces, trailing blanks."""
    r = rng.random()
    if r < 0.1:
        return "\ufeff" + doc.replace("\n", "\r\n")
    if r < 0.2:
        return doc.replace(" the ", " the\u200b ").replace("\n", "  \n") + "\n\n\n\n"
    return doc


def make_corpus(mb: float, seed: int) -> tuple[list[str], int, int]:
    """Documents totalling ~mb MB, and the numbers of planted exact and near duplicates."""
    rng = np.random.default_rng(seed)
    lines = [ln for ln in SHAKESPEARE.read_text().split("\n") if ln.strip()]
    docs: list[str] = []
    originals: list[str] = []
    n_exact = n_near = size = 0
    while size < mb * 1e6:
        r = rng.random()
        if originals and r < 0.1:
            doc = originals[rng.integers(len(originals))]
            variant = rng.integers(4)
            doc = [doc, doc.upper(), doc.replace(" ", "   "), doc.replace("\n", "\r\n")][variant]
            n_exact += 1
        elif originals and r < 0.2:
            words = originals[rng.integers(len(originals))].split(" ")
            for i in rng.choice(len(words), size=max(1, len(words) // 130), replace=False):
                words[i] = "zounds"
            doc = " ".join(words)
            n_near += 1
        else:
            picked = rng.integers(len(lines), size=rng.integers(40, 90))
            doc = "\n".join(lines[i] for i in picked)
            originals.append(doc)
            doc = _noisy(doc, rng)
        docs.append(doc)
        size += len(doc.encode())
    return docs, n_exact, n_near


def _run(variant: str, docs: list[str]) -> tuple[float, CleanStats, DedupStats]:
    clean_stats, dedup_stats = CleanStats(), DedupStats()
    dedup = VARIANTS[variant](DedupConfig(), dedup_stats)
    start = time.perf_counter()
    for doc in clean_documents(docs, CleanConfig(), clean_stats):
        dedup.keep(doc)
    return time.perf_counter() - start, clean_stats, dedup_stats


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--mb", type=float, default=20.0, help="size of the synthetic corpus")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--repeats", type=int, default=1, help="runs per variant; the median is shown")
    p.add_argument("--variants", default=",".join(VARIANTS))
    args = p.parse_args()

    docs, n_exact, n_near = make_corpus(args.mb, args.seed)
    mb = sum(len(d.encode()) for d in docs) / 1e6
    print(
        f"corpus: {len(docs):,} documents, {mb:.1f} MB; planted {n_exact:,} exact and "
        f"{n_near:,} near duplicates"
    )

    start = time.perf_counter()
    list(
        deduplicate(
            clean_documents(docs, CleanConfig(), CleanStats()),
            DedupConfig(near=False),
            DedupStats(),
        )
    )
    print(f"clean + exact dedup only: {time.perf_counter() - start:.2f} s")

    results = {}
    for variant in args.variants.split(","):
        runs = [_run(variant, docs) for _ in range(args.repeats)]
        seconds = statistics.median(r[0] for r in runs)
        clean_stats, dedup_stats = runs[0][1], runs[0][2]
        results[variant] = seconds
        print(
            f"{variant:>12}: {seconds:7.2f} s  {len(docs) / seconds:9,.0f} docs/s  "
            f"{mb / seconds:6.2f} MB/s  | kept {dedup_stats.documents_out:,}, dropped "
            f"{dedup_stats.exact_duplicates:,} exact, {dedup_stats.near_duplicates:,} near, "
            f"{clean_stats.documents_dropped:,} in cleaning "
            f"({clean_stats.documents_modified:,} changed by it)"
        )
    if "numpy" in results:
        for variant, seconds in results.items():
            if variant != "numpy":
                print(f"numpy path is {seconds / results['numpy']:.1f}x faster than {variant}")


if __name__ == "__main__":
    main()
