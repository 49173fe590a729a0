"""Labels across the splits of classification data: what a classifier could not learn or be measured on.

`data prepare` counts each split's labels (report.json: `splits.<name>.labels`) and warns, with the
counts, about a label that train never holds (the model cannot learn it) and about a label that a split
cut from the data got no record of, usually one with fewer records than the shares need (1 / the
smallest share): its val or test figures would be missing.
"""

from __future__ import annotations

import math
from typing import Any

SPLITS = ("train", "val", "test")


def label_warnings(splits: dict[str, dict[str, Any]], shares: dict[str, float]) -> list[str]:
    """Warnings about the labels of the written splits (each split's `labels` counts); none without labels."""
    counts = {name: dict(splits[name].get("labels") or {}) for name in SPLITS}
    every = sorted({label for c in counts.values() for label in c})
    if not every:
        return []
    out = []
    unseen = {label: {n: counts[n][label] for n in ("val", "test") if label in counts[n]} for label in every}
    unseen = {label: where for label, where in unseen.items() if label not in counts["train"]}
    if unseen:
        listed = "; ".join(
            f"'{label}' ({', '.join(f'{n} rows in {split}' for split, n in where.items())})"
            for label, where in unseen.items()
        )
        out.append(
            f"{len(unseen)} label{'s are' if len(unseen) > 1 else ' is'} in val/test but never in train, so a "
            f"classifier cannot learn {'them' if len(unseen) > 1 else 'it'}: {listed}; add training rows for "
            "each, or remove its rows"
        )
    cut = {name: share for name, share in shares.items() if share > 0}
    need = math.ceil(1 / min(cut.values()) - 1e-9) if cut else 1
    holes = []
    for label in every:
        missing = [name for name in cut if not counts[name].get(label)]
        if missing and label not in unseen:
            total = sum(counts[name].get(label, 0) for name in SPLITS)
            holes.append(f"'{label}' ({total} rows; none in {', '.join(missing)})")
    if holes:
        out.append(
            f"{len(holes)} label{'s have' if len(holes) > 1 else ' has'} no rows in a split: {'; '.join(holes)}. "
            f"The split shares need about {need} rows per label to give every split one, so its figures will be "
            "missing there: add rows for it, or merge it into another label"
        )
    return out
