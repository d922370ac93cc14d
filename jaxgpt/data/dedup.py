"""Exact and near-duplicate removal over a document stream; the first occurrence is kept.

Exact: a hash of the casefolded, whitespace-collapsed text. Near: datasketch MinHash signatures
of word shingles, indexed in a datasketch MinHashLSH; an LSH candidate counts as a duplicate only
when the signatures' estimated Jaccard similarity reaches the threshold.

Speed: datasketch's per-shingle `MinHash.update` costs a SHA-1 and several numpy calls per
shingle. Here each distinct word is hashed once (cached), shingle hashes are combined with numpy,
and datasketch's own "affine32" permutations are applied to all shingles in one array operation;
the result is exactly what `MinHash.update_batch` gives for the same shingle hashes (tested), built
into a `LeanMinHash`. See benchmarks/dedup_speed.py for the measured speed-up.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
from collections.abc import Iterable, Iterator

import numpy as np
from datasketch import LeanMinHash, MinHash, MinHashLSH

from jaxgpt.config.data import MAX_SHINGLE_SIZE, DedupConfig

SCHEME = "affine32"  # datasketch >= 2.0 default: collision-free permutations, uint32 values
_SHINGLES_PER_BLOCK = 4096  # bounds the (num_perm x shingles) block, e.g. 2 MB at 128 perms
_WORD_CACHE_MAX = 1 << 21  # distinct words remembered before the cache is reset

# Odd 64-bit multipliers that weight a word by its position in the shingle, so "a b" != "b a".
_POSITION_MULTIPLIERS = np.array(
    [
        0x9E3779B97F4A7C15,
        0xBF58476D1CE4E5B9,
        0x94D049BB133111EB,
        0xD6E8FEB86659FD93,
        0xA0761D6478BD642F,
        0xE7037ED1A0B428DB,
        0x8EBC6AF09C88C6E3,
        0x589965CC75374CC3,
    ],
    dtype=np.uint64,
)


# DedupConfig.shingle_size is checked against the config layer's bound; keep them one.
assert len(_POSITION_MULTIPLIERS) == MAX_SHINGLE_SIZE


@dataclasses.dataclass
class DedupStats:
    """Counts from deduplication; documents_in = exact + near duplicates + documents_out."""

    documents_in: int = 0  # documents seen
    exact_duplicates: int = 0  # dropped: same normalized text as an earlier document
    near_duplicates: int = 0  # dropped: estimated Jaccard >= threshold with an earlier kept one
    documents_out: int = 0  # documents kept

    def merge(self, other: DedupStats) -> None:
        """Add another DedupStats into this one."""
        for f in dataclasses.fields(self):
            setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))

    def summary(self) -> str:
        """One line for logs."""
        return (
            f"dedup: kept {self.documents_out:,}/{self.documents_in:,} documents; dropped "
            f"{self.exact_duplicates:,} exact and {self.near_duplicates:,} near duplicates"
        )


def _encode(text: str) -> bytes:
    # surrogatepass: uncleaned text may hold lone surrogates, which strict UTF-8 refuses.
    return text.encode("utf-8", "surrogatepass")


def _words(text: str) -> list[str]:
    """The normalized words both duplicate tests look at: casefolded, split on any whitespace."""
    return text.casefold().split()


def _key_of_words(words: list[str]) -> bytes:
    return hashlib.blake2b(_encode(" ".join(words)), digest_size=16).digest()


def exact_key(text: str) -> bytes:
    """A 16-byte hash of the casefolded, whitespace-collapsed text."""
    return _key_of_words(_words(text))


def _fmix32(h: np.ndarray) -> np.ndarray:
    """MurmurHash3's 32-bit finalizer, as datasketch applies it before its affine32 permutations."""
    h = h ^ (h >> np.uint32(16))
    h = h * np.uint32(0x85EBCA6B)
    h = h ^ (h >> np.uint32(13))
    h = h * np.uint32(0xC2B2AE35)
    return h ^ (h >> np.uint32(16))


def _fmix64(h: np.ndarray) -> np.ndarray:
    """MurmurHash3's 64-bit finalizer: spreads the linear shingle combination over all bits."""
    h = h ^ (h >> np.uint64(33))
    h = h * np.uint64(0xFF51AFD7ED558CCD)
    h = h ^ (h >> np.uint64(33))
    h = h * np.uint64(0xC4CEB9FE1A85EC53)
    return h ^ (h >> np.uint64(33))


@functools.lru_cache(maxsize=16)
def _permutations(num_perm: int, seed: int) -> np.ndarray:
    """datasketch's (a, b) permutation parameters, shape (2, num_perm) uint32."""
    return MinHash(num_perm=num_perm, seed=seed, scheme=SCHEME).permutations


@functools.lru_cache(maxsize=16)
def _lsh_params(threshold: float, num_perm: int) -> tuple[int, int]:
    """datasketch's (bands, rows) for the threshold; cached as it integrates numerically."""
    # Every LSH candidate is checked against the threshold afterwards, so a false candidate costs
    # one comparison while a missed one is a duplicate kept: weigh misses 19:1. At 0.8 and 128
    # permutations this gives 16 bands x 8 rows, finding 95% of pairs at similarity 0.8 and 99.99%
    # at 0.9, where the balanced default (9 x 13) finds 40% and 93%.
    lsh = MinHashLSH(threshold=threshold, num_perm=num_perm, weights=(0.05, 0.95))
    return lsh.b, lsh.r


