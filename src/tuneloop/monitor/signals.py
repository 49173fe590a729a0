"""Output signals per day, feedback rates and latency percentiles over logged requests.

The per-answer checks are the evaluation's own (the refusal phrases, the repeated-3-gram share and
the strict JSON / JSON Schema checks of `tuneloop eval`), passed in as `OutputChecks` by the caller,
so an answer is flagged in production exactly when the same answer would be flagged in an eval report.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

# Requests that ended without an answer from the model: they count as errors, not as empty answers.
FAILED = ("error", "timeout")
ANSWERED = ("stop", "length")
SIGNALS = ("empty", "truncated", "refusal", "repetition", "json_valid", "json_schema")


@dataclass
class OutputChecks:
    """How one answer is judged; built by the caller from the evaluation's checks.

    `refusal(text)` and `repetition(text)` return a bool for one answer; `json_valid(texts)` and
    `json_schema(texts)` return one 0/1 score per answer, or are None when the task has no JSON output
    (no JSON Schema, respectively).
    """

    refusal: Callable[[str], bool]
    repetition: Callable[[str], bool]
    json_valid: Callable[[list[str]], list[float]] | None = None
    json_schema: Callable[[list[str]], list[float]] | None = None


def day_of(time: str) -> str:
    """The UTC day (YYYY-MM-DD) of an ISO timestamp in UTC."""
    return time[:10]


def output_signals(rows: Iterable[Mapping[str, Any]], checks: OutputChecks) -> dict[str, Any]:
    """Counts per day and over the window: requests, errors, answers and each signal among answers.

    Rates are over answered requests (finish_reason stop or length); a cancelled request (the client
    went away) is neither an answer nor an error. JSON counts appear only when `checks` has them.
    """
    days: dict[str, list[Mapping[str, Any]]] = {}
    for row in rows:
        days.setdefault(day_of(row["time"]), []).append(row)
    per_day = {day: _count(days[day], checks) for day in sorted(days)}
    total = _count([r for day in days.values() for r in day], checks)
    return {"per_day": per_day, "total": total, "rates": rates(total)}


def _count(rows: list[Mapping[str, Any]], checks: OutputChecks) -> dict[str, int]:
    answers = [r["output"] or "" for r in rows if r["finish_reason"] in ANSWERED]
    counts = {
        "requests": len(rows),
        "errors": sum(r["finish_reason"] in FAILED for r in rows),
        "cancelled": sum(r["finish_reason"] == "cancelled" for r in rows),
        "answers": len(answers),
        "empty": sum(not a.strip() for a in answers),
        "truncated": sum(r["finish_reason"] == "length" for r in rows),
        "refusal": sum(bool(checks.refusal(a)) for a in answers),
        "repetition": sum(bool(checks.repetition(a)) for a in answers),
    }
    for name in ("json_valid", "json_schema"):
        check = getattr(checks, name)
        if check is not None:
            counts[name] = int(sum(check(answers))) if answers else 0
    return counts


def rates(counts: Mapping[str, int]) -> dict[str, float | None]:
    """Each signal as a share of answers (errors as a share of requests); None when there is nothing to share."""
    out: dict[str, float | None] = {"errors": counts["errors"] / counts["requests"] if counts["requests"] else None}
    for name in SIGNALS:
        if name in counts:
            out[name] = counts[name] / counts["answers"] if counts["answers"] else None
    return out


def feedback_rates(response_ids: Iterable[str], feedback: Mapping[str, Any]) -> dict[str, Any]:
    """Thumbs up/down and corrections among the responses in the window (the latest feedback per response)."""
    given = [feedback[i] for i in response_ids if i in feedback]
    up = sum(f["rating"] == "up" for f in given)
    down = sum(f["rating"] == "down" for f in given)
    corrected = sum(bool((f["correction"] or "").strip()) for f in given)
    rated = up + down
    return {
        "with_feedback": len(given),
        "rated": rated,
        "up": up,
        "down": down,
        "corrected": corrected,
        "up_rate": up / rated if rated else None,
        "down_rate": down / rated if rated else None,
        "corrected_rate": corrected / len(given) if given else None,
    }


def latency(values: Iterable[float]) -> dict[str, float | None]:
    """p50, p95 and p99 of request latency in seconds (None without requests)."""
    a = np.asarray([v for v in values if v is not None], dtype=float)
    if len(a) == 0:
        return {"n": 0, "p50": None, "p95": None, "p99": None}
    p50, p95, p99 = np.percentile(a, [50, 95, 99])
    return {"n": len(a), "p50": float(p50), "p95": float(p95), "p99": float(p99)}
