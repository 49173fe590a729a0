"""Seeded train/validation/test assignment: stratified by label, and group-aware.

A group (a near-duplicate cluster) always lands in one split as a whole, so near-identical
examples can never sit on both sides of the train/test line.
"""

from __future__ import annotations

import random
from collections import Counter, defaultdict


def assign_splits(groups: list[str], labels: list[str | None], fractions: dict[str, float], seed: int) -> list[str]:
    """Return the split name for each row.

    Rows are handled per stratum (label; one stratum when there are no labels). Within a stratum,
    groups are shuffled with `seed` and each goes to the split furthest below its target size.
    """
    names = [name for name, f in fractions.items() if f > 0]
    total = sum(fractions[n] for n in names)
    members: dict[str, list[int]] = defaultdict(list)
    for row, group in enumerate(groups):
        members[group].append(row)
    strata: dict[str | None, list[str]] = defaultdict(list)
    for group, rows in members.items():
        label = Counter(labels[r] for r in rows).most_common(1)[0][0]
        strata[label].append(group)
    rng = random.Random(seed)
    result = [""] * len(groups)
    for label in sorted(strata, key=lambda x: (x is None, str(x))):
        stratum = sorted(strata[label])
        rng.shuffle(stratum)
        size = sum(len(members[g]) for g in stratum)
        target = {n: size * fractions[n] / total for n in names}
        filled = dict.fromkeys(names, 0)
        for group in stratum:
            name = max(names, key=lambda n: (target[n] - filled[n], -names.index(n)))
            filled[name] += len(members[group])
            for row in members[group]:
                result[row] = name
    return result
