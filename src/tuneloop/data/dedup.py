"""Exact and near-duplicate detection: normalised-text hashes, then MinHash LSH (datasketch).

Near duplicates are found against everything seen so far, so the first record of a cluster is
the one kept; the report lists each cluster with its kept record.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import numpy as np
import xxhash

_WORD = re.compile(r"\w+")
SHINGLE = 3  # word n-grams: short support texts need small shingles to register near duplicates
# Odd multipliers that combine three word hashes into one shingle hash (arithmetic wraps at 2^32).
_COMBINE = (np.uint32(0x9E3779B1), np.uint32(0x85EBCA77))
_SIGNATURE_DTYPE = np.uint8  # see Deduper: the low 8 bits of each MinHash value are kept
_CHANCE = 1 / 256  # how often the low 8 bits of two different values agree
_BLOCK = 65536  # signatures per storage block


def words_of(text: str) -> list[str]:
    """Lowercase words only: case, punctuation and spacing differences are not real differences."""
    return _WORD.findall(text.lower())


def shingle_hashes(words: list[bytes]) -> list[int]:
    """32-bit hashes of the word 3-grams of `words`.

    Each word is hashed once and neighbours are combined arithmetically: joining every 3-gram
    into a string and hashing it was a third of the per-record cost of the whole data stage.
    datasketch applies its own avalanche mix to these values before its permutations.
    """
    hashes = np.fromiter(map(xxhash.xxh32_intdigest, words), dtype=np.uint32, count=len(words))
    if len(words) < SHINGLE:
        return [xxhash.xxh32_intdigest(b" ".join(words))]
    return (hashes[:-2] * _COMBINE[0] + hashes[1:-1] * _COMBINE[1] + hashes[2:]).tolist()


@dataclass
class Match:
    kind: str  # "exact" or "near"
    of: str  # id of the record it duplicates (the cluster's kept record)
    similarity: float


@dataclass(slots=True)
class Fingerprint:
    """What identifies a text for deduplication; computed wherever the text is (worker processes).

    Plain bytes and ints, because fingerprints cross from the workers to the reading process and
    pickling a numpy array per record cost more than computing it.
    """

    key: int  # hash of the normalised text, for exact duplicates
    signature: bytes | None  # MinHash values (low 8 bits each), for the similarity estimate
    bands: list[int]  # LSH band hashes: texts sharing any band are candidates

    def __reduce__(self) -> tuple:
        return (Fingerprint, (self.key, self.signature, self.bands))  # a plain tuple pickles fastest


class _KeyIndex:
    """Hash key (of a text, or of a signature band) → indices of the kept records that have it.

    New entries go to a dict; every `flush_at` entries they move into one sorted pair of numpy
    arrays (12 bytes an entry instead of about 90 in a dict: the dicts were most of the memory on
    a million records).
    """

    def __init__(self, flush_at: int = 1 << 18) -> None:
        self.flush_at = flush_at
        self.recent: dict[int, int | list[int]] = {}
        self.keys = np.empty(0, dtype=np.uint64)
        self.values = np.empty(0, dtype=np.int32)

    def get(self, keys: list[int]) -> set[int]:
        """Indices of the records that have any of `keys`."""
        found: set[int] = set()
        for key in keys:
            hit = self.recent.get(key)
            if hit is not None:
                found.update(hit) if isinstance(hit, list) else found.add(hit)
        if self.keys.size:
            query = np.array(keys, dtype=np.uint64)
            lo = np.searchsorted(self.keys, query, "left").tolist()
            hi = np.searchsorted(self.keys, query, "right").tolist()
            for start, end in zip(lo, hi, strict=True):
                if end > start:
                    found.update(self.values[start:end].tolist())
        return found

    def add(self, keys: list[int], index: int) -> None:
        """Record that the record `index` has `keys`."""
        for key in keys:
            hit = self.recent.setdefault(key, index)  # a bare int until a second record shares it
            if hit != index:
                if isinstance(hit, list):
                    hit.append(index)
                else:
                    self.recent[key] = [hit, index]
        if len(self.recent) >= self.flush_at:
            self.flush()

    def flush(self) -> None:
        pairs = [(k, v) for k, hit in self.recent.items() for v in (hit if isinstance(hit, list) else (hit,))]
        keys = np.fromiter((k for k, _ in pairs), dtype=np.uint64, count=len(pairs))
        values = np.fromiter((v for _, v in pairs), dtype=np.int32, count=len(pairs))
        order = np.argsort(keys, kind="stable")
        keys, values = keys[order], values[order]
        # Merge into the sorted arrays by position: a new entry lands after the equal old ones, so
        # indices of one key stay in insertion order. No sort of the whole (it held 3 copies).
        at = np.searchsorted(self.keys, keys, side="right") + np.arange(len(keys))
        old = np.ones(len(self.keys) + len(keys), dtype=bool)
        old[at] = False
        merged_keys = np.empty(len(old), dtype=np.uint64)
        merged_values = np.empty(len(old), dtype=np.int32)
        merged_keys[at], merged_values[at] = keys, values
        merged_keys[old], merged_values[old] = self.keys, self.values
        self.keys, self.values, self.recent = merged_keys, merged_values, {}


@dataclass
class Deduper:
    """Finds duplicates of records seen before. `add()` returns a Match or None (and remembers the record).

    datasketch computes the MinHash signatures and chooses the LSH banding (b bands of r rows) that
    best separates the threshold. The band index is our own (`_KeyIndex`), keyed by 64-bit band
    hashes computed with the signature, so the order-dependent part (query, insert) is a few dict
    and array lookups: datasketch's own index cost 150 µs per record in the single-threaded stage.
    """

    exact: bool = True
    near: bool = True
    threshold: float = 0.85
    num_perm: int = 128
    seed: int = 1
    _ids: list[str] = field(default_factory=list)  # of the kept records, by index

    def __post_init__(self) -> None:
        from datasketch import MinHash, MinHashLSH

        params = MinHashLSH(threshold=self.threshold, num_perm=self.num_perm)
        self._bands, self._rows = params.b, params.r
        self._index, self._exact_index = _KeyIndex(), _KeyIndex()
        # The shingles arrive already hashed (`shingle_hashes`), so datasketch's hash is the identity.
        self._template = MinHash(num_perm=self.num_perm, seed=self.seed, hashfunc=int)
        # A band's hash is a random linear form of its values (wrapping at 2^64), different for
        # each band so equal values in two bands never share a key: one numpy expression for all
        # bands instead of hashing each band's bytes.
        rng = np.random.default_rng(self.seed)
        odd = rng.integers(0, 2**63, size=(self._bands, self._rows), dtype=np.uint64) * np.uint64(2) + np.uint64(1)
        self._band_mix = odd
        # Signatures of kept records, in blocks so growing never copies them all. Only the low 8
        # bits of each value are kept (a quarter of the memory): two different minima then agree by
        # chance 1 time in 256, which `find` takes out of the estimate.
        self._blocks: list[np.ndarray] = []

    def fingerprint(self, text: str) -> Fingerprint:
        """Pure: safe to compute in worker processes."""
        normalized = " ".join(words_of(text)).encode()
        key = xxhash.xxh64_intdigest(normalized)
        if not self.near:
            return Fingerprint(key, None, [])
        m = self._template  # reused: clear() is far cheaper than copy() per record
        m.clear()
        m.update_batch(shingle_hashes(normalized.split()))
        values = m.hashvalues[: self._bands * self._rows].astype(np.uint64).reshape(self._bands, self._rows)
        bands = (values * self._band_mix).sum(axis=1).tolist()
        return Fingerprint(key, m.hashvalues.astype(_SIGNATURE_DTYPE).tobytes(), bands)

    def find(self, fp: Fingerprint) -> Match | None:
        """The earlier record this fingerprint duplicates, without remembering it."""
        if self.exact:
            kept = self._exact_index.get([fp.key])
            if kept:
                return Match("exact", self._ids[min(kept)], 1.0)
        if self.near and fp.signature is not None:
            candidates = self._index.get(fp.bands)
            if candidates:
                # Candidates share a band; the signature agreement estimates Jaccard well enough to
                # keep precision high at the threshold.
                ordered = sorted(candidates)
                signature = np.frombuffer(fp.signature, dtype=_SIGNATURE_DTYPE)
                agreement = (np.stack([self._signature(i) for i in ordered]) == signature).sum(axis=1)
                best = int(np.argmax(agreement))
                similarity = max(0.0, (float(agreement[best]) / self.num_perm - _CHANCE) / (1 - _CHANCE))
                if similarity >= self.threshold:
                    return Match("near", self._ids[ordered[best]], similarity)
        return None

    def remember(self, record_id: str, fp: Fingerprint) -> None:
        index = len(self._ids)
        self._ids.append(record_id)
        if self.exact:
            self._exact_index.add([fp.key], index)
        if self.near and fp.signature is not None:
            block, row = divmod(index, _BLOCK)
            if block == len(self._blocks):
                self._blocks.append(np.empty((_BLOCK, self.num_perm), dtype=_SIGNATURE_DTYPE))
            self._blocks[block][row] = np.frombuffer(fp.signature, dtype=_SIGNATURE_DTYPE)
            self._index.add(fp.bands, index)

    def release(self) -> None:
        """Forget every record seen (frees the index); the deduper starts empty again."""
        self._ids, self._blocks, self._index, self._exact_index = [], [], _KeyIndex(), _KeyIndex()

    def _signature(self, index: int) -> np.ndarray:
        block, row = divmod(index, _BLOCK)
        return self._blocks[block][row]

    def add(self, record_id: str, text: str) -> Match | None:
        """Check `text` against everything kept so far; keep it when it is new."""
        fp = self.fingerprint(text)
        match = self.find(fp)
        if match is None:
            self.remember(record_id, fp)
        return match
