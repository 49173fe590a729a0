"""A separable topic-classification project on a tiny random BERT (shared by the classification tests)."""

from __future__ import annotations

import random
from pathlib import Path

from tests.train_helpers import write_prepared_project

TOPICS = {
    "billing": "invoice refund charge payment card price".split(),
    "tech": "crash error bug login install update".split(),
    "travel": "flight hotel train ticket beach museum".split(),
}
FILLER = "the a my please help with about today".split()
ALL_WORDS = [w for words in TOPICS.values() for w in words] + FILLER


def topic_rows(n: int, seed: int = 0, topics: dict[str, list[str]] | None = None) -> list[dict]:
    """`n` {text, label} rows: each text mixes three of its topic's words with filler, and a unique number."""
    topics = topics or TOPICS
    r = random.Random(seed)
    rows = []
    for i in range(n):
        label = r.choice(sorted(topics))
        words = [r.choice(topics[label]) for _ in range(3)] + [r.choice(FILLER) for _ in range(2)]
        r.shuffle(words)
        rows.append({"text": " ".join(words) + f" {i}", "label": label})
    return rows


def make_classify_project(
    root: Path, model: Path, rows: list[dict] | None = None, method: str = "full", **train: object
) -> Path:
    """Write data + tuneloop.yaml (task.type classification) under `root`, run `data prepare`, return the config."""
    settings = {
        "max_steps": 40,
        "batch_size": 16,
        "learning_rate": 0.01,
        "log_every": 5,
        "eval_every": 10,
        "warmup_ratio": 0.0,
        "report_to": [],
        "precision": "fp32",
        **train,
    }
    doc = {
        "task": {"objective": "route tickets by topic", "type": "classification"},
        "model": {"name": str(model)},
        "data": {"train": ["data/train.jsonl"], "max_length": 64, "dedup": {"near": "off"}},
        "method": {"name": method, "lora": {"r": 4, "alpha": 8, "dropout": 0.0}},
        "train": settings,
        "classify": {"last_k": 1},
    }
    return write_prepared_project(root, topic_rows(180) if rows is None else rows, doc)
