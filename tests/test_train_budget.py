"""`train.time_budget`: max_steps is chosen to fit the budget, recorded, and a rerun reproduces it exactly."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from tests.train_helpers import losses, make_train_project
from tuneloop import config
from tuneloop.config import RESOLVED_FILENAME, duration_seconds
from tuneloop.errors import UserError
from tuneloop.train import budget, sft


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory, tiny_llama: Path) -> Path:
    return make_train_project(tmp_path_factory.mktemp("budget"), tiny_llama)


# Dropout on, so that a timing pass that consumed random numbers would change every later loss.
BUDGETED = ("train.max_steps=null", "train.epochs=1", "method.lora.dropout=0.1")


@pytest.mark.parametrize(
    ("text", "seconds"), [("90s", 90), ("8m", 480), ("1h30m", 5400), ("1.5h", 5400), ("2m 5s", 125)]
)
def test_durations_read_as_seconds(text: str, seconds: float):
    assert duration_seconds(text) == seconds


def test_config_rejects_an_unreadable_budget_and_a_budget_beside_max_steps(project: Path):
    with pytest.raises(UserError) as caught:
        config.load(project, ["train.time_budget=8 minutes"])
    assert "'8 minutes' is not a duration; write e.g. '90s', '8m' or '1h30m'" in str(caught.value)
    with pytest.raises(UserError, match=r"train\.max_steps and train\.time_budget both set"):
        config.load(project, ["train.time_budget=8m", "train.max_steps=10"])


def test_steps_fit_the_budget_with_validations_and_round_down():
    # 100 s budget, 95 s usable after the margin, 5 s already spent on timing: 90 s for steps and validations.
    # 1 s steps with a 2 s validation every 10 steps: 74 steps + 9 validations = 92 s is too much;
    # 72 steps + 9 validations = 90 s fits, rounded down to 70.
    n = budget.steps_within(100, 1.0, 2.0, 5.0, eval_every=10, has_val=True, cap=1000)
    assert n == 70
    assert 70 * 1.0 + budget.validations(70, 10, True) * 2.0 <= 90
    # Without validation every second is a step; the epochs cap wins when it is smaller.
    assert budget.steps_within(100, 1.0, 2.0, 5.0, eval_every=10, has_val=False, cap=1000) == 90
    assert budget.steps_within(100, 1.0, 2.0, 5.0, eval_every=10, has_val=False, cap=37) == 37
    assert budget.steps_within(100, 1.0, 0.0, 0.0, eval_every=10, has_val=False, cap=1000) == 90  # 95 → 90
    assert budget.steps_within(100, 8.0, 0.0, 0.0, eval_every=10, has_val=False, cap=1000) == 10  # 11 → 10
    assert budget.steps_within(100, 200.0, 0.0, 0.0, eval_every=10, has_val=False, cap=1000) == 0


def test_a_budgeted_run_records_its_steps_and_a_rerun_without_the_budget_is_identical(project: Path):
    # The budget binds or one epoch caps it, depending on this machine's speed and load; either way the
    # choice is recorded and the timing pass leaves no trace in the training.
    result = sft.train(config.load(project, [*BUDGETED, "train.time_budget=10m"]))
    chosen = result.summary["time_budget"]
    assert result.status == "completed" and result.steps == chosen["max_steps"] >= 1
    used = chosen["max_steps"] * chosen["step_seconds"] + chosen["validations"] * chosen["validation_seconds"]
    assert used + chosen["timing_seconds"] <= 600 * (1 - budget.MARGIN) or chosen["capped_by_epochs"]
    resolved = yaml.safe_load((result.run_dir / RESOLVED_FILENAME).read_text())["train"]
    assert resolved["max_steps"] == chosen["max_steps"] and resolved["time_budget"] is None

    # What the console note tells the user to run.
    rerun = sft.train(config.load(project, [*BUDGETED, f"train.max_steps={chosen['max_steps']}"]))
    assert rerun.summary["time_budget"] is None and rerun.steps == result.steps
    assert losses(rerun.run_dir) == losses(result.run_dir)


@pytest.mark.parametrize("layout", ["packed", "padded"])
def test_the_budget_times_every_batch_layout(project: Path, layout: str):
    # A packed batch has no attention mask: the validation timing must count its tokens another way.
    result = sft.train(config.load(project, [*BUDGETED, "train.time_budget=10m", f"train.batching={layout}"]))
    assert result.summary["batching"]["layout"] == layout
    assert result.summary["time_budget"]["validation_seconds"] > 0


def test_a_budget_shorter_than_one_step_says_how_long_a_step_takes(project: Path):
    with pytest.raises(UserError, match=r"train.time_budget 0.001s is too short: one step takes [\d.]+ s"):
        sft.train(config.load(project, [*BUDGETED, "train.time_budget=0.001s"]))
