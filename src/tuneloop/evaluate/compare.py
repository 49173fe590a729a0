"""Base vs tuned on the same examples: the change in each metric and a paired bootstrap interval.

The interval is over the *difference* on resampled example sets, with the same indices for both
systems (a paired bootstrap, as in Koehn 2004): it answers "would the change survive a different
draw of test examples?". A change counts as significant only when its interval excludes 0.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Protocol

import numpy as np

MIN_EXAMPLES = 10  # below this, no change is called significant


class Resamplable(Protocol):
    """What a metric's scores must offer: the value on all examples, and on a resampled index set."""

    name: str
    value: float
    higher_is_better: bool

    def resample(self, idx: np.ndarray) -> float: ...


@dataclass
class Comparison:
    """One metric, one candidate against the baseline."""

    metric: str
    baseline: float
    candidate: float
    delta: float
    relative: float | None
    ci_low: float
    ci_high: float
    significant: bool
    verdict: str  # "better", "worse", "no significant change" or "too few examples (< 10)"
    higher_is_better: bool

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def bootstrap_indices(n: int, resamples: int = 1000, seed: int = 0) -> np.ndarray:
    """(resamples, n) example indices drawn with replacement; share them across metrics and runs."""
    return np.random.default_rng(seed).integers(0, n, size=(resamples, n))


def compare(baseline: Resamplable, candidate: Resamplable, indices: np.ndarray, confidence: float = 0.95) -> Comparison:
    """Paired bootstrap of `candidate - baseline` over the rows of `indices`."""
    diffs = np.array([candidate.resample(idx) - baseline.resample(idx) for idx in indices])
    tail = (1 - confidence) / 2 * 100
    low, high = (float(x) for x in np.percentile(diffs, [tail, 100 - tail]))
    delta = candidate.value - baseline.value
    # A handful of examples resamples into a handful of distinct sets: the interval looks narrow
    # because it cannot vary, not because the change is certain.
    enough = indices.shape[1] >= MIN_EXAMPLES
    significant = enough and (low > 0 or high < 0)
    improved = (delta > 0) == baseline.higher_is_better
    if not enough:
        verdict = f"too few examples (< {MIN_EXAMPLES})"
    else:
        verdict = ("better" if improved else "worse") if significant else "no significant change"
    return Comparison(
        metric=baseline.name,
        baseline=baseline.value,
        candidate=candidate.value,
        delta=delta,
        relative=delta / abs(baseline.value) if baseline.value else None,
        ci_low=low,
        ci_high=high,
        significant=significant,
        verdict=verdict,
        higher_is_better=baseline.higher_is_better,
    )


@dataclass
class MeanScores:
    """Per-example scores whose corpus value is their (weighted) mean.

    Perplexity is `exp_mean` over per-example mean NLLs weighted by token counts, so a resample
    gives exp(total NLL / total tokens) of the drawn examples, as the corpus value does.
    """

    name: str
    per_example: np.ndarray
    higher_is_better: bool = True
    weights: np.ndarray | None = None
    exp_mean: bool = False

    @property
    def value(self) -> float:
        return self.resample(np.arange(len(self.per_example)))

    def resample(self, idx: np.ndarray) -> float:
        if self.weights is None:
            mean = float(self.per_example[idx].mean())
        else:
            w = self.weights[idx]
            mean = float((self.per_example[idx] * w).sum() / max(w.sum(), 1e-12))
        return float(np.exp(mean)) if self.exp_mean else mean
