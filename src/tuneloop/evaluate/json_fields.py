"""JSON answers compared as values: `json_match`, and accuracy per field of a JSON record.

`exact_match` compares stripped strings, so `{"a": 1, "b": 2}` and `{"b":2,"a":1}` differ. For a
task whose answers are JSON, what matters is the value: `json_match` parses both sides (strict JSON,
as `json_valid` does) and compares the parsed values, so key order and whitespace are never errors.

When every reference is a JSON object, `field_scores` says which field fails: for each key of the
references, the share of examples whose output is a JSON object with the same value under that key
(an output that does not parse is wrong on every field). The report shows these per field for base
and tuned, with the same paired-bootstrap intervals as the task metrics.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from tuneloop.data.json_values import field_scores, object_fields, parse_strict, same_value
from tuneloop.errors import UserError

# How many example ids a failure list names; the counts are always complete.
_MAX_LISTED = 5


def parse_references(ids: list[str], references: list[str], metric: str) -> list[Any]:
    """Every reference parsed as JSON; a UserError naming the ones that are not (the metric would be meaningless)."""
    parsed, bad = [], []
    for example_id, reference in zip(ids, references, strict=True):
        value, ok = parse_strict(reference)
        parsed.append(value)
        if not ok:
            bad.append(example_id)
    if bad:
        raise UserError(
            f"metric {metric} compares JSON values, but {len(bad)} reference answer(s) are not strict JSON "
            f"(e.g. {', '.join(bad[:_MAX_LISTED])}); fix those rows or use exact_match"
        )
    return parsed


def json_match(ids: list[str], predictions: list[str], references: list[str]) -> tuple[np.ndarray, dict[str, Any]]:
    """Per example 1 when the output parses as strict JSON equal in value to the reference, else 0."""
    expected = parse_references(ids, references, "json_match")
    per_example, unparsed, wrong = [], [], []
    for example_id, prediction, reference in zip(ids, predictions, expected, strict=True):
        value, ok = parse_strict(prediction)
        right = ok and same_value(value, reference)
        per_example.append(float(right))
        if not ok:
            unparsed.append(example_id)
        elif not right:
            wrong.append(example_id)
    details = {"unparsed": len(unparsed), "wrong_value": len(wrong), "first_wrong": (unparsed + wrong)[:_MAX_LISTED]}
    return np.asarray(per_example, dtype=np.float64), details


def field_report(
    references: list[str],
    answers: dict[str, list[str]],
    baseline: str,
    indices: np.ndarray,
    confidence: float,
) -> dict[str, Any] | None:
    """Per-field accuracy of each system's answers and each run's paired-bootstrap change against `baseline`.

    `answers` maps a system name to its outputs, parallel to `references`. None when the references
    are not all JSON objects (the task is not a JSON record extraction).
    """
    from tuneloop.evaluate.compare import MeanScores, compare

    fields = object_fields(references)
    if fields is None:
        return None
    per_system = {name: field_scores(outputs, references, fields) for name, outputs in answers.items()}
    base = per_system[baseline]

    def change(name: str, field: str) -> dict[str, Any]:
        tuned = MeanScores(field, per_system[name][field])
        return compare(MeanScores(field, base[field]), tuned, indices, confidence).to_json()

    return {
        "fields": fields,
        "accuracy": {name: {f: float(s[f].mean()) for f in fields} for name, s in per_system.items()},
        "comparisons": {name: {f: change(name, f) for f in fields} for name in per_system if name != baseline},
    }
