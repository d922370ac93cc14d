"""Exact and near-duplicate removal over a document stream; the first occurrence is kept.

Exact: a hash of the casefolded, whitespace-collapsed text. Near: datasketch MinHash signatures
of word shingles, indexed in a datasketch MinHashLSH; an LSH candidate counts as a duplicate only
when the signatures' estimated Jaccard similarity reaches the threshold.

Speed: datasketch's per-shingle `MinHash.update` costs a SHA-1 and several numpy calls per
shingle. Here each distinct word is hashed once (cached), shingle hashes are combined with numpy,
and datasketch's own "affine32" permutations are applied to all shingles in one array operation;
the result is exactly what `MinHash.update_batch` gives for the same shingle hashes (tested), built
into a `LeanMinHash`. See benchmarks/dedup_speed.py for the measured speed-up.

Global form (what `prepare` runs, on one machine or on a cluster): `document_keys` gives each
document its exact key, MinHash signature and LSH band hashes; `key_records` turns them into
small (group, hash, id) records that an engine hash-partitions, so equal keys and equal band
buckets meet in one partition whatever machine read the documents; `resolve_partition` turns one
partition into exact drops and verified near edges; `NearResolution` (on the driver, over edges
only) applies the same rule as `Deduplicator` — keep the first occurrence — to the whole corpus.
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


# ---------------------------------------------------------------- global deduplication
#
# The rule is Deduplicator's, computed without one process seeing every document in order:
#   exact: a document is dropped when a document before it (by id) has the same exact key;
#   near:  among exact survivors, in id order, a document is dropped when an earlier *kept* one
#          shares an LSH band bucket with it and their signatures agree in >= min_equal places.
# That is the greedy independent set of the graph of verified candidate pairs, taken in id
# order. Each bucket is resolved on its own (`resolve_bucket`): every member is compared with
# the bucket's earlier "representatives" (members that matched no earlier representative), so a
# bucket of n copies costs n comparisons, not n^2. The driver then runs the greedy pass over the
# edges (`NearResolution`). Exactness: a kept document that is not a representative of one of
# its buckets ("orphan": it matched a representative that was itself dropped) has not been
# compared with that bucket's later members; the engine resolves those buckets again with it
# forced in as a representative, until no orphan is left. Then every kept document has been
# compared with every later document it shares a bucket with, which is all the greedy rule
# reads, so the result is Deduplicator's exactly (tested).

EXACT_GROUP = -1  # the `g` of exact-key records; band records carry their band index
RECORD_DTYPE = np.dtype([("g", "<i2"), ("h", "<u8"), ("k2", "<u8"), ("id", "<i8")])
_BAND_MULTIPLIER = np.uint64(0x9E3779B97F4A7C15)


def min_equal(cfg: DedupConfig) -> int:
    """Signature positions that must agree for a near duplicate (Deduplicator's test)."""
    return int(np.ceil(cfg.threshold * cfg.num_perm - 1e-9))


def band_hashes(sigs: np.ndarray, bands: int, rows: int) -> np.ndarray:
    """[n, bands] uint64: a 64-bit hash of each band's `rows` signature values. Equal bands
    give equal hashes; the rare unequal pair with equal hashes only adds a candidate, which
    the signature comparison then rejects, so results equal datasketch's exact band match."""
    out = np.empty((len(sigs), bands), dtype=np.uint64)
    with np.errstate(over="ignore"):
        for band in range(bands):
            h = np.full(len(sigs), band + 1, dtype=np.uint64)
            for col in sigs[:, band * rows : (band + 1) * rows].T:
                h = _fmix64(h * _BAND_MULTIPLIER + col.astype(np.uint64))
            out[:, band] = h
    return out


@dataclasses.dataclass
class DocumentKeys:
    """Dedup keys of a batch of documents, row i for document i."""

    exact: np.ndarray  # [n, 2] uint64: the 16-byte exact key (empty when exact is off)
    sigs: np.ndarray  # [n, num_perm] uint32 MinHash signatures (empty when near is off)
    bands: np.ndarray  # [n, bands] uint64 band hashes (empty when near is off)


class KeyMaker:
    """document_keys for one process: holds the word-hash cache across batches."""

    def __init__(self, cfg: DedupConfig):
        self.cfg = cfg
        self._shingles = ShingleHasher(cfg.shingle_size)
        self._bands = _lsh_params(cfg.threshold, cfg.num_perm) if cfg.near else (0, 0)

    def __call__(self, texts: list[str]) -> DocumentKeys:
        cfg, n = self.cfg, len(texts)
        exact = np.zeros((n if cfg.exact else 0, 2), dtype=np.uint64)
        sigs = np.zeros((n if cfg.near else 0, cfg.num_perm), dtype=np.uint32)
        for i, text in enumerate(texts):
            words = _words(text)
            if cfg.exact:
                exact[i] = np.frombuffer(_key_of_words(words), dtype="<u8")
            if cfg.near:
                hashes = self._shingles.of_words(words)
                sigs[i] = signature_from_hashes(hashes, cfg.num_perm, cfg.seed)
        bands = band_hashes(sigs, *self._bands) if cfg.near else np.zeros((0, 0), np.uint64)
        return DocumentKeys(exact, sigs, bands)


def key_records(ids: np.ndarray, keys: DocumentKeys) -> np.ndarray:
    """The records a partition sees, RECORD_DTYPE: one per exact key and one per band.
    Partition them by `h` (a hash already): equal keys and equal buckets share an `h`."""
    parts = []
    if len(keys.exact):
        rec = np.empty(len(ids), RECORD_DTYPE)
        rec["g"], rec["h"], rec["k2"], rec["id"] = (
            EXACT_GROUP,
            keys.exact[:, 0],
            keys.exact[:, 1],
            ids,
        )
        parts.append(rec)
    for band in range(keys.bands.shape[1]):
        rec = np.empty(len(ids), RECORD_DTYPE)
        rec["g"], rec["h"], rec["k2"], rec["id"] = band, keys.bands[:, band], 0, ids
        parts.append(rec)
    return np.concatenate(parts) if parts else np.empty(0, RECORD_DTYPE)


@dataclasses.dataclass
class PartitionResult:
    """What one partition contributes: exact drops, verified near edges (a < b), and the
    members that were not a representative of a bucket (id, g, h), for the orphan check."""

    exact: list[np.ndarray] = dataclasses.field(default_factory=list)
    edge_a: list[np.ndarray] = dataclasses.field(default_factory=list)
    edge_b: list[np.ndarray] = dataclasses.field(default_factory=list)
    nonrep: list[np.ndarray] = dataclasses.field(default_factory=list)  # RECORD_DTYPE rows

    def arrays(self) -> dict[str, np.ndarray]:
        cat = lambda xs, dt: np.concatenate(xs) if xs else np.empty(0, dt)
        return {
            "exact": cat(self.exact, np.int64),
            "edge_a": cat(self.edge_a, np.int64),
            "edge_b": cat(self.edge_b, np.int64),
            "nonrep": cat(self.nonrep, RECORD_DTYPE),
        }


def resolve_bucket(
    ids: np.ndarray, sigs: np.ndarray, need: int, forced: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One LSH bucket, ids ascending: (edge_a, edge_b, non-representative ids). Each member is
    compared with the earlier representatives; members in `forced` are also compared with
    every later member (the orphan pass)."""
    reps = [0]
    edge_a, edge_b, nonrep = [], [], []
    for i in range(1, len(ids)):
        rep = np.asarray(reps)
        hit = rep[np.count_nonzero(sigs[rep] == sigs[i], axis=1) >= need]
        if len(hit):
            edge_a.append(ids[hit])
            edge_b.append(np.full(len(hit), ids[i]))
            nonrep.append(ids[i])
        else:
            reps.append(i)
    for f in np.flatnonzero(np.isin(ids, forced)) if forced is not None else ():
        later = np.arange(f + 1, len(ids))
        hit = later[np.count_nonzero(sigs[later] == sigs[f], axis=1) >= need]
        edge_a.append(np.full(len(hit), ids[f]))
        edge_b.append(ids[hit])
    cat = lambda xs: np.concatenate(xs).astype(np.int64) if xs else np.empty(0, np.int64)
    return cat(edge_a), cat(edge_b), np.asarray(nonrep, dtype=np.int64)


def resolve_partition(
    records: np.ndarray,
    signatures,
    need: int,
    forced: dict[tuple[int, int], np.ndarray] | None = None,
) -> PartitionResult:
    """Resolve every exact group and band bucket of one partition.

    Args:
      records: RECORD_DTYPE rows; all rows of a group must be in this partition.
      signatures: callable(row positions in `records`) -> [k, num_perm] signatures; only asked
        for members of buckets with two or more members.
      need: min_equal(cfg).
      forced: (g, h) -> ids to compare with every later member of that bucket (orphan pass).
    """
    order = np.lexsort((records["id"], records["k2"], records["h"], records["g"]))
    rec = records[order]
    out = PartitionResult()
    if len(rec) < 2:
        return out
    same = (rec["g"][1:] == rec["g"][:-1]) & (rec["h"][1:] == rec["h"][:-1])
    same &= rec["k2"][1:] == rec["k2"][:-1]
    exact = same & (rec["g"][1:] == EXACT_GROUP)
    out.exact.append(rec["id"][1:][exact])  # every member of an exact group but its first
    starts = np.flatnonzero(np.concatenate([[True], ~same]))
    ends = np.append(starts[1:], len(rec))
    multi = (ends - starts >= 2) & (rec["g"][starts] != EXACT_GROUP)
    for start, end in zip(starts[multi], ends[multi], strict=True):
        g, h = int(rec["g"][start]), int(rec["h"][start])
        ids = rec["id"][start:end]
        sigs = signatures(order[start:end])
        a, b, nonrep = resolve_bucket(ids, sigs, need, (forced or {}).get((g, h)))
        out.edge_a.append(a)
        out.edge_b.append(b)
        rows = np.empty(len(nonrep), RECORD_DTYPE)
        rows["g"], rows["h"], rows["k2"], rows["id"] = g, h, 0, nonrep
        out.nonrep.append(rows)
    return out


class NearResolution:
    """The driver's part: exact drops, then the greedy keep-the-first pass over near edges,
    and the orphans that still need a forced pass. Memory: O(duplicates and edges), never
    O(corpus)."""

    def __init__(self):
        self.exact = np.empty(0, np.int64)
        self.edge_a = np.empty(0, np.int64)
        self.edge_b = np.empty(0, np.int64)
        self.nonrep = np.empty(0, RECORD_DTYPE)
        self.forced: dict[tuple[int, int], set[int]] = {}  # (g, h) -> ids already forced
        self.near = np.empty(0, np.int64)

    def add(self, part: dict[str, np.ndarray]) -> None:
        """Fold in one partition's PartitionResult.arrays()."""
        self.exact = np.union1d(self.exact, part["exact"])
        self.edge_a = np.concatenate([self.edge_a, part["edge_a"]])
        self.edge_b = np.concatenate([self.edge_b, part["edge_b"]])
        self.nonrep = np.concatenate([self.nonrep, part["nonrep"]])

    def solve(self) -> dict[tuple[int, int], np.ndarray]:
        """Run the greedy pass; returns the buckets (g, h) -> ids to force in a rerun of them
        (empty: the result is final)."""
        keep = ~(np.isin(self.edge_a, self.exact) | np.isin(self.edge_b, self.exact))
        pairs = np.stack([self.edge_b[keep], self.edge_a[keep]], axis=1)
        pairs = np.unique(pairs, axis=0) if len(pairs) else pairs
        dropped: set[int] = set()
        if len(pairs):
            cut = np.flatnonzero(np.diff(pairs[:, 0])) + 1
            for group in np.split(pairs, cut):  # by b ascending; each a < b is decided already
                if any(int(a) not in dropped for a in group[:, 1]):
                    dropped.add(int(group[0, 0]))
        self.near = np.array(sorted(dropped), dtype=np.int64)
        gone = np.isin(self.nonrep["id"], self.near) | np.isin(self.nonrep["id"], self.exact)
        orphans: dict[tuple[int, int], set[int]] = {}
        for row in self.nonrep[~gone]:
            bucket, doc = (int(row["g"]), int(row["h"])), int(row["id"])
            if doc not in self.forced.get(bucket, ()):
                orphans.setdefault(bucket, set()).add(doc)
        for bucket, docs in orphans.items():
            self.forced.setdefault(bucket, set()).update(docs)
        return {b: np.array(sorted(self.forced[b]), np.int64) for b in sorted(orphans)}

    def dropped(self) -> np.ndarray:
        """Sorted ids of every dropped document (exact and near)."""
        return np.union1d(self.exact, self.near)

    def stats(self, documents: int) -> DedupStats:
        exact, near = len(self.exact), len(self.near)
        return DedupStats(documents, exact, near, documents - exact - near)
