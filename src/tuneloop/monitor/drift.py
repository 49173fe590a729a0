"""Drift statistics: do the logged prompts still look like the training prompts?

Three views, each a plain function on plain data (lists of numbers, strings, embedding arrays):

- `length_shift`: input lengths, two-sample Kolmogorov–Smirnov test (scipy);
- `new_terms`: words in traffic never seen in training, their share and the most frequent ones;
- `mmd_test`: embedding drift as a kernel two-sample test. The statistic is the (biased, V-statistic)
  squared Maximum Mean Discrepancy with a Gaussian kernel whose width is the median pairwise distance of
  the pooled sample (the median heuristic); its p-value comes from random relabellings of the pooled
  sample (a permutation test), so it is exact at any sample size: on traffic from the training
  distribution, p <= alpha happens with probability at most alpha. The witness function
  (mean kernel to traffic minus mean kernel to training) ranks the prompts that drifted most.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

# A word is a run of letters, with inner apostrophes or hyphens ("don't", "e-mail"); digits and
# punctuation are not words, so order numbers, amounts and dates never count as new terms.
_WORD = re.compile(r"[^\W\d_]+(?:['’-][^\W\d_]+)*")


def words(text: str) -> list[str]:
    """The lowercased words of `text` (letters only; see `_WORD`)."""
    return _WORD.findall(text.lower())


@dataclass
class LengthShift:
    """Input lengths of traffic against training, and the KS test between them."""

    unit: str  # "tokens" (the project's tokenizer) or "characters"
    traffic_median: float
    traffic_p95: float
    train_median: float
    train_p95: float
    statistic: float  # the KS distance: the largest gap between the two empirical CDFs
    p_value: float


def length_shift(traffic: Iterable[float], train: Iterable[float], unit: str) -> LengthShift:
    """Compare two samples of lengths with scipy's two-sample Kolmogorov–Smirnov test."""
    from scipy.stats import ks_2samp

    a, b = np.asarray(list(traffic), dtype=float), np.asarray(list(train), dtype=float)
    if len(a) == 0 or len(b) == 0:
        raise ValueError("length_shift needs at least one length on each side")
    result = ks_2samp(a, b)
    return LengthShift(
        unit=unit,
        traffic_median=float(np.median(a)),
        traffic_p95=float(np.percentile(a, 95)),
        train_median=float(np.median(b)),
        train_p95=float(np.percentile(b, 95)),
        statistic=float(result.statistic),
        p_value=float(result.pvalue),
    )


@dataclass
class NewTerms:
    """Words of the traffic prompts that no training prompt contains."""

    rate: float  # new word occurrences / all word occurrences in traffic
    new_words: int
    traffic_words: int
    distinct_new: int
    top: list[tuple[str, int]]  # the most frequent new terms, with their counts


def new_terms(traffic: Iterable[str], train: Iterable[str], top: int = 20) -> NewTerms:
    """Share of traffic words (see `words`) never seen in `train`, and the `top` most frequent of them."""
    vocabulary = {w for text in train for w in words(text)}
    counts = Counter(w for text in traffic for w in words(text))
    new = Counter({w: c for w, c in counts.items() if w not in vocabulary})
    total, unseen = sum(counts.values()), sum(new.values())
    ranked = sorted(new.items(), key=lambda item: (-item[1], item[0]))[:top]
    return NewTerms(unseen / total if total else 0.0, unseen, total, len(new), ranked)


@dataclass
class MmdResult:
    """The kernel two-sample test of traffic embeddings against training embeddings."""

    mmd2: float  # squared MMD (V-statistic) of the observed split
    p_value: float  # (1 + permuted statistics >= observed) / (1 + permutations)
    bandwidth: float  # the Gaussian kernel's sigma (median pairwise distance of the pooled sample)
    permutations: int
    witness: np.ndarray  # per traffic point: mean kernel to traffic − mean kernel to training


def mmd_test(traffic: np.ndarray, train: np.ndarray, permutations: int = 500, seed: int = 0) -> MmdResult:
    """Permutation test of H0 "traffic and train come from the same distribution" with the RBF-kernel MMD."""
    x, y = np.asarray(traffic, dtype=np.float64), np.asarray(train, dtype=np.float64)
    m, n = len(x), len(y)
    if m < 2 or n < 2:
        raise ValueError("mmd_test needs at least two points on each side")
    z = np.concatenate([x, y])
    norms = (z * z).sum(axis=1)
    sq = np.maximum(norms[:, None] + norms[None, :] - 2 * z @ z.T, 0.0)
    # The bandwidth depends on the pooled sample only, so it is the same under every relabelling
    # and the permutation test stays exact.
    pairs = sq[np.triu_indices(len(z), k=1)]
    sigma2 = float(np.median(pairs))
    if sigma2 <= 0:  # more than half the pairs coincide: fall back to the mean distance, or 1
        sigma2 = float(pairs.mean()) or 1.0
    kernel = np.exp(-sq / (2 * sigma2))

    # With weights s = (1/m on traffic, −1/n on training), MMD² (V-statistic) = sᵀ K s; a relabelling
    # permutes s, so all permutations are one matrix product.
    s = np.concatenate([np.full(m, 1 / m), np.full(n, -1 / n)])
    observed = float(s @ kernel @ s)
    rng = np.random.default_rng(seed)
    shuffled = np.stack([rng.permutation(s) for _ in range(permutations)], axis=1)
    null = np.einsum("ib,ib->b", shuffled, kernel @ shuffled)
    # Ties count against the alarm (a float rounding of the observed value must not win).
    exceed = int((null >= observed - 1e-12 * max(1.0, abs(observed))).sum())
    witness = kernel[:m, :m].mean(axis=1) - kernel[:m, m:].mean(axis=1)
    return MmdResult(observed, (1 + exceed) / (1 + permutations), float(np.sqrt(sigma2)), permutations, witness)


def sample_indices(count: int, size: int, seed: int) -> np.ndarray:
    """A seeded sample of min(size, count) indices out of `count`, in increasing order."""
    if count <= size:
        return np.arange(count)
    return np.sort(np.random.default_rng(seed).choice(count, size=size, replace=False))
