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
    words = normalized.split()
    if len(words) < SHINGLE:
        return [w.encode() for w in words] or [b""]
    return [" ".join(words[i : i + SHINGLE]).encode() for i in range(len(words) - SHINGLE + 1)]


def _hash64(data: bytes) -> int:
    return xxhash.xxh64_intdigest(data) & 0xFFFFFFFF


@dataclass
class Match:
    kind: str  # "exact" or "near"
    of: str  # id of the record it duplicates (the cluster's kept record)
    similarity: float


@dataclass
class Deduper:
    """Finds duplicates of records seen before. `add()` returns a Match or None (and remembers the record)."""

    exact: bool = True
    near: bool = True
    threshold: float = 0.85
    num_perm: int = 128
    seed: int = 1
    _exact: dict[int, str] = field(default_factory=dict)
    _ids: list[str] = field(default_factory=list)
    _signatures: list[np.ndarray] = field(default_factory=list)

    def __post_init__(self) -> None:
        from datasketch import MinHashLSH

        self._lsh = MinHashLSH(threshold=self.threshold, num_perm=self.num_perm, hashfunc=self._band_key)
        # The permutations, drawn once; MinHash objects per record would cost far more memory.
        from datasketch import MinHash

        self._template = MinHash(num_perm=self.num_perm, seed=self.seed, hashfunc=_hash64)

    @staticmethod
    def _band_key(band: bytes) -> bytes:
        return xxhash.xxh64_digest(band)  # 8 bytes per band instead of the band itself

    def signature(self, normalized: str) -> np.ndarray:
        m = self._template.copy()
        m.update_batch(shingles(normalized))
        return m.hashvalues.astype(np.uint32)  # the affine32 scheme's values fit 32 bits: half the memory

    def find(self, normalized: str, signature: np.ndarray | None) -> Match | None:
        """The earlier record this one duplicates, without remembering it."""
        if self.exact:
            kept = self._exact.get(xxhash.xxh64_intdigest(normalized.encode()))
            if kept is not None:
                return Match("exact", kept, 1.0)
        if self.near and signature is not None:
            candidates = self._lsh.query(self._minhash(signature))
            if candidates:
                # LSH candidates are probable matches; the signature agreement estimates Jaccard exactly
                # enough to keep precision high at the threshold.
                agreement = (np.stack([self._signatures[i] for i in candidates]) == signature).sum(axis=1)
                best = int(np.argmax(agreement))
                similarity = float(agreement[best]) / self.num_perm
                if similarity >= self.threshold:
                    return Match("near", self._ids[candidates[best]], similarity)
        return None

    def remember(self, record_id: str, normalized: str, signature: np.ndarray | None) -> None:
        if self.exact:
            self._exact.setdefault(xxhash.xxh64_intdigest(normalized.encode()), record_id)
        if self.near and signature is not None:
            index = len(self._ids)
            self._ids.append(record_id)
            self._signatures.append(signature)
            self._lsh.insert(index, self._minhash(signature), check_duplication=False)

    def add(self, record_id: str, text: str) -> Match | None:
        """Check `text` against everything kept so far; keep it when it is new."""
        normalized = normalize(text)
        signature = self.signature(normalized) if self.near else None
        match = self.find(normalized, signature)
        if match is None:
            self.remember(record_id, normalized, signature)
        return match

    def _minhash(self, signature: np.ndarray):
        from datasketch import LeanMinHash

        return LeanMinHash(seed=self.seed, hashvalues=signature, scheme=self._template.scheme)
