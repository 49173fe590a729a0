"""The base model's evaluation is computed once per project and reused only while every input is the same."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.train_helpers import chat_rows, make_train_project
from tuneloop import config
from tuneloop.evaluate import base_cache, runner


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, tiny_llama: Path) -> tuple[Path, Path]:
    from tuneloop.train.sft import train

    path = make_train_project(tmp_path_factory.mktemp("cache"), tiny_llama, chat_rows(120), max_steps=4)
    return path, train(config.load(path)).run_dir


def quick(path: Path, *overrides: str) -> config.ProjectConfig:
    return config.load(
        path,
        [
            "task.metrics=[rougeL,perplexity]",
            "eval.max_new_tokens=8",
            "eval.bootstrap=100",
            "eval.forgetting.enabled=false",
            *overrides,
        ],
    )


def base_loads(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Record every time the evaluator loads the base model."""
    loads: list[str] = []
    real = runner.load_system

    def counting(cfg, run_dir):
        if run_dir is None:
            loads.append("base")
        return real(cfg, run_dir)

    monkeypatch.setattr(runner, "load_system", counting)
    return loads


def test_a_second_evaluation_reuses_the_base_and_reports_the_same(trained, tmp_path, monkeypatch):
    path, run_dir = trained
    loads = base_loads(monkeypatch)
    first = runner.evaluate(quick(path), [run_dir], out_dir=tmp_path / "a")
    second = runner.evaluate(quick(path), [run_dir], out_dir=tmp_path / "b")
    assert loads == ["base"]  # measured once, read back the second time
    assert first.report["metrics"] == second.report["metrics"]
    assert first.report["comparisons"] == second.report["comparisons"]
    assert first.report["redteam"] == second.report["redteam"]
    rows = [json.loads(line) for line in (tmp_path / "b" / "outputs.jsonl").read_text().splitlines()]
    assert [r["base"] for r in rows] == [
        json.loads(line)["base"] for line in (tmp_path / "a" / "outputs.jsonl").read_text().splitlines()
    ]


@pytest.mark.parametrize(
    "change", ["eval.max_new_tokens=9", "eval.temperature=0.7", "eval.redteam.enabled=false", "eval.max_examples=5"]
)
def test_any_changed_input_measures_the_base_again(trained, tmp_path, monkeypatch, change):
    path, run_dir = trained
    runner.evaluate(quick(path), [run_dir], out_dir=tmp_path / "warm")  # the unchanged inputs are cached
    loads = base_loads(monkeypatch)
    runner.evaluate(quick(path, change), [run_dir], out_dir=tmp_path / "changed")
    assert loads == ["base"]


def test_cache_off_or_unreadable_measures_the_base_again(trained, tmp_path, monkeypatch):
    path, run_dir = trained
    cfg = quick(path)
    runner.evaluate(cfg, [run_dir], out_dir=tmp_path / "warm")
    loads = base_loads(monkeypatch)
    runner.evaluate(quick(path, "eval.cache_base=false"), [run_dir], out_dir=tmp_path / "off")
    assert loads == ["base"]
    for entry in (cfg.path(cfg.output.dir) / base_cache.CACHE_FOLDER).glob("*.json"):
        entry.write_text("{truncated")
    runner.evaluate(cfg, [run_dir], out_dir=tmp_path / "corrupt")
    assert loads == ["base", "base"]
