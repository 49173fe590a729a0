"""Fixtures for the review tests: an evaluation folder as `tuneloop eval` writes it, and a review app."""

from __future__ import annotations

import json
from pathlib import Path

XSS = "<script>alert(1)</script>"


def make_eval(folder: Path, n: int = 12, run: str = "run-1", judge: bool = True) -> Path:
    """`outputs.jsonl` + `metrics.json` for base vs `run` on n test cases (case 0's tuned answer is a script tag)."""
    folder.mkdir(parents=True, exist_ok=True)
    with (folder / "outputs.jsonl").open("w") as f:
        for i in range(n):
            tuned = XSS if i == 0 else f"tuned answer {i}"
            row = {
                "id": f"test-{i}",
                "prompt": f"question {i}?",
                "reference": f"reference {i}",
                "base": {"output": f"base answer {i}", "scores": {"rougeL": 0.2}, "flags": {}},
                run: {"output": tuned, "scores": {"rougeL": 0.1 + 0.2 * (i % 2)}, "flags": {}},
            }
            f.write(json.dumps(row) + "\n")
    metrics = {
        "systems": ["base", run],
        "metric_info": {"rougeL": {"higher_is_better": True, "description": "ROUGE-L"}},
        "judge": {
            "summary": {"mode": "pairwise"},
            "details": {run: {"outcomes": [1.0 if i % 2 else 0.0 for i in range(n)]}},
        }
        if judge
        else None,
    }
    (folder / "metrics.json").write_text(json.dumps(metrics))
    return folder
