"""Exact and near-duplicate removal: planted duplicates go, distinct documents stay."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from datasketch import MinHash

from jaxgpt.data.dedup import (
    DedupConfig,
    Deduplicator,
    DedupStats,
    ShingleHasher,
    deduplicate,
    exact_key,
    signature_from_hashes,
)

REPO = Path(__file__).resolve().parent.parent
VOCAB = [f"w{i}" for i in range(3000)]


def _random_doc(rng: np.random.Generator, n_words: int = 300) -> str:
    words = rng.choice(VOCAB, size=n_words)
    lines = [" ".join(words[i : i + 12]) for i in range(0, n_words, 12)]
    return "\n".join(lines)


def _change_words(doc: str, rng: np.random.Generator, n: int) -> str:
    """doc with n words, spread over it, replaced by words not in VOCAB."""
    words = doc.split(" ")
    inner = [i for i in range(10, len(words) - 10) if "\n" not in words[i]]
    for i in rng.choice(inner, size=n, replace=False):
        words[i] = f"changed{i}"
    return " ".join(words)


def _run(docs: list[str], cfg: DedupConfig) -> tuple[list[str], DedupStats]:
    stats = DedupStats()
    return list(deduplicate(docs, cfg, stats)), stats


def _chunks(path: Path, n: int, size: int) -> list[str]:
    text = path.read_text()
    return [text[i * size : (i + 1) * size] for i in range(n)]


def test_exact_key_ignores_case_and_whitespace_only():
    doc = "The quick\tbrown fox\n\njumps."
    assert exact_key(doc) == exact_key("  the QUICK brown   fox jumps.\n")
    assert exact_key(doc) != exact_key("The quick brown fox jumps!")
    assert len(exact_key(doc)) == 16


def test_exact_duplicates_removed_including_variants():
    rng = np.random.default_rng(0)
    originals = [_random_doc(rng) for _ in range(5)]
    a = originals[0]
    docs = [*originals, a, a.upper(), a.replace(" ", "  \t"), "\n" + a.replace("\n", " ") + "\n"]
    kept, stats = _run(docs, DedupConfig(near=False))
    assert kept == originals
    assert (stats.documents_in, stats.exact_duplicates, stats.near_duplicates) == (9, 4, 0)
    assert stats.documents_out == 5


def test_near_duplicates_removed_at_threshold():
    rng = np.random.default_rng(1)
    originals = [_random_doc(rng) for _ in range(20)]
    near = [_change_words(doc, rng, n=2 + i % 2) for i, doc in enumerate(originals)]
    far = [_change_words(doc, rng, n=30) for doc in originals[:5]]  # ~10% of words: Jaccard ~0.6
    kept, stats = _run(originals + near + far, DedupConfig())
    assert kept == originals + far
    assert stats == DedupStats(
        documents_in=45, exact_duplicates=0, near_duplicates=20, documents_out=25
    )


def test_near_duplicates_close_to_threshold_are_found():
    # Three words changed in 300: shingle Jaccard ~0.9, where a balanced LSH misses ~7% of pairs.
    rng = np.random.default_rng(8)
    originals = [_random_doc(rng) for _ in range(40)]
    near = [_change_words(doc, rng, n=3) for doc in originals]
    kept, stats = _run(originals + near, DedupConfig())
    assert kept == originals
    assert stats.near_duplicates == 40


def test_no_false_positives_on_distinct_documents(shakespeare):
    rng = np.random.default_rng(2)
    random_docs = [_random_doc(rng) for _ in range(200)]
    kept, stats = _run(random_docs, DedupConfig())
    assert kept == random_docs
    # Natural language repeats phrases ("my lord", speaker names), a harder case than random words.
    prose = _chunks(shakespeare, 200, 4000)
    kept, stats = _run(prose, DedupConfig())
    assert kept == prose
    assert stats.near_duplicates == 0


def test_stats_add_up():
    rng = np.random.default_rng(3)
    originals = [_random_doc(rng) for _ in range(10)]
    docs = originals + originals[:3] + [_change_words(d, rng, 2) for d in originals[3:7]]
    _, stats = _run(docs, DedupConfig())
    assert (stats.exact_duplicates, stats.near_duplicates, stats.documents_out) == (3, 4, 10)
    assert (
        stats.documents_in == stats.exact_duplicates + stats.near_duplicates + stats.documents_out
    )
    assert "kept 10/17" in stats.summary()


def test_exact_only_and_near_only_modes():
    rng = np.random.default_rng(4)
    a, b = _random_doc(rng), _random_doc(rng)
    a_near = _change_words(a, rng, 2)
    docs = [a, b, a.upper(), a_near]

    kept, stats = _run(docs, DedupConfig(exact=True, near=False))
    assert kept == [a, b, a_near]
    assert (stats.exact_duplicates, stats.near_duplicates) == (1, 0)

    # Without the exact test, copies are near duplicates with similarity 1.
    kept, stats = _run(docs, DedupConfig(exact=False, near=True))
    assert kept == [a, b]
    assert (stats.exact_duplicates, stats.near_duplicates) == (0, 2)

    kept, stats = _run(docs, DedupConfig(exact=False, near=False))
    assert kept == docs


def test_documents_shorter_than_a_shingle():
    cfg = DedupConfig(exact=False)
    kept, stats = _run(["hello world", "Hello  World", "hello there", "", " "], cfg)
    assert kept == ["hello world", "hello there", ""]
    assert stats.near_duplicates == 2


@pytest.mark.e2e
def test_deterministic_across_runs_and_hash_seeds(shakespeare):
    rng = np.random.default_rng(5)
    originals = [_random_doc(rng, 120) for _ in range(30)]
    docs = originals + [_change_words(d, rng, 1) for d in originals]
    docs = [docs[i] for i in rng.permutation(len(docs))]
    assert _run(docs, DedupConfig()) == _run(docs, DedupConfig())
    # Nothing may depend on Python's per-process str hash randomization.
    code = (
        "import sys; from jaxgpt.data.dedup import *; "
        "d = Deduplicator(DedupConfig()); "
        "print(d.signature(open(sys.argv[1]).read(20000)).hashvalues.tobytes().hex())"
    )
    outs = {
        subprocess.run(
            [sys.executable, "-c", code, str(shakespeare)],
            env={**os.environ, "PYTHONHASHSEED": seed, "PYTHONPATH": str(REPO)},
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        for seed in ("1", "2")
    }
    here = Deduplicator(DedupConfig()).signature(shakespeare.read_text()[:20000])
    assert outs == {here.hashvalues.tobytes().hex() + "\n"}


def test_fast_signature_equals_datasketch_update_batch():
    hashes = ShingleHasher(5)(_random_doc(np.random.default_rng(6), 5000))
    for num_perm, seed in ((128, 1), (64, 7)):
        reference = MinHash(num_perm=num_perm, seed=seed, hashfunc=int)
        reference.update_batch(hashes.tolist())
        np.testing.assert_array_equal(
            signature_from_hashes(hashes, num_perm, seed), reference.hashvalues
        )


def test_signature_estimates_shingle_jaccard():
    rng = np.random.default_rng(7)
    a = _random_doc(rng, 400)
    b = _change_words(a, rng, 12)
    sa, sb = (set(ShingleHasher(5)(t).tolist()) for t in (a, b))
    true_jaccard = len(sa & sb) / len(sa | sb)
    dedup = Deduplicator(DedupConfig(num_perm=256))
    estimate = dedup.signature(a).jaccard(dedup.signature(b))
    assert 0.6 < true_jaccard < 0.9
    assert abs(estimate - true_jaccard) < 0.08


def test_shingles_respect_word_order_and_size():
    hasher = ShingleHasher(3)
    assert len(hasher("a b c d e")) == 3
    assert len(hasher("a b")) == 1
    assert len(hasher("")) == 1
    assert set(hasher("a b c").tolist()) != set(hasher("c b a").tolist())
    assert hasher("A  b\nC").tolist() == hasher("a b c").tolist()


@pytest.mark.parametrize(
    "kwargs", [{"threshold": 0.0}, {"threshold": 1.5}, {"num_perm": 1}, {"shingle_size": 0}]
)
def test_bad_config_is_rejected(kwargs):
    with pytest.raises(ValueError):
        DedupConfig(**kwargs)
