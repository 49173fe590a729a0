"""One run folder → one registry row: everything the index keeps about a run, read from its files."""

from __future__ import annotations

import hashlib
import json
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import yaml

from tuneloop import console
from tuneloop.config import RESOLVED_FILENAME
from tuneloop.registry.rows import ROWS_FILE
from tuneloop.registry.store import _now

LOOP_FILE = "loop.json"
# A folder without summary.json whose files changed this recently is taken to be still training.
RUNNING_WINDOW_SECONDS = 30 * 60
# The files a row is built from; a change in any of them (mtime or size) re-indexes the folder.
WATCHED = (
    RESOLVED_FILENAME,
    "summary.json",
    "data-manifest.json",
    "environment.json",
    "metrics.jsonl",
    LOOP_FILE,
    ROWS_FILE,
    "eval/metrics.json",
    "eval/outputs.jsonl",
)


def _read_json(path: Path) -> Any:
    """A JSON file's content, or None when it is absent or unreadable (said once, never fatal)."""
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        console.warn(f"registry: cannot read {path} ({e}); indexing the run without it")
        return None


def _signature(run_dir: Path) -> str:
    parts = []
    for name in WATCHED:
        try:
            st = (run_dir / name).stat()
        except OSError:
            continue
        parts.append([name, st.st_mtime_ns, st.st_size])
    return json.dumps(parts)


def _status(run_dir: Path, summary: dict | None) -> str:
    if summary and summary.get("status"):
        return str(summary["status"])
    # No summary yet: either training right now, or a run that died before writing one.
    newest = max((p.stat().st_mtime for p in [run_dir, *run_dir.iterdir()] if p.exists()), default=0.0)
    return "running" if time.time() - newest < RUNNING_WINDOW_SECONDS else "incomplete"


def _final_eval_loss(run_dir: Path) -> float | None:
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        return None
    last = None
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut short by a crash
        if isinstance(row, dict) and isinstance(row.get("eval_loss"), (int, float)):
            last = float(row["eval_loss"])
    return last


def _data(manifest: dict | None) -> tuple[dict | None, str | None]:
    """({split: {sha256, rows}}, one hash over the splits) from a run's data-manifest.json."""
    splits = (manifest or {}).get("splits") or {}
    data = {name: {"sha256": s.get("sha256"), "rows": s.get("rows")} for name, s in splits.items()}
    if not data:
        return None, None
    joined = "\n".join(f"{name}:{data[name]['sha256']}" for name in sorted(data))
    return data, hashlib.sha256(joined.encode()).hexdigest()


def _evaluation(run_dir: Path, run_id: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """(eval columns, per-metric rows) from the run's eval/metrics.json, when it was evaluated."""
    report = _read_json(run_dir / "eval" / "metrics.json")
    empty = {"eval_test_sha256": None, "eval_system": None, "eval_examples": None, "eval_created": None}
    if not isinstance(report, dict):
        return empty, []
    comparisons = report.get("comparisons") or {}
    # The report names the run by its folder name at evaluation time; a renamed folder has one entry.
    system = run_id if run_id in comparisons else (next(iter(comparisons)) if len(comparisons) == 1 else None)
    if system is None:
        return empty, []
    test = report.get("test") or {}
    columns = {
        "eval_test_sha256": test.get("sha256"),
        "eval_system": system,
        "eval_examples": test.get("examples"),
        "eval_created": report.get("created"),
    }
    rows = [
        {
            "metric": metric,
            "baseline": c.get("baseline"),
            "value": c.get("candidate"),
            "delta": c.get("delta"),
            "ci_low": c.get("ci_low"),
            "ci_high": c.get("ci_high"),
            "verdict": c.get("verdict"),
            "higher_is_better": c.get("higher_is_better"),
        }
        for metric, c in comparisons[system].items()
    ]
    return columns, rows


def _kind_and_group(loop: dict | None, extra: dict[str, Any]) -> tuple[str, str | None]:
    # An explicit record(..., kind=...) wins over loop.json; a plain `tuneloop train` run has neither.
    loop = loop if isinstance(loop, dict) else {}
    kind = extra.get("kind") or loop.get("kind") or "train"
    group = extra.get("group") or loop.get("group")
    return str(kind), str(group) if group is not None else None


def _read_folder(run_dir: Path, extra: dict[str, Any]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Everything the registry keeps about one run folder: (runs row, evaluation rows)."""
    config_text = (run_dir / RESOLVED_FILENAME).read_text(encoding="utf-8")
    try:
        resolved = yaml.safe_load(config_text) or {}
    except yaml.YAMLError:
        resolved = {}
    summary = _read_json(run_dir / "summary.json")
    summary = summary if isinstance(summary, dict) else None
    environment = _read_json(run_dir / "environment.json")
    loop = _read_json(run_dir / LOOP_FILE)
    data, data_sha = _data(_read_json(run_dir / "data-manifest.json"))
    best = (summary or {}).get("best") or {}
    session = (summary or {}).get("this_session") or {}
    kind, group = _kind_and_group(loop, extra)
    created = (environment or {}).get("started") if isinstance(environment, dict) else None
    if not created:
        mtime = (run_dir / RESOLVED_FILENAME).stat().st_mtime
        created = datetime.fromtimestamp(mtime, timezone.utc).isoformat(timespec="seconds")
    eval_columns, evaluations = _evaluation(run_dir, run_dir.name)
    row = {
        "id": run_dir.name,
        "path": str(run_dir),
        "created": created,
        "status": _status(run_dir, summary),
        "kind": kind,
        "grp": group,
        "method": ((resolved.get("method") or {}).get("name") if isinstance(resolved, dict) else None),
        "config": config_text,
        "config_sha256": hashlib.sha256(config_text.encode()).hexdigest(),
        "data": json.dumps(data) if data else None,
        "data_sha256": data_sha,
        "has_row_hashes": int((run_dir / ROWS_FILE).is_file()),
        "environment": json.dumps(environment) if environment is not None else None,
        "summary": json.dumps(summary) if summary is not None else None,
        "steps": (summary or {}).get("steps"),
        "best_metric": best.get("metric"),
        "best_value": best.get("value"),
        "best_step": best.get("step"),
        "tokens_per_second": session.get("trained_tokens_per_second"),
        "final_eval_loss": _final_eval_loss(run_dir),
        "loop": json.dumps(loop) if loop is not None else None,
        "extra": json.dumps(extra, default=str),
        **eval_columns,
        "eval_has_outputs": int((run_dir / "eval" / "outputs.jsonl").is_file()),
        "signature": _signature(run_dir),
        "indexed": _now(),
        "missing": 0,
    }
    return row, evaluations
