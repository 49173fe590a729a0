"""Row-level data hashes: which prepared rows a run saw, so two runs' data can be compared row by row."""

from __future__ import annotations

import gzip
import json
import os
from collections import Counter
from collections.abc import Collection
from pathlib import Path

import xxhash

from tuneloop.errors import UserError

ROWS_FILE = "data-rows.txt.gz"
SPLITS = ("train", "val", "test")


def row_hash(line: str) -> str:
    """xxhash64 of a prepared row's canonical JSON, without its `id`.

    The id is the row's `file:line`: leaving it out means a row that only moved in its source file
    (a line inserted above it) is still the same row.
    """
    row = json.loads(line)
    row.pop("id", None)
    canonical = json.dumps(row, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return xxhash.xxh64_hexdigest(canonical.encode("utf-8"))


def write_row_hashes(run_dir: Path, prepared_dir: Path, train_ids: Collection[str] | None = None) -> Path:
    """Write `data-rows.txt.gz` into a run folder: one `split<TAB>hash` line per prepared row.

    `train_ids` limits the train rows to those the run trained on (a `train.examples` subset).
    `compare` uses the file to count the rows two runs' data have in common. Returns its path.
    """
    run_dir, prepared_dir = Path(run_dir), Path(prepared_dir)
    if not prepared_dir.is_dir():
        raise UserError(f"no prepared data in {prepared_dir}; run `tuneloop data prepare` first")
    out, tmp = run_dir / ROWS_FILE, run_dir / (ROWS_FILE + ".tmp")
    # mtime=0: the same data gives the same bytes, so the file's own hash means something.
    with gzip.GzipFile(tmp, "wb", mtime=0) as raw:
        for split in SPLITS:
            path = prepared_dir / f"{split}.jsonl"
            if not path.is_file():
                continue
            with path.open(encoding="utf-8") as f:
                for line in f:
                    if not line.strip():
                        continue
                    if split == "train" and train_ids is not None and json.loads(line)["id"] not in train_ids:
                        continue
                    raw.write(f"{split}\t{row_hash(line)}\n".encode())
    os.replace(tmp, out)
    return out


def read_row_hashes(run_dir: Path) -> dict[str, Counter[str]] | None:
    """{split: Counter of row hashes} from a run's data-rows.txt.gz, or None when it has none."""
    path = Path(run_dir) / ROWS_FILE
    if not path.is_file():
        return None
    rows: dict[str, Counter[str]] = {}
    with gzip.open(path, "rt", encoding="utf-8") as f:
        for line in f:
            split, _, digest = line.rstrip("\n").partition("\t")
            rows.setdefault(split, Counter())[digest] += 1
    return rows
