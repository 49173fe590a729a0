"""What a resume must match: the config sections that shape the weights, and the prepared data."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tuneloop.errors import UserError


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
