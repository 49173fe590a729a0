"""The shape of src/tuneloop: layers point down, no import cycle, no module over 700 lines.

The layers and the no-cycle rule are import-linter contracts in pyproject.toml ([tool.importlinter]).
These tests run them on this tree, and on copies with a planted cycle or a planted upward import,
to show that they fail when the rule is broken.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "src" / "tuneloop"
MAX_LINES = 700


def lint_imports(src: Path) -> subprocess.CompletedProcess[str]:
    """`lint-imports` with the project's contracts, on the tuneloop package found in the folder `src`."""
    command = "from importlinter.cli import lint_imports_command; lint_imports_command()"
    return subprocess.run(
        [sys.executable, "-c", command, "--config", str(REPO / "pyproject.toml"), "--no-cache", "--no-logo"],
        env={**os.environ, "PYTHONPATH": str(src)},  # this tree's package, not an installed one
        cwd=src,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_layers_point_down_and_no_module_imports_itself_in_a_circle() -> None:
    result = lint_imports(PACKAGE.parent)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


def test_no_module_is_over_700_lines() -> None:
    sizes = {
        p.relative_to(PACKAGE.parent): len(p.read_text(encoding="utf-8").splitlines()) for p in PACKAGE.rglob("*.py")
    }
    assert len(sizes) > 50  # the whole package was read
    assert {p: n for p, n in sizes.items() if n > MAX_LINES} == {}


@pytest.mark.parametrize(
    ("module", "planted", "contract"),
    [
        # index imports store; store importing index closes a cycle inside one package
        ("registry/store.py", "from tuneloop.registry import index", "No import cycles"),
        # the data stage reaching up into a stage
        ("data/render.py", "from tuneloop.train import checkpoint", "Layers point down"),
        # one stage reaching into a sibling stage's internals
        ("train/checkpoint.py", "from tuneloop.evaluate import metrics", "Layers point down"),
    ],
)
def test_a_planted_breach_breaks_its_contract(tmp_path: Path, module: str, planted: str, contract: str) -> None:
    copy = tmp_path / "tuneloop"
    shutil.copytree(PACKAGE, copy, ignore=shutil.ignore_patterns("__pycache__"))
    path = copy / module
    path.write_text(path.read_text(encoding="utf-8") + f"\n{planted}  # planted by the test\n", encoding="utf-8")
    result = lint_imports(tmp_path)
    assert result.returncode != 0
    broken = [line for line in result.stdout.splitlines() if line.endswith("BROKEN")]
    assert any(line.startswith(contract) for line in broken), result.stdout


def test_training_without_the_evaluation_hook_refuses_generation_metrics(tmp_path: Path, tiny_llama: Path) -> None:
    """Training never imports the evaluation stage: its caller passes the evaluator in, and a run that
    asks for metrics on generated answers without one stops before loading anything."""
    from tests.train_helpers import make_train_project
    from tuneloop import config
    from tuneloop.errors import UserError
    from tuneloop.train import sft

    path = make_train_project(tmp_path, tiny_llama)
    cfg = config.load(path, overrides=["train.eval_metrics=[rougeL]", "train.metric=rougeL"])
    with pytest.raises(UserError, match=r"train\(evaluator=tuneloop\.evaluate\.runner\.training_evaluator\)"):
        sft.train(cfg)
    assert not (cfg.path(cfg.output.dir)).exists()  # no run folder was started
