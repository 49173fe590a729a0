"""JSON answers as values: strict parsing, equality as JSON, and which fields of a record are right.

Shared by the eval stage (`json_match`, per-field accuracy: evaluate/json_fields.py) and the `json_fields`
reward (train/rewards.py), so "a field is right" has one definition.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np


def _reject_constant(token: str) -> Any:
    raise ValueError(f"{token} is not valid JSON")


def parse_strict(text: str) -> tuple[Any, bool]:
    """(value, True) when the whole stripped text is strict JSON (no NaN/Infinity), else (None, False)."""
    try:
        return json.loads(text.strip(), parse_constant=_reject_constant), True
    except ValueError:  # JSONDecodeError is a ValueError
        return None, False


def same_value(a: Any, b: Any) -> bool:
    """Equal as JSON values: 1 and 1.0 are the same number, but true is not 1 (Python says it is)."""
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a == b
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same_value(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(same_value(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, int | float) and isinstance(b, int | float):
        return a == b
    return type(a) is type(b) and a == b


def object_fields(references: list[str]) -> list[str] | None:
    """The keys of the reference records, in first-seen order, when every reference is a JSON object; else None."""
    keys: dict[str, None] = {}
    for reference in references:
        value, ok = parse_strict(reference or "")
        if not ok or not isinstance(value, dict):
            return None
        keys.update(dict.fromkeys(value))
    return list(keys) or None


def field_scores(predictions: list[str], references: list[str], fields: list[str]) -> dict[str, np.ndarray]:
    """{field: per-example 1/0}: the output is a JSON object whose value under the field equals the reference's.

    A reference without the field expects it absent: the output is right when it lacks it too.
    """
    outputs = [parse_strict(p) for p in predictions]
    expected = [json.loads(r) for r in references]
    missing = object()
    scores: dict[str, np.ndarray] = {}
    for name in fields:
        row = []
        for (value, ok), reference in zip(outputs, expected, strict=True):
            if not ok or not isinstance(value, dict):
                row.append(0.0)
                continue
            want, got = reference.get(name, missing), value.get(name, missing)
            row.append(float(want is got if missing in (want, got) else same_value(got, want)))
        scores[name] = np.asarray(row, dtype=np.float64)
    return scores
