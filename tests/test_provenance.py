"""Where a run came from (issue 20, item 2): eval refuses another base or an overlapping test split, resume
refuses other data, and the loop cache keys the model by its weights, not its name."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tests.train_helpers import chat_rows, make_train_project
from tuneloop import config, loop, models, registry
from tuneloop.data.prepare import prepare
from tuneloop.errors import UserError
from tuneloop.evaluate import runner
from tuneloop.tiny import make_tiny_llama
from tuneloop.train import sft

QUICK_EVAL = ["eval.forgetting.enabled=false", "eval.redteam.enabled=false"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, tiny_llama: Path) -> tuple[Path, Path]:
    """(config path, run folder) of a 2-step run with a checkpoint at step 2."""
    path = make_train_project(tmp_path_factory.mktemp("provenance"), tiny_llama, max_steps=2, save_every=2)
    return path, sft.train(config.load(path)).run_dir


def copy_project(path: Path, dest: Path) -> Path:
    shutil.copytree(path.parent, dest)
    return dest / path.name


def test_eval_refuses_a_run_trained_on_another_base(trained, tmp_path: Path):
    path, run = trained
    other = make_tiny_llama(tmp_path / "other-llama", seed=1)  # same architecture, other weights
    cfg = config.load(path, [f"model.name={other}", *QUICK_EVAL])
    with pytest.raises(UserError, match=rf"run {run.name} was trained on .*but model.name is now {other}"):
        runner.evaluate(cfg, [run], out_dir=tmp_path / "eval", limit=2)


def test_eval_refuses_a_run_whose_training_rows_are_in_the_test_split(trained, tmp_path: Path):
    path, run = trained
    moved = copy_project(path, tmp_path / "moved")
    cfg = config.load(moved, ["data.seed=7", *QUICK_EVAL])  # another split: some old train rows are now test
    prepare(cfg, workers=0)
    test_lines = (moved.parent / "data" / "prepared" / "test.jsonl").read_text().splitlines()
    trained_rows = registry.read_row_hashes(run)["train"]
    overlap = sum(registry.row_hash(line) in trained_rows for line in test_lines)
    assert overlap > 0
    expected = rf"run {run.name} trained on {overlap} of the {len(test_lines)} rows in the current test split"
    with pytest.raises(UserError, match=expected):
        runner.evaluate(cfg, [run], out_dir=tmp_path / "eval", limit=2)


def test_resume_refuses_other_prepared_data(trained, tmp_path: Path):
    path, run = trained
    moved = copy_project(path, tmp_path / "more-data")
    data = moved.parent / "data" / "train.jsonl"
    data.write_text(data.read_text() + "".join(json.dumps(r) + "\n" for r in chat_rows(10, seed=99)))
    prepare(config.load(moved), workers=0)
    moved_run = moved.parent / "runs" / run.name
    with pytest.raises(UserError, match=r"the prepared data differs .*\n  train: \d+ rows, sha256 \w+ in the run"):
        sft.train(config.load(moved, ["train.max_steps=4"]), resume=moved_run)


def test_loop_cache_keys_the_model_by_its_weights(trained, tmp_path: Path, tiny_llama: Path):
    path, _ = trained
    folder = tmp_path / "model"
    shutil.copytree(tiny_llama, folder)
    cfg = config.load(path, [f"model.name={folder}"])
    manifest = json.loads((path.parent / "data" / "prepared" / "manifest.json").read_text())
    key = loop.train_key(cfg, manifest)
    assert models.fingerprint(folder) == models.fingerprint(tiny_llama)  # a copy is the same model
    make_tiny_llama(folder, seed=1)  # the same name, the same architecture, other weights
    assert loop.train_key(cfg, manifest) != key
