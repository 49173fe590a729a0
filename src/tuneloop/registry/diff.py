"""What differs between two runs' configs (`config_diff`) and data (`data_diff`: row by row when both runs kept
row hashes, else split by split from their manifests)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import yaml

from tuneloop.registry.rows import SPLITS, read_row_hashes


def flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    """A nested mapping as {dotted.key: value}; lists are values, not expanded."""
    if not isinstance(value, dict) or (not value and prefix):
        return {prefix: value}
    flat: dict[str, Any] = {}
    for key, child in value.items():
        flat.update(flatten(child, f"{prefix}.{key}" if prefix else str(key)))
    return flat


def config_diff(a_yaml: str, b_yaml: str) -> list[dict[str, Any]]:
    """[{key, a, b}] for every dotted config key whose value differs (a key one side lacks is None there)."""
    a, b = flatten(yaml.safe_load(a_yaml) or {}), flatten(yaml.safe_load(b_yaml) or {})
    keys = list(a) + [k for k in b if k not in a]
    return [{"key": k, "a": a.get(k), "b": b.get(k)} for k in keys if a.get(k) != b.get(k) or (k in a) != (k in b)]


def data_diff(run_a: dict[str, Any], run_b: dict[str, Any]) -> dict[str, Any]:
    """Per split: rows kept, added and removed from A to B (from data-rows.txt.gz), or, when either
    run has no row hashes, whether the split file is the same (from the manifests' sha256)."""
    rows_a = None if run_a["missing"] else read_row_hashes(Path(run_a["path"]))
    rows_b = None if run_b["missing"] else read_row_hashes(Path(run_b["path"]))
    if rows_a is not None and rows_b is not None:
        names = [s for s in SPLITS if s in rows_a or s in rows_b]
        names += sorted((set(rows_a) | set(rows_b)) - set(names))
        splits = {}
        for name in names:
            ca, cb = rows_a.get(name, Counter()), rows_b.get(name, Counter())
            splits[name] = {
                "rows_a": sum(ca.values()),
                "rows_b": sum(cb.values()),
                "kept": sum((ca & cb).values()),
                "added": sum((cb - ca).values()),
                "removed": sum((ca - cb).values()),
            }
        same = all(s["added"] == 0 and s["removed"] == 0 for s in splits.values())
        return {"by": "rows", "same": same, "splits": splits}
    data_a, data_b = run_a["data"] or {}, run_b["data"] or {}
    names = [s for s in SPLITS if s in data_a or s in data_b]
    names += sorted((set(data_a) | set(data_b)) - set(names))
    splits = {}
    for name in names:
        sa, sb = data_a.get(name, {}), data_b.get(name, {})
        known = sa.get("sha256") is not None and sb.get("sha256") is not None
        splits[name] = {
            "same": sa.get("sha256") == sb.get("sha256") if known else None,
            "sha256_a": sa.get("sha256"),
            "sha256_b": sb.get("sha256"),
            "rows_a": sa.get("rows"),
            "rows_b": sb.get("rows"),
        }
    same = run_a["data_sha256"] == run_b["data_sha256"] if run_a["data_sha256"] and run_b["data_sha256"] else None
    return {"by": "manifest", "same": same, "splits": splits}
