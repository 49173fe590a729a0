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


def normalize(text: str) -> str:
    """Lowercase words only: case, punctuation and spacing differences are not real differences."""
    return " ".join(_WORD.findall(text.lower()))


def shingles(normalized: str) -> list[bytes]:
    words = normalized.encode().split()
    if len(words) < SHINGLE:
        return words or [b""]
    return [b" ".join(words[i : i + SHINGLE]) for i in range(len(words) - SHINGLE + 1)]


@dataclass
class Match:
    kind: str  # "exact" or "near"
    of: str  # id of the record it duplicates (the cluster's kept record)
    similarity: float


@dataclass(slots=True)
class Fingerprint:
    """What identifies a text for deduplication; computed wherever the text is (worker processes)."""

    key: int  # hash of the normalised text, for exact duplicates
    signature: np.ndarray | None  # MinHash values, for the similarity estimate
    bands: tuple[int, ...]  # LSH band hashes: texts sharing any band are candidates


@dataclass
class Deduper:
    """Finds duplicates of records seen before. `add()` returns a Match or None (and remembers the record).

    datasketch computes the MinHash signatures and chooses the LSH banding (b bands of r rows) that
    best separates the threshold. The band index itself is a dict per band keyed by 64-bit band
    hashes computed with the signature, so the order-dependent part (query, insert) is a few dict
    operations: datasketch's own index cost 150 µs per record in the single-threaded stage.
    """

    exact: bool = True
    near: bool = True
    threshold: float = 0.85
    num_perm: int = 128
    seed: int = 1
    _exact: dict[int, str] = field(default_factory=dict)
    _ids: list[str] = field(default_factory=list)
    _signatures: list[np.ndarray] = field(default_factory=list)

    def __post_init__(self) -> None:
        from datasketch import MinHash, MinHashLSH

        params = MinHashLSH(threshold=self.threshold, num_perm=self.num_perm)
        self._bands, self._rows = params.b, params.r
        self._tables: list[dict[int, int | list[int]]] = [{} for _ in range(self._bands)]
        # xxh32 is passed directly: datasketch calls it once per shingle, and a Python wrapper there
        # was the single largest cost of the whole data stage.
        self._template = MinHash(num_perm=self.num_perm, seed=self.seed, hashfunc=xxhash.xxh32_intdigest)

    def fingerprint(self, text: str) -> Fingerprint:
        """Pure: safe to compute in worker processes."""
        normalized = normalize(text)
        if not self.near:
            return Fingerprint(xxhash.xxh64_intdigest(normalized.encode()), None, ())
        m = self._template  # reused: clear() is far cheaper than copy() per record
        m.clear()
        m.update_batch(shingles(normalized))
        signature = m.hashvalues.astype(np.uint32)  # the affine32 scheme's values fit 32 bits: half the memory
        r = self._rows
        bands = tuple(xxhash.xxh64_intdigest(signature[i * r : (i + 1) * r].tobytes()) for i in range(self._bands))
        return Fingerprint(xxhash.xxh64_intdigest(normalized.encode()), signature, bands)

    def find(self, fp: Fingerprint) -> Match | None:
        """The earlier record this fingerprint duplicates, without remembering it."""
        if self.exact:
            kept = self._exact.get(fp.key)
            if kept is not None:
                return Match("exact", kept, 1.0)
        if self.near and fp.signature is not None:
            candidates: set[int] = set()
            for table, band in zip(self._tables, fp.bands, strict=True):
                hit = table.get(band)
                if hit is not None:
                    candidates.update(hit) if isinstance(hit, list) else candidates.add(hit)
            if candidates:
                # Candidates share a band; the signature agreement estimates Jaccard well enough to
                # keep precision high at the threshold.
                ordered = sorted(candidates)
                agreement = (np.stack([self._signatures[i] for i in ordered]) == fp.signature).sum(axis=1)
                best = int(np.argmax(agreement))
                similarity = float(agreement[best]) / self.num_perm
                if similarity >= self.threshold:
                    return Match("near", self._ids[ordered[best]], similarity)
        return None

    def remember(self, record_id: str, fp: Fingerprint) -> None:
        if self.exact:
            self._exact.setdefault(fp.key, record_id)
        if self.near and fp.signature is not None:
            index = len(self._ids)
            self._ids.append(record_id)
            self._signatures.append(fp.signature)
            for table, band in zip(self._tables, fp.bands, strict=True):
                hit = table.setdefault(band, index)  # a bare int until a second record shares the bucket
                if hit != index:
                    if isinstance(hit, list):
                        hit.append(index)
                    else:
                        table[band] = [hit, index]

    def add(self, record_id: str, text: str) -> Match | None:
        """Check `text` against everything kept so far; keep it when it is new."""
        fp = self.fingerprint(text)
        match = self.find(fp)
        if match is None:
            self.remember(record_id, fp)
        return match
