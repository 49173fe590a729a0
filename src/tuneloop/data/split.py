"""Seeded train/validation/test assignment by content hash: stable as the data grows, and group-aware.

Each group of rows gets a number in [0, 1) from a seeded hash of its content, and the split whose
share of [0, 1) holds it: with 80/10/10, below 0.8 is train, below 0.9 val, the rest test. A row's
split therefore depends on its own content, the seed and the shares, never on the other rows or on
where it sits in a file: adding, removing or reordering rows never moves an existing row to another
split, so the test set of the next iteration holds no row an earlier run trained on.

What that guarantees, and what it does not:
- A row that is its own group (no near duplicate grouped with it) keeps its split as long as its
  content is unchanged, whatever else is added or removed.
- Rows with the same content (exact duplicates kept with `data.dedup.exact: false`) share one split.
- A group (a near-duplicate cluster, `data.dedup.near: group`) lands in one split as a whole. Its key
  is the smallest content key among its members, so it is the same whichever member is read first.
  A group keeps its split while its members stay; when a new near duplicate joins with a smaller key,
  or a removed member held the smallest, the group's key changes and the whole group may move.
- Stratification for classification holds in expectation: the hash does not see the label, so each
  label is split in the configured shares up to sampling noise (about √n rows), and correcting a
  label never moves a row. Split sizes follow the shares the same way, not to the row.
- A data set so small that the hash leaves a split with a share empty (a dozen rows) gets the
  group nearest to that split's interval moved into it, so a sample project still has a validation
  and a test row. That group can move back once the data grows; from a few dozen rows on, this
  practically never happens.
"""

from __future__ import annotations

import xxhash

# Recorded in the manifest and part of the prepare stage's cache key: a new scheme re-runs prepare.
SCHEME = {"name": "content-hash", "version": 1}
_UNIT = float(2**64)


def position(key: int, seed: int) -> float:
    """A content key's seeded place in [0, 1); uniform over keys, fixed for a (key, seed) pair."""
    return xxhash.xxh64_intdigest(key.to_bytes(8, "little"), seed=seed % 2**64) / _UNIT


def assign_splits(groups: list[str], keys: list[int], fractions: dict[str, float], seed: int) -> list[str]:
    """Return the split name for each row.

    `groups[i]` names the group of row i (rows of one group always share a split) and `keys[i]` is
    the 64-bit hash of row i's normalised content. `fractions` maps split names to their shares, in
    order; shares are normalised over the splits with a share above 0.
    """
    names = [name for name, f in fractions.items() if f > 0]
    total = sum(fractions[n] for n in names)
    bounds, edge = [], 0.0
    for name in names:
        edge += fractions[name] / total
        bounds.append(edge)
    group_key: dict[str, int] = {}
    for group, key in zip(groups, keys, strict=True):
        known = group_key.get(group)
        if known is None or key < known:
            group_key[group] = key

    def split_of(key: int) -> str:
        at = position(key, seed)
        return next((name for name, bound in zip(names, bounds, strict=True) if at < bound), names[-1])

    chosen = {group: split_of(key) for group, key in group_key.items()}
    if len(group_key) >= len(names):
        _fill_empty_splits(chosen, group_key, names, bounds, seed)
    return [chosen[group] for group in groups]


def _fill_empty_splits(
    chosen: dict[str, str], group_key: dict[str, int], names: list[str], bounds: list[float], seed: int
) -> None:
    """Move into each empty split the group whose place is nearest its interval (only tiny data sets)."""
    for i, name in enumerate(names):
        if name in chosen.values():
            continue
        low, high = (bounds[i - 1] if i else 0.0), bounds[i]
        sizes = {n: sum(1 for s in chosen.values() if s == n) for n in names}
        movable = [g for g, s in chosen.items() if sizes[s] > 1]
        if movable:
            places = {g: position(group_key[g], seed) for g in movable}
            nearest = min(movable, key=lambda g: (max(low - places[g], places[g] - high), group_key[g]))
            chosen[nearest] = name
