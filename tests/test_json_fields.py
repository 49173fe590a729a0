"""json_match compares JSON values, and the report says which field of a JSON record fails."""

from __future__ import annotations

import numpy as np
import pytest

from tuneloop.errors import UserError
from tuneloop.evaluate.compare import bootstrap_indices
from tuneloop.evaluate.json_fields import field_report, field_scores, object_fields
from tuneloop.evaluate.metrics import compute

REFERENCE = '{"category":"refund","priority":"high","product":null,"order_id":"ORD-12345"}'


def json_match(predictions: list[str], references: list[str]) -> np.ndarray:
    n = len(predictions)
    ids = [f"test.jsonl:{i + 1}" for i in range(n)]
    return compute("json_match", ids=ids, prompts=[""] * n, predictions=predictions, references=references).per_example


def test_json_match_ignores_key_order_and_whitespace_where_exact_match_does_not():
    reordered = '{ "order_id": "ORD-12345",\n  "product": null, "priority": "high", "category": "refund" }'
    n = 1
    exact = compute("exact_match", ids=["a"], prompts=[""] * n, predictions=[reordered], references=[REFERENCE])
    assert exact.per_example.tolist() == [0.0]
    assert json_match([reordered], [REFERENCE]).tolist() == [1.0]


def test_json_match_counts_wrong_values_types_and_unparsed_outputs_as_wrong():
    predictions = [
        REFERENCE.replace("high", "low"),  # a wrong value
        REFERENCE.replace('"ORD-12345"', "12345"),  # a string became a number
        REFERENCE.replace("null", '"null"'),  # null became a string
        REFERENCE + " thanks!",  # trailing text: not JSON as a whole
        REFERENCE.replace(',"order_id":"ORD-12345"', ""),  # a missing key
        '{"category":"refund","priority":"high","product":null,"order_id":"ORD-12345","extra":1}',
        '{"n": true}',
        '{"n": 1.0}',
    ]
    references = [REFERENCE] * 6 + ['{"n": 1}', '{"n": 1}']
    assert json_match(predictions, references).tolist() == [0, 0, 0, 0, 0, 0, 0, 1]


def test_json_match_refuses_references_that_are_not_json():
    with pytest.raises(UserError, match=r"json_match compares JSON values.*test.jsonl:2"):
        json_match(['{"a": 1}', '{"a": 1}'], ['{"a": 1}', "plain words"])


def test_field_scores_say_which_field_fails():
    references = [REFERENCE, REFERENCE.replace("refund", "billing"), REFERENCE]
    predictions = [
        REFERENCE.replace("high", "urgent"),  # only priority wrong
        '{"order_id":"ORD-12345","product":null,"priority":"high","category":"billing"}',  # right, reordered
        "not json",  # every field wrong
    ]
    fields = object_fields(references)
    assert fields == ["category", "priority", "product", "order_id"]
    scores = field_scores(predictions, references, fields)
    assert {f: s.tolist() for f, s in scores.items()} == {
        "category": [1, 1, 0],
        "priority": [0, 1, 0],
        "product": [1, 1, 0],
        "order_id": [1, 1, 0],
    }


def test_a_field_absent_from_the_reference_must_be_absent_from_the_output():
    scores = field_scores(['{"a": 1}', '{"a": 1, "b": null}'], ['{"a": 1}', '{"a": 1}'], ["a", "b"])
    assert scores["b"].tolist() == [1, 0]


def test_field_report_is_absent_unless_every_reference_is_a_json_object():
    indices = bootstrap_indices(2, 50, 0)
    assert field_report(['{"a": 1}', "[1]"], {"base": ["", ""]}, "base", indices, 0.95) is None
    assert field_report(['{"a": 1}', "text"], {"base": ["", ""]}, "base", indices, 0.95) is None


def test_field_report_compares_each_field_of_each_run_with_the_base():
    references = [REFERENCE.replace("ORD-12345", f"ORD-{10000 + i}") for i in range(40)]
    base = ['{"category":"refund"}'] * 40  # right category, nothing else
    tuned = [r.replace("high", "low") if i % 4 == 0 else r for i, r in enumerate(references)]
    report = field_report(references, {"base": base, "tuned": tuned}, "base", bootstrap_indices(40, 500, 0), 0.95)
    assert report is not None
    assert report["accuracy"]["base"] == {"category": 1.0, "priority": 0.0, "product": 0.0, "order_id": 0.0}
    assert report["accuracy"]["tuned"]["priority"] == pytest.approx(0.75)
    assert set(report["comparisons"]) == {"tuned"}
    category, priority = report["comparisons"]["tuned"]["category"], report["comparisons"]["tuned"]["priority"]
    assert category["delta"] == 0 and category["verdict"] == "no significant change"
    assert priority["delta"] == pytest.approx(0.75) and priority["verdict"] == "better"
    assert priority["ci_low"] > 0.5
