"""`tuneloop review export`: the ratings as CSV, the corrections as training data, rankings as preferences.

- `<name>.ratings.csv`: one row per rating, systems named (the reviewers' letters resolved).
- `<name>.corrections.jsonl`: each corrected answer as a `messages` row (the prompt turns, then the
  correction as the assistant's answer), a format `tuneloop data prepare` reads.
- `<name>.ranked.jsonl` (ranking reviews): per item, `prompt`, `responses` and `ranking` (best
  first, by the reviewers' mean rank): the `ranked` format the data stage reads for preference training.
"""

from __future__ import annotations

import csv
import json
from collections import defaultdict
from pathlib import Path

from tuneloop.errors import UserError
from tuneloop.review.results import consensus_order
from tuneloop.review.store import Rating, Review, Store


def export(store: Store, review: Review, out_dir: Path, ranked: bool = False) -> dict[str, Path]:
    """Write the CSV and corrections (and the ranked file); return {kind: path}."""
    if ranked and review.mode != "ranking":
        raise UserError(f"--ranked needs a ranking review; {review.name} is {review.mode}")
    out_dir.mkdir(parents=True, exist_ok=True)
    items = store.items(review.name)
    ratings = store.ratings(review.name)
    paths = {
        "ratings": out_dir / f"{review.name}.ratings.csv",
        "corrections": out_dir / f"{review.name}.corrections.jsonl",
    }
    with paths["ratings"].open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(
            [
                "review",
                "item",
                "item_id",
                "reviewer",
                "mode",
                "systems",
                "choice",
                *[f"score: {c}" for c in review.criteria],
                "ranking",
                "hallucination",
                "unsafe",
                "comment",
                "correction",
                "updated",
            ]
        )
        for r in ratings:
            item = items[r.idx]
            writer.writerow(
                [
                    review.name,
                    r.idx,
                    item.item_id,
                    r.reviewer,
                    review.mode,
                    " | ".join(c.system for c in item.candidates),
                    r.choice or "",
                    *[(r.scores or {}).get(c, "") for c in review.criteria],
                    " > ".join(r.ranking or []),
                    _flagged(r, "hallucination"),
                    _flagged(r, "unsafe"),
                    r.comment,
                    r.correction,
                    r.updated,
                ]
            )
    with paths["corrections"].open("w", encoding="utf-8") as f:
        for r in ratings:
            if r.correction:
                messages = [*items[r.idx].conversation, {"role": "assistant", "content": r.correction}]
                f.write(json.dumps({"messages": messages}, ensure_ascii=False) + "\n")
    if ranked:
        paths["ranked"] = out_dir / f"{review.name}.ranked.jsonl"
        by_item: dict[int, list[Rating]] = defaultdict(list)
        for r in ratings:
            by_item[r.idx].append(r)
        with paths["ranked"].open("w", encoding="utf-8") as f:
            for idx in sorted(by_item):
                item = items[idx]
                systems = [c.system for c in item.candidates]
                order = consensus_order(by_item[idx])
                row = {
                    "prompt": item.conversation,
                    "responses": [c.text for c in item.candidates],
                    "ranking": [systems.index(s) for s in order],
                }
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
    return paths


def _flagged(rating: Rating, flag: str) -> str:
    return " | ".join(s for s, raised in rating.flags.items() if flag in raised)
