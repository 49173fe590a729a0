"""`tuneloop run` on the tiny Llama: each stage is reused when its inputs are unchanged and redone when not,
and an interrupted run resumes training from its checkpoint."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from tests.train_helpers import adapter_weights, chat_rows, make_train_project, sigterm_at_training_step
from tuneloop import config, loop, registry
from tuneloop.curve import parse_sizes
from tuneloop.errors import UserError
from tuneloop.train import sft

EVAL = {
    "max_new_tokens": 8,
    "bootstrap": 100,
    "forgetting": {"enabled": False},
    "redteam": {"enabled": False},
}


@pytest.fixture
def project(tmp_path: Path, tiny_llama: Path) -> Path:
    path = make_train_project(tmp_path, tiny_llama, chat_rows(60), max_steps=6, save_every=3, eval_every=3)
    doc = yaml.safe_load(path.read_text())
    doc["task"]["metrics"] = ["output_length"]
    doc["eval"] = EVAL
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def actions(result: loop.LoopResult) -> dict[str, str]:
    return {s.name: s.action for s in result.stages}


def test_each_stage_reruns_only_when_its_inputs_change(project: Path) -> None:
    first = loop.run(config.load(project))
    # make_train_project prepared the data with this very config, so even the first run reuses it.
    assert actions(first) == {"prepare": "reused", "train": "ran", "eval": "ran"}
    assert (first.run_dir / "eval" / "report.html").is_file()
    assert first.report["comparisons"][first.run_dir.name]["output_length"]["verdict"]

    again = loop.run(config.load(project))
    assert actions(again) == {"prepare": "reused", "train": "reused", "eval": "reused"}
    assert again.run_dir == first.run_dir

    lr = loop.run(config.load(project, ["train.learning_rate=0.02"]))
    assert actions(lr) == {"prepare": "reused", "train": "ran", "eval": "ran"}
    assert lr.run_dir != first.run_dir

    # Watching settings are not part of the key: the trained weights would be the same.
    quiet = loop.run(config.load(project, ["train.log_every=3"]))
    assert actions(quiet) == {"prepare": "reused", "train": "reused", "eval": "reused"}

    longer = loop.run(config.load(project, ["eval.max_new_tokens=4"]))
    assert actions(longer) == {"prepare": "reused", "train": "reused", "eval": "ran"}
    assert longer.run_dir == first.run_dir

    data = project.parent / "data" / "train.jsonl"
    data.write_text(data.read_text() + json.dumps(chat_rows(1, seed=9)[0]) + "\n")
    changed = loop.run(config.load(project))
    assert actions(changed) == {"prepare": "ran", "train": "ran", "eval": "ran"}

    history = json.loads((first.run_dir / loop.LOOP_FILE).read_text())["history"]
    assert [h["stages"][2]["action"] for h in history] == ["ran", "reused", "reused", "ran"]


def test_a_reward_model_trained_again_in_the_same_folder_reruns_the_evaluation(tmp_path: Path) -> None:
    import torch
    from safetensors.torch import save_file

    reward = tmp_path / "runs" / "rm"
    (reward / "final").mkdir(parents=True)
    (reward / config.RESOLVED_FILENAME).write_text("method: {name: reward}\n")
    path = tmp_path / "tuneloop.yaml"
    path.write_text("task: {objective: answer, type: chat}\neval: {reward_model: runs/rm}\n")
    cfg, manifest = config.load(path), {"splits": {"test": {"sha256": "t", "rows": 3}}}

    def key_with(weights: torch.Tensor) -> str:
        save_file({"score.weight": weights}, str(reward / "final" / "model.safetensors"))
        return loop.eval_key(cfg, "trained", manifest)

    first = key_with(torch.zeros(1, 8))
    assert key_with(torch.zeros(1, 8)) == first  # the same weights: the evaluation is reused
    assert key_with(torch.ones(1, 8)) != first  # same path, other weights: evaluated again
    (reward / config.RESOLVED_FILENAME).write_text("method: {name: lora}\n")
    with pytest.raises(UserError, match=r"eval\.reward_model: .* is not a reward-model run"):
        loop.eval_key(cfg, "trained", manifest)


def test_an_edited_report_is_not_reused(project: Path) -> None:
    """The eval stamp vouches for one metrics.json; a standalone `tuneloop eval` overwrites it."""
    first = loop.run(config.load(project))
    metrics = first.run_dir / "eval" / "metrics.json"
    metrics.write_text(metrics.read_text().replace('"bootstrap": 100', '"bootstrap": 101'))
    assert actions(loop.run(config.load(project)))["eval"] == "ran"


def test_an_interrupted_run_resumes_training_from_its_checkpoint(
    project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    straight = sft.train(config.load(project))
    real = sft.token_loss
    monkeypatch.setattr(sft, "token_loss", sigterm_at_training_step(4, real))
    stopped = loop.run(config.load(project))
    assert stopped.status == "interrupted" and actions(stopped) == {"prepare": "reused", "train": "ran"}
    monkeypatch.setattr(sft, "token_loss", real)

    resumed = loop.run(config.load(project))
    assert actions(resumed) == {"prepare": "reused", "train": "resumed", "eval": "ran"}
    assert resumed.run_dir == stopped.run_dir
    a, b = adapter_weights(straight.run_dir / "final"), adapter_weights(resumed.run_dir / "final")
    for key in a:
        assert (a[key] - b[key]).abs().max() <= 1e-6


def test_a_run_interrupted_before_its_first_checkpoint_starts_again_in_its_folder(project: Path) -> None:
    cfg = config.load(project)
    manifest = json.loads((cfg.path(cfg.data.prepared_dir) / "manifest.json").read_text())
    run_dir = cfg.path(cfg.output.dir) / "crashed"
    run_dir.mkdir(parents=True)
    key = loop.train_key(cfg, manifest)
    (run_dir / loop.LOOP_FILE).write_text(json.dumps({"kind": "loop", "train_key": key}))
    (run_dir / "half-written.tmp").write_text("x")
    result = loop.run(cfg, evaluate=False)
    assert result.run_dir == run_dir and actions(result)["train"] == "ran"
    assert not (run_dir / "half-written.tmp").exists() and (run_dir / "final").is_dir()


def test_cli_run_prints_the_stages_and_the_verdict(project: Path, cli) -> None:
    done = cli("run", project)
    assert done.code == 0, done.err
    assert "prepare" in done.out and "reused" in done.out and "ran" in done.out
    assert "output_length" in done.out and "report.html" in done.out
    uri = f"sqlite:///{project.parent / 'mlflow.db'}"
    again = cli("run", "--config", project, "--mlflow", uri)
    assert again.code == 0 and again.out.count("reused") == 3, again.out
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    (mirrored,) = client.search_runs([client.get_experiment_by_name(project.parent.name).experiment_id])
    assert f"mlflow    {uri}: run {mirrored.info.run_id}" in again.out
    assert mirrored.data.tags["tuneloop.kind"] == "loop" and "eval.output_length.delta" in mirrored.data.metrics


# --------------------------------------------------------------------------- the data-size curve


def test_subsets_are_nested_and_seeded() -> None:
    examples = list(range(100))
    small, large = sft.subset(examples, 10, seed=3), sft.subset(examples, 40, seed=3)
    assert len(small) == 10 and set(small) < set(large)
    assert small == sft.subset(examples, 10, seed=3) and small != sft.subset(examples, 10, seed=4)
    with pytest.raises(UserError, match="train split has 100"):
        sft.subset(examples, 101, seed=3)


def test_the_curve_flattens_where_the_largest_size_stops_being_better() -> None:
    from types import SimpleNamespace

    from tuneloop.curve import _flattens_at

    better, same = SimpleNamespace(verdict="better"), SimpleNamespace(verdict="no significant change")
    assert _flattens_at([60, 120, 240, 480], [better, better, same, same]) == 240
    assert _flattens_at([60, 120, 240, 480], [better, same, better, same]) == 480  # a later gain: still rising
    assert _flattens_at([60, 120], [same, same]) == 60
    assert _flattens_at([60], [same]) is None
    with pytest.raises(UserError, match="whole numbers"):
        parse_sizes("60,lots")
    assert parse_sizes("240, 60,120,60") == [60, 120, 240]


def test_curve_on_the_tiny_model(project: Path, cli) -> None:
    sets = ["--set", "train.max_steps=null", "--set", "train.epochs=1"]
    done = cli("curve", "--sizes", "12,24", "--config", project, *sets)
    assert done.code == 0, done.err
    out = next((project.parent / "runs" / "curves").iterdir())
    data = json.loads((out / "curve.json").read_text())
    points = data["metrics"]["output_length"]["points"]
    assert [p["examples"] for p in points] == [0, 12, 24] and points[0]["run"] == "base"
    assert all(p["ci_low"] <= p["value"] <= p["ci_high"] for p in points[1:])
    assert (out / "curve.png").stat().st_size > 1000 and "data:image/png;base64" in (out / "curve.html").read_text()
    assert "output_length" in done.out and "curve.png" in done.out
    runs = {json.loads((d / "summary.json").read_text())["examples"]["train"] for d in map(Path, data["runs"].values())}
    assert runs == {12, 24}
    for run in map(Path, data["runs"].values()):  # each point's data record lists its own subset
        rows = registry.read_row_hashes(run)["train"]
        assert sum(rows.values()) == json.loads((run / "summary.json").read_text())["examples"]["train"]

    again = cli("curve", "--sizes", "12,24", "--config", project, *sets)
    assert again.code == 0 and "evaluation were reused" in again.err
    more = cli("curve", "--sizes", "12,24,48", "--config", project, *sets)
    assert more.code == 0, more.err
    assert more.err.count("train reused") == 2 and more.err.count("train ran") == 1
    too_many = cli("curve", "--sizes", "12,4800", "--config", project)
    train_rows = json.loads((project.parent / "data/prepared/manifest.json").read_text())["splits"]["train"]["rows"]
    assert too_many.code == 1 and f"exceed the {train_rows} train examples" in too_many.err


# --------------------------------------------------------------------------- sweeps


def test_sweep_grid_and_random_points() -> None:
    from tuneloop.sweep import SweepSpec, grid, sample

    spec = SweepSpec.model_validate(
        {
            "space": {
                "train.learning_rate": {"low": 1e-4, "high": 1e-2, "log": True, "grid": 3},
                "method.lora.r": [4, 8],
                "train.epochs": {"low": 1, "high": 3, "grid": 3},
            }
        }
    )
    points = grid(spec)
    assert len(points) == 3 * 2 * 3
    assert sorted({p["train.learning_rate"] for p in points}) == [1e-4, 1e-3, 1e-2]
    assert sorted({p["train.epochs"] for p in points}) == [1, 2, 3]
    draws = [sample(spec, __import__("random").Random(0)) for _ in range(2)]
    assert draws[0] == draws[1]
    assert 1e-4 <= draws[0]["train.learning_rate"] <= 1e-2 and draws[0]["train.epochs"] in (1, 2, 3)
    no_grid = SweepSpec.model_validate({"space": {"train.learning_rate": {"low": 1e-4, "high": 1e-3}}})
    with pytest.raises(UserError, match="grid: N"):
        grid(no_grid)


def test_sweep_file_errors_are_reported_together(tmp_path: Path) -> None:
    from tuneloop.sweep import load_spec

    bad = tmp_path / "sweep.yaml"
    bad.write_text("strategy: bayes\nspace:\n  train.learning_rate: {low: 1, high: 0.1}\nextra: 1\n")
    with pytest.raises(UserError) as e:
        load_spec(bad)
    message = str(e.value)
    assert "3 problem(s)" in message and "'optuna'" in message and "must be above low" in message


@pytest.mark.parametrize("strategy", ["grid", "optuna"])
def test_sweep_ranks_trials_on_validation(project: Path, cli, strategy: str) -> None:
    spec = project.parent / "sweep.yaml"
    spec.write_text(
        f"strategy: {strategy}\ntrials: 2\nseed: 1\n"
        "space:\n  train.learning_rate: [0.0001, 0.01]\n  method.lora.r: [2]\n"
    )
    done = cli("sweep", spec, "--config", project)
    assert done.code == 0, done.err
    out = next((project.parent / "runs" / "sweeps").iterdir())
    result = json.loads((out / "sweep.json").read_text())
    assert result["strategy"] == strategy and len(result["trials"]) == 2
    values = [t["value"] for t in result["trials"]]
    assert values == sorted(values) and [t["rank"] for t in result["trials"]] == [1, 2]  # loss: lower first
    for t in result["trials"]:
        summary = json.loads((Path(t["run"]) / "summary.json").read_text())
        assert summary["best"]["value"] == t["value"]
        trained = yaml.safe_load((Path(t["run"]) / "config.resolved.yaml").read_text())
        assert trained["train"]["learning_rate"] == t["params"]["train.learning_rate"]
        assert json.loads((Path(t["run"]) / loop.LOOP_FILE).read_text())["kind"] == "sweep-trial"
    if strategy == "grid":
        assert {t["params"]["train.learning_rate"] for t in result["trials"]} == {0.0001, 0.01}
    assert "rank" in (out / "sweep.md").read_text() and "best" in done.out
    # The same sweep again (same seed, so Optuna asks the same questions): every trial is reused.
    again = cli("sweep", spec, "--config", project)
    assert again.code == 0, again.err
    repeated = json.loads((out / "sweep.json").read_text())["trials"]
    assert [t["action"] for t in repeated] == ["reused", "reused"]
    assert [(t["run"], t["value"]) for t in repeated] == [(t["run"], t["value"]) for t in result["trials"]]


def test_sweep_without_optuna_is_a_grid(monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    from tuneloop.sweep import choose_strategy

    assert choose_strategy("auto") == "optuna"
    monkeypatch.setitem(sys.modules, "optuna", None)  # as if it were not installed
    assert choose_strategy("auto") == "grid" and choose_strategy("random") == "random"
    with pytest.raises(UserError, match="pip install optuna"):
        choose_strategy("optuna")


@pytest.mark.parametrize(("signal", "code"), [("SIGTERM", 143), ("SIGINT", 130), (None, 130)])
def test_an_interrupted_loop_exits_with_the_signals_code(tmp_path: Path, signal: str | None, code: int) -> None:
    from tuneloop.cli.run import stopped_exit_code

    (tmp_path / "summary.json").write_text(json.dumps({"status": "stopped", "signal": signal}))
    assert stopped_exit_code(tmp_path) == code
