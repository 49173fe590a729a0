"""Resuming a classifier run (last_k, lora, full): a crashed or stopped run continues with the same losses,
validation figures, best pass and final weights as a run that was never interrupted."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.classify_helpers import ALL_WORDS, make_classify_project
from tuneloop import config
from tuneloop.errors import UserError
from tuneloop.tiny import make_tiny_bert
from tuneloop.train import checkpoint, classify, classify_trainer

# 10 steps, a checkpoint every 4 and a validation pass every 2: a crash in step 7 loses steps 5-7.
SETTINGS = {"max_steps": 10, "save_every": 4, "eval_every": 2, "log_every": 1, "learning_rate": 0.01}


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_bert(tmp_path_factory.mktemp("tiny-bert"), ALL_WORDS)


def rows_of(run_dir: Path, key: str) -> list[tuple[int, float]]:
    rows = map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines())
    return [(row["step"], row[key]) for row in rows if key in row]


def failing_at(step: int, real, error: BaseException | None = None):
    """A stand-in for the trainer's loss that fails (or sends SIGTERM, without `error`) in training step `step`."""
    calls = {"n": 0}

    def loss(logits, labels, weights):
        calls["n"] += torch.is_grad_enabled()
        if calls["n"] == step and torch.is_grad_enabled():
            if error is None:
                signal.raise_signal(signal.SIGTERM)
            else:
                raise error
        return real(logits, labels, weights)

    return loss


@pytest.mark.parametrize("method", ["last_k", "lora", "full"])
def test_a_crashed_classifier_run_resumes_with_the_losses_of_an_uninterrupted_one(
    tmp_path, tiny_bert, monkeypatch, method
):
    cfg_path = make_classify_project(tmp_path, tiny_bert, method=method, **SETTINGS)
    straight = classify.train(config.load(cfg_path))

    real = classify_trainer.weighted_loss
    monkeypatch.setattr(classify_trainer, "weighted_loss", failing_at(7, real, RuntimeError("power cut")))
    runs_dir = tmp_path / "runs"
    before = set(runs_dir.iterdir())
    with pytest.raises(RuntimeError, match="power cut"):
        classify.train(config.load(cfg_path))
    (run_dir,) = {p for p in set(runs_dir.iterdir()) - before if p.is_dir()}
    assert checkpoint.latest(run_dir / "checkpoints").name == "checkpoint-4"
    assert max(step for step, _ in rows_of(run_dir, "loss")) == 6  # logged past its last checkpoint
    monkeypatch.setattr(classify_trainer, "weighted_loss", real)

    resumed = classify.train(config.load(cfg_path), resume=run_dir)
    assert resumed.summary["this_session"]["resumed_from"] == "checkpoint-4"
    assert rows_of(run_dir, "loss") == rows_of(straight.run_dir, "loss")
    assert [s for s, _ in rows_of(run_dir, "loss")] == list(range(1, 11))
    assert rows_of(run_dir, "eval_f1") == rows_of(straight.run_dir, "eval_f1")
    assert resumed.summary["best"] == straight.summary["best"]
    a, b = (
        load_file(str(straight.final_dir / "model.safetensors")),
        load_file(str(resumed.final_dir / "model.safetensors")),
    )
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_sigterm_stops_a_classifier_run_with_a_checkpoint_and_train_resume_finishes_it(
    tmp_path, tiny_bert, cli, monkeypatch
):
    cfg_path = make_classify_project(tmp_path, tiny_bert, method="lora", **SETTINGS)
    straight = classify.train(config.load(cfg_path))
    real = classify_trainer.weighted_loss
    monkeypatch.setattr(classify_trainer, "weighted_loss", failing_at(6, real))
    stopped = cli("train", "--config", cfg_path)
    assert stopped.code == 143, stopped.err
    run_dir = Path(stopped.out.split("run       ")[1].split()[0])
    assert json.loads((run_dir / "summary.json").read_text())["status"] == "stopped"
    assert not (run_dir / "final").exists()
    assert checkpoint.latest(run_dir / "checkpoints").name == "checkpoint-6"  # saved at the step it stopped after
    monkeypatch.setattr(classify_trainer, "weighted_loss", real)
    done = cli("train", "--config", cfg_path, "--resume", "--run", run_dir)
    assert done.code == 0, done.err
    assert "status    completed at step 10/10" in done.out
    assert rows_of(run_dir, "loss") == rows_of(straight.run_dir, "loss")


def test_resume_refuses_a_changed_classify_section_and_a_run_without_checkpoints(tmp_path, tiny_bert):
    cfg_path = make_classify_project(tmp_path, tiny_bert, method="last_k", max_steps=4, save_every=2)
    run = classify.train(config.load(cfg_path))
    with pytest.raises(UserError, match=r"classify\.last_k: 1 in the run, 2 now"):
        classify.train(config.load(cfg_path, ["classify.last_k=2"]), resume=run.run_dir)
    probe = classify.train(config.load(cfg_path, ["method.name=features"]))
    with pytest.raises(UserError, match="no complete checkpoint to resume from"):
        classify.train(config.load(cfg_path, ["method.name=features"]), resume=probe.run_dir)
