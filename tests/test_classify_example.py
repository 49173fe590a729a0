"""Slow: the strategy comparison on the classification example's real text (chatterbot-corpus topics, MiniLM)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "examples" / "classification"


@pytest.mark.slow
def test_training_the_encoder_beats_reading_its_features_on_the_example(tmp_path: Path, cli):
    """`full` must beat `features` on the test split, in accuracy and macro-F1 (the guides' finding).

    Two of the four strategies, to keep CI short: features and full are the two ends of the guides' table, and
    `tuneloop compare-strategies` runs every strategy the same way (one `tuneloop train` process each).
    """
    project = tmp_path / "classification"
    shutil.copytree(EXAMPLE, project, ignore=shutil.ignore_patterns("runs", "prepared"))
    config = project / "tuneloop.yaml"
    assert cli("data", "prepare", "--config", config).code == 0
    out = tmp_path / "cmp"
    result = cli("compare-strategies", "--config", config, "--strategies", "features,full", "--out", out)
    assert result.code == 0, result.err
    rows = {r["strategy"]: r for r in json.loads((out / "strategies.json").read_text())["rows"]}
    assert set(rows) == {"base", "features", "full"}
    assert rows["full"]["accuracy"] > rows["features"]["accuracy"], rows
    assert rows["full"]["f1"] > rows["features"]["f1"], rows
    # features trains the head alone: 384 × 6 + 6 parameters on MiniLM.
    assert rows["features"]["trainable_parameters"] == 384 * 6 + 6
    print(json.dumps(rows, indent=2))  # the figures behind the example's README table (pytest -s)
