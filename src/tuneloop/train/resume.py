"""What a resume must match: the config sections that shape the weights, and the prepared data."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tuneloop.config import RESOLVED_FILENAME
from tuneloop.errors import UserError

TRAINING_SECTIONS = ("model", "data", "method", "train")
# Keys that may change between a run and its resume without changing what is being trained.
RESUMABLE_CHANGES = {
    "max_steps",
    "time_budget",
    "epochs",
    "eval_every",
    "save_every",
    "keep_last",
    "log_every",
    "report_to",
}


def check_same_data(manifest: dict[str, Any], run_dir: Path) -> None:
    """Refuse to resume a run on prepared train/val data other than the data it started on."""
    recorded_path = run_dir / "data-manifest.json"
    if not recorded_path.is_file():
        raise UserError(f"{run_dir} has no data-manifest.json, so its data cannot be checked; start a new run")
    recorded = json.loads(recorded_path.read_text()).get("splits", {})
    current = manifest.get("splits", {})
    changed = [
        f"{split}: {_short(recorded.get(split))} in the run, {_short(current.get(split))} now"
        for split in ("train", "val")
        if (recorded.get(split) or {}).get("sha256") != (current.get(split) or {}).get("sha256")
    ]
    if changed:
        raise UserError(
            "the prepared data differs from the data the run being resumed was trained on, so resuming would "
            "not continue the same training:\n  " + "\n  ".join(changed) + "\nre-prepare the data it was "
            "trained on, or start a new run without --resume"
        )


def _short(split: dict[str, Any] | None) -> str:
    if not split:
        return "absent"
    return f"{split.get('rows', '?')} rows, sha256 {str(split.get('sha256'))[:12]}"


def check_same_config(cfg: Any, saved_path: Path, sections: tuple[str, ...] = TRAINING_SECTIONS) -> None:
    """Refuse to resume with a config whose training sections differ from the run's, except its length and logging."""
    import yaml

    if not saved_path.is_file():
        raise UserError(f"{saved_path.parent} is not a run folder (no {RESOLVED_FILENAME})")
    saved = yaml.safe_load(saved_path.read_text())
    current = yaml.safe_load(cfg.to_yaml())
    diffs = []
    for section in sections:
        a, b = saved.get(section) or {}, current.get(section) or {}
        for key in sorted(set(a) | set(b)):
            if a.get(key) != b.get(key) and not (section == "train" and key in RESUMABLE_CHANGES):
                diffs.append(f"{section}.{key}: {a.get(key)!r} in the run, {b.get(key)!r} now")
    if diffs:
        raise UserError(
            "the config differs from the run being resumed, so resuming would not continue the same training:\n  "
            + "\n  ".join(diffs)
            + "\nundo the change, or start a new run without --resume"
        )
