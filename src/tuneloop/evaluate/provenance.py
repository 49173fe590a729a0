"""Before scoring a run on the test split: it must not have trained on any of the split's rows.

A run's `data-rows.txt.gz` holds one content hash per row it trained on. When the data is re-prepared
(new rows, another split scheme), rows that were in train can land in test; scores on them measure
memory, not learning.
"""

from __future__ import annotations

from pathlib import Path

from tuneloop.errors import UserError


def split_row_hashes(prepared_dir: Path, split: str = "test") -> set[str]:
    """Content hashes of a prepared split's rows (the hash `data-rows.txt.gz` uses)."""
    from tuneloop import registry

    path = prepared_dir / f"{split}.jsonl"
    if not path.is_file():
        return set()
    with path.open(encoding="utf-8") as f:
        return {registry.row_hash(line) for line in f if line.strip()}


def check_no_test_overlap(run_dir: Path, test_hashes: set[str], test_rows: int) -> None:
    """Refuse a run whose training rows include rows of the test split being scored (names how many)."""
    from tuneloop import console, registry

    rows = registry.read_row_hashes(run_dir)
    if rows is None:
        console.warn(
            f"run {run_dir.name} has no {registry.ROWS_FILE}: whether it trained on rows of this test split "
            "cannot be checked"
        )
        return
    trained = rows.get("train", {})
    overlap = sum(1 for h in test_hashes if h in trained)
    if overlap:
        raise UserError(
            f"run {run_dir.name} trained on {overlap:,} of the {test_rows:,} rows in the current test split, so "
            "its scores on them measure memory, not learning (the data was re-prepared since it was trained). "
            "Evaluate it on the prepared data it was trained with, or train a new run on the current splits"
        )
