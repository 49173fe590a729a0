"""Preference pairs for the preference example: a ticket's right triage record against a wrong one.

The tickets come from the committed, seeded generator behind the extraction example
(scripts/make_tickets.py) with another seed, so none of them is one the extraction example's SFT
run trained on. For each ticket the chosen answer is its correct JSON record; the rejected one is
the same record with one field wrong, the kind of mistake an SFT model still makes: another
category, another priority, a product the ticket does not name, or the order id dropped.

    python examples/preference/make_data.py      # writes examples/preference/data/pairs.jsonl

The same arguments always give a byte-identical file.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import random
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
DEFAULT_OUT = HERE / "data" / "pairs.jsonl"
DEFAULT_SEED = 1600
DEFAULT_COUNT = 400


def _make_tickets():
    spec = importlib.util.spec_from_file_location("make_tickets", REPO / "scripts" / "make_tickets.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["make_tickets"] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


def wrong(answer: dict, rng: random.Random, tickets) -> dict:
    """The record with exactly one field changed to a value the ticket does not support."""
    bad = dict(answer)
    fields = ["category", "priority", "product"] + (["order_id"] if answer["order_id"] else [])
    field = rng.choice(fields)
    if field == "category":
        bad["category"] = rng.choice([c for c in tickets.CATEGORIES if c != answer["category"]])
    elif field == "priority":
        bad["priority"] = rng.choice([p for p in tickets.PRIORITIES if p != answer["priority"]])
    elif field == "product":
        bad["product"] = rng.choice([p for p in (*tickets.PRODUCT_NAMES, None) if p != answer["product"]])
    else:
        bad["order_id"] = None
    return bad


def generate(count: int, seed: int) -> list[dict]:
    tickets = _make_tickets()
    rng = random.Random(seed)
    rows = []
    for chat in tickets.generate(count, seed):
        system, user, assistant = chat["messages"]
        answer = json.loads(assistant["content"])
        rejected = json.dumps(wrong(answer, rng, tickets), ensure_ascii=False, separators=(",", ":"))
        rows.append({"prompt": [system, user], "chosen": assistant["content"], "rejected": rejected})
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=DEFAULT_COUNT, help="pairs to write")
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED, help="random seed")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="JSONL file to write")
    args = parser.parse_args(argv)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    rows = generate(args.count, args.seed)
    args.out.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    print(f"wrote {len(rows)} pairs to {args.out}")


if __name__ == "__main__":
    main()
