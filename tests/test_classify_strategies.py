"""`tuneloop compare-strategies`: each strategy trained in its own process, evaluated together, in one table."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.classify_helpers import ALL_WORDS, make_classify_project
from tuneloop import config, registry
from tuneloop.errors import UserError
from tuneloop.strategies import parse_learning_rates
from tuneloop.tiny import make_tiny_bert


def test_compare_strategies_trains_each_strategy_and_writes_one_table(tmp_path, cli):
    model = make_tiny_bert(tmp_path / "bert", ALL_WORDS)
    cfg_path = make_classify_project(tmp_path / "p", model, max_steps=20)
    out = tmp_path / "cmp"
    result = cli(
        "compare-strategies",
        "--config",
        cfg_path,
        "--strategies",
        "features,last_k",
        "--lr",
        "features=0.05",
        "--set",
        "eval.bootstrap=100",
        "--out",
        out,
    )
    assert result.code == 0, result.err
    rows = json.loads((out / "strategies.json").read_text())["rows"]
    assert [r["strategy"] for r in rows] == ["base", "features", "last_k"]
    features, last_k = rows[1], rows[2]
    assert features["learning_rate"] == 0.05 and last_k["learning_rate"] == config.DEFAULT_LEARNING_RATE["last_k"]
    for row in (features, last_k):
        summary = json.loads((Path(row["run"]) / "summary.json").read_text())
        assert summary["method"] == row["strategy"]
        assert row["trainable_parameters"] == summary["parameters"]["trainable"]
        assert row["peak_rss_mb"] > 0 and row["train_seconds"] > 0
        assert len(row["accuracy_vs_base"]) == 2
    assert features["trainable_parameters"] < last_k["trainable_parameters"]
    assert "| features |" in (out / "strategies.md").read_text()
    assert (out / "strategies.png").read_bytes()[:4] == b"\x89PNG"
    assert (out / "eval" / "report.html").is_file()
    cfg = config.load(cfg_path)
    listed = {r["id"]: r for r in registry.list_runs(cfg)}
    for row in (features, last_k):
        entry = listed[Path(row["run"]).name]
        assert entry["kind"] == "strategies"
    assert "features" in result.out and "last_k" in result.out


def test_learning_rates_are_parsed_per_strategy():
    assert parse_learning_rates(["full=5e-5", "features=0.01"]) == {"full": 5e-5, "features": 0.01}
    with pytest.raises(UserError, match="STRATEGY=RATE"):
        parse_learning_rates(["qlora=1e-4"])
    with pytest.raises(UserError, match="not a number"):
        parse_learning_rates(["full=fast"])
