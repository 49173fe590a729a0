"""`tuneloop eval` on classifier runs: metrics, per-class intervals, confusion matrix, calibration, base vs tuned."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tests.classify_helpers import ALL_WORDS, make_classify_project
from tuneloop import config
from tuneloop.errors import UserError
from tuneloop.evaluate import classify as eval_classify
from tuneloop.tiny import make_tiny_bert
from tuneloop.train import classify


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory: pytest.TempPathFactory):
    """A full fine-tune of the tiny BERT on the topic fixture, evaluated against the base's linear probe."""
    root = tmp_path_factory.mktemp("cls-eval")
    model = make_tiny_bert(root / "bert", ALL_WORDS)
    cfg_path = make_classify_project(root / "project", model, method="full", learning_rate=0.005)
    cfg = config.load(cfg_path, ["eval.bootstrap=200"])
    run = classify.train(cfg)
    result = eval_classify.evaluate(cfg, [run.run_dir])
    return cfg, run, result


def test_the_report_holds_every_classification_figure(evaluated):
    _cfg, run, result = evaluated
    r = json.loads((result.out_dir / "metrics.json").read_text())
    n = r["test"]["examples"]
    assert r["labels"] == ["billing", "tech", "travel"]
    assert r["systems"] == [eval_classify.BASE, run.run_dir.name]
    assert set(r["comparisons"][run.run_dir.name]) == {"accuracy", "f1", "ece"}
    for name in r["systems"]:
        matrix = np.array(r["confusion"][name])
        assert matrix.shape == (3, 3) and matrix.sum() == n
        assert r["metrics"][name]["accuracy"]["value"] == pytest.approx(np.trace(matrix) / n)
        rows = r["per_class"][name]
        assert [row["support"] for row in rows] == matrix.sum(1).tolist()
        assert [row["predicted"] for row in rows] == matrix.sum(0).tolist()
        for row in rows:
            for m in ("precision", "recall", "f1"):
                low, high = row[m]["ci"]
                assert low <= row[m]["value"] <= high
        assert 0 <= r["calibration"][name]["ece"] <= 1
        assert sum(b["n"] for b in r["calibration"][name]["bins"]) == n
    html = (result.out_dir / "report.html").read_text()
    assert "Per class" in html and html.count("data:image/png;base64,") >= 3  # loss, 2 confusion, reliability
    outputs = [json.loads(line) for line in (result.out_dir / "outputs.jsonl").open()]
    assert len(outputs) == n
    probabilities = outputs[0]["predictions"][run.run_dir.name]["probabilities"]
    assert sum(probabilities.values()) == pytest.approx(1.0, abs=1e-5)


def test_both_the_base_probe_and_the_tuned_run_beat_the_majority_class(evaluated):
    _cfg, _run, result = evaluated
    r = result.report
    majority = max(row["support"] for row in r["per_class"][eval_classify.BASE]) / r["test"]["examples"]
    for name in r["systems"]:
        assert r["metrics"][name]["accuracy"]["value"] > majority + 0.15, name


def test_expected_calibration_error_follows_its_definition():
    probs = np.array([[0.9, 0.1], [0.8, 0.2], [0.35, 0.65], [0.55, 0.45]])
    truth = np.array([0, 1, 1, 0])
    c = eval_classify.calibration(probs, truth, bins=10)
    # bins: 0.9 → [0.9, 1.0): right; 0.8 → [0.8, 0.9): wrong; 0.65 → [0.6, 0.7): right; 0.55 → [0.5, 0.6): right.
    expected = (abs(1 - 0.9) + abs(0 - 0.8) + abs(1 - 0.65) + abs(1 - 0.55)) / 4
    assert c["ece"] == pytest.approx(expected)
    assert [b["n"] for b in c["bins"]] == [1, 1, 1, 1]


def test_macro_scores_resample_with_the_paired_indices():
    truth = np.array([0, 0, 1, 1, 2, 2])
    probs = np.eye(3)[[0, 1, 1, 1, 2, 0]]
    scores = eval_classify.system_scores(probs, truth)
    from sklearn.metrics import f1_score

    assert scores["f1"].value == pytest.approx(f1_score(truth, probs.argmax(1), average="macro"))
    idx = np.array([0, 0, 2, 3, 4, 4])
    assert scores["f1"].resample(idx) == pytest.approx(
        f1_score(truth[idx], probs.argmax(1)[idx], labels=[0, 1, 2], average="macro", zero_division=0)
    )
    assert scores["accuracy"].value == pytest.approx(4 / 6)


def test_a_run_that_is_not_a_classifier_is_refused(evaluated, tmp_path):
    cfg, run, _ = evaluated
    other = tmp_path / "not-a-classifier"
    other.mkdir()
    (other / "config.resolved.yaml").write_text((run.run_dir / "config.resolved.yaml").read_text())
    with pytest.raises(UserError, match="not a classifier run"):
        eval_classify.evaluate(cfg, [other])


def test_tuneloop_eval_prints_the_classifier_verdict(evaluated, cli):
    cfg, run, _ = evaluated
    result = cli(
        "eval",
        "--config",
        cfg.root / "tuneloop.yaml",
        "--run",
        str(run.run_dir),
        "--set",
        "eval.bootstrap=100",
        "--out",
        str(Path(cfg.root) / "e"),
    )
    assert result.code == 0, result.err
    assert f"{run.run_dir.name} vs base" in result.out
    assert "accuracy" in result.out and "ece" in result.out and "lowest F1" in result.out