class ShingleHasher:
    """Maps a document to the 32-bit hashes of its word shingles (words: casefolded, split())."""

    def __init__(self, shingle_size: int):
        self.shingle_size = shingle_size
        # Each distinct word is hashed once: word -> row of a growing uint64 table of its hash.
        # Small-int ids convert to numpy far faster than 64-bit Python ints would.
        self._ids: dict[str, int] = {}
        self._table = np.empty(1024, dtype=np.uint64)

    def _add_words(self, words: list[str]) -> None:
        ids = self._ids
        new = set(words).difference(ids)  # set operations, not a Python loop over every word
        if len(ids) + len(new) > _WORD_CACHE_MAX:
            ids.clear()
            new = set(words)
        if len(ids) + len(new) > len(self._table):
            grown = np.empty(2 * (len(ids) + len(new)), dtype=np.uint64)
            grown[: len(ids)] = self._table[: len(ids)]
            self._table = grown
        # Ids follow set order (varies between processes); a word's hash does not, so output is
        # the same everywhere.
        for w in new:
            digest = hashlib.blake2b(_encode(w), digest_size=8).digest()
            self._table[len(ids)] = int.from_bytes(digest, "little")
            ids[w] = len(ids)

    def _hash_words(self, words: list[str]) -> np.ndarray:
        try:
            ids = np.fromiter(map(self._ids.__getitem__, words), dtype=np.intp, count=len(words))
        except KeyError:  # a word not seen before
            self._add_words(words)
            ids = np.fromiter(map(self._ids.__getitem__, words), dtype=np.intp, count=len(words))
        return self._table[ids]

    def __call__(self, text: str) -> np.ndarray:
        """Shingle hashes (uint32, maybe repeated); under shingle_size words give one shingle."""
        return self.of_words(_words(text))

    def of_words(self, words: list[str]) -> np.ndarray:
        """Shingle hashes of already normalized words."""
        hashes = self._hash_words(words)
        k = min(self.shingle_size, len(hashes))
        n = len(hashes) - k + 1  # number of shingles; 1 when the document has fewer than k words
        acc = np.zeros(n, dtype=np.uint64)
        for j in range(k):
            acc += hashes[j : j + n] * _POSITION_MULTIPLIERS[j]
        return (_fmix64(acc) >> np.uint64(32)).astype(np.uint32)


def signature_from_hashes(hashes: np.ndarray, num_perm: int, seed: int) -> np.ndarray:
    """MinHash values of a set of 32-bit hashes: MinHash(hashfunc=int).update_batch's result."""
    a, b = _permutations(num_perm, seed)
    b = b[:, None]
    hv = _fmix32(hashes.astype(np.uint32, copy=False))
    out = np.full(num_perm, np.iinfo(np.uint32).max, dtype=np.uint32)
    for start in range(0, len(hv), _SHINGLES_PER_BLOCK):
        # (num_perm, shingles) rather than the transpose: each row is one contiguous min
        # reduction, several times faster once a block outgrows the CPU cache.
        block = np.multiply.outer(a, hv[start : start + _SHINGLES_PER_BLOCK])
        block += b  # uint32 arithmetic wraps mod 2^32, which is the permutation's modulus
        np.minimum(out, block.min(axis=1), out=out)
    return out


class Deduplicator:
    """Streaming deduplicator: keep(text) is True for a first occurrence, False for a duplicate."""

    def __init__(self, cfg: DedupConfig, stats: DedupStats | None = None):
        self.cfg = cfg
        self.stats = stats if stats is not None else DedupStats()
        self._seen: set[bytes] = set()
        self._shingles = ShingleHasher(cfg.shingle_size)
        self._lsh = MinHashLSH(
            num_perm=cfg.num_perm, params=_lsh_params(cfg.threshold, cfg.num_perm)
        )
        self._kept_signatures: list[np.ndarray] = []  # LSH key i -> signature of kept document i
        # Jaccard estimates are multiples of 1/num_perm; compare counts to avoid float rounding.
        self._min_equal = int(np.ceil(cfg.threshold * cfg.num_perm - 1e-9))

    def signature(self, text: str) -> LeanMinHash:
        """The document's MinHash over its word shingles."""
        return self._signature_of_words(_words(text))

    def _signature_of_words(self, words: list[str]) -> LeanMinHash:
        hashes = self._shingles.of_words(words)
        values = signature_from_hashes(hashes, self.cfg.num_perm, self.cfg.seed)
        return LeanMinHash(seed=self.cfg.seed, hashvalues=values, scheme=SCHEME)

    def _is_near_duplicate(self, minhash: LeanMinHash) -> bool:
        values = minhash.hashvalues
        for key in self._lsh.query(minhash):
            if np.count_nonzero(values == self._kept_signatures[key]) >= self._min_equal:
                return True
        return False

    def keep(self, text: str) -> bool:
        """Whether text is new (and remember it); updates stats."""
        self.stats.documents_in += 1
        words = _words(text)
        if self.cfg.exact:
            key = _key_of_words(words)
            if key in self._seen:
                self.stats.exact_duplicates += 1
                return False
            self._seen.add(key)  # also for near duplicates, so their later copies count as exact
        if self.cfg.near:
            minhash = self._signature_of_words(words)
            if self._is_near_duplicate(minhash):
                self.stats.near_duplicates += 1
                return False
            self._lsh.insert(len(self._kept_signatures), minhash, check_duplication=False)
            self._kept_signatures.append(minhash.hashvalues)
        self.stats.documents_out += 1
        return True


def deduplicate(docs: Iterable[str], cfg: DedupConfig, stats: DedupStats) -> Iterator[str]:
    """Yield the documents that are not duplicates of earlier ones, in order.

    Args:
      docs: documents, usually already cleaned.
      cfg: dedup settings.
      stats: updated in place as documents stream through (read it after the iterator ends).
    """
    dedup = Deduplicator(cfg, stats)
    for doc in docs:
        if dedup.keep(doc):
            yield doc
