"""A small preference project on the tiny Llama, prepared and ready to train (shared by the preference tests)."""

from __future__ import annotations

import json
import random
from pathlib import Path

import yaml

WORDS = "reset password invoice refund login account billing plan upgrade cancel email order ship track".split()
GOOD = "yes please reset the password in settings"
BAD = "no"


def pair_rows(n: int, seed: int = 0) -> list[dict]:
    """Separable synthetic pairs: the chosen answer is always a helpful sentence, the rejected one a curt refusal."""
    r = random.Random(seed)
    rows = []
    for i in range(n):
        q = " ".join(r.choice(WORDS) for _ in range(r.randint(2, 8)))
        good = f"{GOOD} {r.choice(WORDS)}"
        bad = f"{BAD} {r.choice(WORDS)}"
        rows.append({"prompt": f"ticket {i}: {q}", "chosen": good, "rejected": bad})
    return rows


def make_preference_project(
    root: Path,
    model: Path,
    method: str = "dpo",
    rows: list[dict] | None = None,
    adapter: str = "lora",
    ranked: list[dict] | None = None,
    **train: object,
) -> Path:
    """Write pairs (and `ranked` rows, in a file of their own) + tuneloop.yaml under `root`, run `data prepare`,
    return the config path."""
    from tuneloop import config
    from tuneloop.data.prepare import prepare

    root.mkdir(parents=True, exist_ok=True)
    (root / "data").mkdir(exist_ok=True)
    rows = pair_rows(60) if rows is None else rows
    (root / "data" / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    files = ["data/train.jsonl"]
    if ranked is not None:
        (root / "data" / "ranked.jsonl").write_text("".join(json.dumps(r) + "\n" for r in ranked))
        files.append("data/ranked.jsonl")
    settings = {
        "max_steps": 6,
        "batch_size": 4,
        "learning_rate": 0.01,
        "log_every": 1,
        "eval_every": 3,
        "save_every": 3,
        "warmup_ratio": 0.0,
        "lr_scheduler": "constant",
        "report_to": [],
        "precision": "fp32",
        **train,
    }
    doc = {
        "task": {"objective": "prefer helpful answers", "type": "preference"},
        "model": {"name": str(model)},
        "data": {"train": files, "max_length": 128, "dedup": {"near": "off"}},
        "method": {"name": method, "lora": {"r": 4, "alpha": 8, "dropout": 0.0}, "preference": {"adapter": adapter}},
        "train": settings,
    }
    path = root / "tuneloop.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    prepare(config.load(path), workers=0)
    return path


def train_losses(run_dir: Path) -> list[float]:
    """The training losses a run logged in metrics.jsonl, in step order."""
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return [row["loss"] for row in rows if "loss" in row]


def assert_resumes_exactly(monkeypatch, path: Path, uninterrupted: Path, stop_at: int = 3) -> None:
    """SIGTERM at step `stop_at` saves a checkpoint and stops the preference run of the project at `path`;
    `--resume` then logs the losses of `uninterrupted` (the same config, never stopped)."""
    import signal

    import pytest

    from tuneloop import config
    from tuneloop.train import preference
    from tuneloop.train.callbacks import GracefulStop

    class SigtermAtStep(GracefulStop):
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == stop_at and self.signal is None:
                signal.raise_signal(signal.SIGTERM)
            return super().on_step_end(args, state, control, **kwargs)

    monkeypatch.setattr(preference, "GracefulStop", SigtermAtStep)
    stopped = preference.train(config.load(path))
    assert stopped.status == "stopped" and stopped.steps == stop_at and stopped.final_dir is None
    monkeypatch.setattr(preference, "GracefulStop", GracefulStop)
    resumed = preference.train(config.load(path), resume=stopped.run_dir)
    assert resumed.status == "completed" and resumed.run_dir == stopped.run_dir
    expected = train_losses(uninterrupted)
    assert train_losses(resumed.run_dir) == pytest.approx(expected, abs=1e-6)
    assert len(train_losses(resumed.run_dir)) == len(expected)
