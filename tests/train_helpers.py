"""A small chat project on the tiny Llama, prepared and ready to train (shared by the training tests)."""

from __future__ import annotations

import json
import random
from pathlib import Path

import yaml

WORDS = "reset password invoice refund login account billing plan upgrade cancel email order ship track".split()


def chat_rows(n: int, seed: int = 0, min_words: int = 2, max_words: int = 40) -> list[dict]:
    """Synthetic support chats with varied lengths (unique, so dedup keeps them all)."""
    r = random.Random(seed)
    rows = []
    for i in range(n):
        q = " ".join(r.choice(WORDS) for _ in range(r.randint(min_words, max_words)))
        a = " ".join(r.choice(WORDS) for _ in range(r.randint(min_words, max_words // 2 + 2)))
        turns = [{"role": "user", "content": f"ticket {i}: {q}"}, {"role": "assistant", "content": a}]
        rows.append({"messages": turns})
    return rows


def write_prepared_project(root: Path, rows: list[dict], doc: dict) -> Path:
    """Write `rows` to data/train.jsonl and `doc` to tuneloop.yaml under `root`; prepare; return the config path."""
    from tuneloop import config
    from tuneloop.data.prepare import prepare

    (root / "data").mkdir(parents=True, exist_ok=True)
    (root / "data" / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    path = root / "tuneloop.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    prepare(config.load(path), workers=0)
    return path


def make_train_project(root: Path, model: Path, rows: list[dict] | None = None, **train: object) -> Path:
    """Write data + tuneloop.yaml under `root`, run `data prepare`, return the config path."""
    settings = {
        "max_steps": 10,
        "batch_size": 4,
        "learning_rate": 0.01,
        "log_every": 1,
        "eval_every": 5,
        "save_every": 5,
        "warmup_ratio": 0.1,
        "report_to": [],
        "precision": "fp32",  # pinned losses must not depend on whether this CPU has bf16
        **train,
    }
    doc = {
        "task": {"objective": "answer support tickets", "type": "chat"},
        "model": {"name": str(model)},
        "data": {"train": ["data/train.jsonl"], "max_length": 256, "dedup": {"near": "off"}},
        "method": {"name": "lora", "lora": {"r": 4, "alpha": 8, "dropout": 0.0}},
        "train": settings,
    }
    return write_prepared_project(root, chat_rows(80) if rows is None else rows, doc)


def losses(run_dir: Path) -> list[float]:
    rows = map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines())
    return [row["loss"] for row in rows if "loss" in row]


def adapter_weights(folder: Path) -> dict:
    from safetensors.torch import load_file

    name = "adapter_model.safetensors" if (folder / "adapter_model.safetensors").exists() else "model.safetensors"
    return load_file(str(folder / name))


def sigterm_at_training_step(step: int, real_loss, sig: int | None = None):
    """A stand-in for sft.token_loss that sends this process SIGTERM (or `sig`) during training step `step`."""
    import signal

    calls = {"n": 0}

    def loss(model, batch):
        calls["n"] += model.training
        if calls["n"] == step and model.training:
            signal.raise_signal(signal.SIGTERM if sig is None else sig)
        return real_loss(model, batch)

    return loss
