"""Win rate of tuned over base under a reward model (eval.reward_model) and the pairwise judge, in the generative
evaluation and the preference evaluation (evaluate/winrate.py)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from tests.preference_helpers import make_preference_project, pair_rows
from tests.test_eval import _edit, _longer, _serve
from tests.train_helpers import chat_rows, make_train_project
from tuneloop import config
from tuneloop.errors import UserError
from tuneloop.evaluate.compare import bootstrap_indices
from tuneloop.evaluate.winrate import reward_win_rates, win_rate

SYSTEM = {"role": "system", "content": "You are the support desk of a small web shop. Answer in one sentence."}


def _by_length(prompts: list, answers: list[str]) -> list[float]:
    """A reward 'model' as a Python function: longer is better."""
    assert len(prompts) == len(answers)
    return [float(len(a)) for a in answers]


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


# --------------------------------------------------------------------------- the statistics


def test_win_rate_is_one_when_every_tuned_answer_scores_higher() -> None:
    conversations = [[{"role": "user", "content": f"question {i}"}] for i in range(20)]
    answers = {"base": ["x" * i for i in range(20)], "run": ["y" * (i + 1) for i in range(20)]}
    report, rewards = reward_win_rates(_by_length, conversations, answers, bootstrap_indices(20, 200), 0.95, "len")
    w, c = report["runs"]["run"]["win_rate"], report["runs"]["run"]["reward"]
    assert (w["rate"], w["wins"], w["ties"], w["losses"], w["examples"]) == (1.0, 20, 0, 0, 20)
    assert w["ci_low"] == w["ci_high"] == 1.0 and w["verdict"] == "run preferred"
    assert c["baseline"] == 9.5 and c["candidate"] == 10.5 and c["delta"] == 1.0 and c["verdict"] == "better"
    assert rewards == {"base": [float(i) for i in range(20)], "run": [float(i + 1) for i in range(20)]}
    # and the other way round
    swapped = {"base": answers["run"], "run": answers["base"]}
    w = reward_win_rates(_by_length, conversations, swapped, bootstrap_indices(20, 200), 0.95, "len")[0]
    assert w["runs"]["run"]["win_rate"]["rate"] == 0.0 and w["runs"]["run"]["win_rate"]["verdict"] == "base preferred"


def test_identical_systems_win_half_the_time() -> None:
    """The same answers tie, even under a scorer whose float noise differs from call to call; equal scores tie."""
    noise = np.random.default_rng(0)

    def noisy(prompts: list, answers: list[str]) -> list[float]:
        return [len(a) + float(noise.normal(0, 1e-6)) for a in answers]

    conversations = [[{"role": "user", "content": f"q{i}"}] for i in range(30)]
    same = [f"answer {i}" for i in range(30)]
    report = reward_win_rates(noisy, conversations, {"base": same, "run": list(same)}, bootstrap_indices(30), 0.95, "n")
    w = report[0]["runs"]["run"]["win_rate"]
    assert (w["rate"], w["ties"], w["ci_low"], w["ci_high"]) == (0.5, 30, 0.5, 0.5)
    assert w["verdict"] == "no significant preference"
    mirrored = {"base": same, "run": [a[::-1] for a in same]}  # other answers, the same length: equal rewards
    w = reward_win_rates(_by_length, conversations, mirrored, bootstrap_indices(30), 0.95, "len")[0]
    assert w["runs"]["run"]["win_rate"]["rate"] == 0.5 and w["runs"]["run"]["reward"]["delta"] == 0


def test_win_rate_interval_contains_the_estimate_and_is_reproducible_with_the_seed() -> None:
    per_prompt = np.random.default_rng(3).choice([0.0, 0.5, 1.0], size=40, p=[0.3, 0.2, 0.5])
    first = win_rate(per_prompt, bootstrap_indices(40, 500, seed=7), 0.95)
    again = win_rate(per_prompt, bootstrap_indices(40, 500, seed=7), 0.95)
    assert first == again
    assert first.rate == pytest.approx(per_prompt.mean()) and first.ci_low < first.rate < first.ci_high
    assert (first.wins, first.ties, first.losses) == tuple(int((per_prompt == v).sum()) for v in (1.0, 0.5, 0.0))
    narrow = win_rate(per_prompt, bootstrap_indices(40, 500, seed=7), 0.5)
    assert first.ci_low < narrow.ci_low <= narrow.ci_high < first.ci_high  # eval.confidence sets the width
    assert win_rate(per_prompt[:9], bootstrap_indices(9, 200), 0.95).verdict == "too few examples (< 10)"


# --------------------------------------------------------------------------- the generative evaluation


@pytest.fixture(scope="module")
def reward_run(tmp_path_factory: pytest.TempPathFactory, tiny_llama: Path) -> Path:
    from tuneloop.train.preference import train

    root = tmp_path_factory.mktemp("reward")
    path = make_preference_project(root, tiny_llama, method="reward", rows=pair_rows(100), max_steps=12, eval_every=6)
    return train(config.load(path)).run_dir


@pytest.fixture(scope="module")
def chat_run(tmp_path_factory: pytest.TempPathFactory, tiny_llama: Path) -> tuple[Path, Path]:
    """A chat project whose prompts carry a system turn, with one finished SFT run: (config path, run folder)."""
    from tuneloop.train.sft import train

    rows = [{"messages": [SYSTEM, *row["messages"]]} for row in chat_rows(120)]
    path = make_train_project(tmp_path_factory.mktemp("chat"), tiny_llama, rows)
    _edit(path, eval={"max_new_tokens": 12, "bootstrap": 200, "forgetting": {"enabled": False}})
    return path, train(config.load(path)).run_dir


QUICK = ["task.metrics=[output_length]", "eval.redteam.enabled=false"]


def test_eval_reports_the_reward_and_win_rate_of_each_run(
    chat_run: tuple[Path, Path], reward_run: Path, tmp_path: Path, cli
) -> None:
    from tuneloop.reward import load_reward_model

    path, run_dir = chat_run
    scorer_dir = tmp_path / "reward <b>&"  # the report pages must escape what they show
    shutil.copytree(reward_run, scorer_dir)
    out = tmp_path / "eval"
    # sampled: greedy answers of the tiny random base are all special tokens, which decode to "" and would tie
    settings = [*QUICK, "eval.temperature=1.0", f"eval.reward_model={scorer_dir}"]
    sets = [a for s in settings for a in ("--set", s)]
    result = cli("eval", "--config", path, "--run", run_dir, *sets, "--out", out)
    assert result.code == 0, result.err
    report = json.loads((out / "metrics.json").read_text())
    reward = report["reward_model"]
    assert reward["model"] == str(scorer_dir) and reward["examples"] == report["test"]["examples"] >= 10
    r = reward["runs"][run_dir.name]
    w, c = r["win_rate"], r["reward"]
    assert w["wins"] + w["ties"] + w["losses"] == w["examples"] == reward["examples"]
    assert w["wins"] > 0 and w["losses"] > 0  # the answers differ, so the counts below test something
    assert w["ci_low"] <= w["rate"] <= w["ci_high"] and c["ci_low"] <= c["delta"] <= c["ci_high"]

    # every answer's reward is in outputs.jsonl, and the counts and means follow from them
    rows = _rows(out / "outputs.jsonl")
    base = np.array([row["base"]["reward"] for row in rows])
    tuned = np.array([row[run_dir.name]["reward"] for row in rows])
    same = [row["base"]["output"] == row[run_dir.name]["output"] for row in rows]
    wins = [t > b and not s for b, t, s in zip(base, tuned, same, strict=True)]
    losses = [t < b and not s for b, t, s in zip(base, tuned, same, strict=True)]
    assert (w["wins"], w["losses"]) == (sum(wins), sum(losses))
    assert w["rate"] == pytest.approx((sum(wins) + 0.5 * (len(rows) - sum(wins) - sum(losses))) / len(rows))
    assert c["baseline"] == pytest.approx(base.mean()) and c["candidate"] == pytest.approx(tuned.mean())

    # the reward model saw the whole conversation (system turn included), rendered by its own template
    score = load_reward_model(reward_run)
    prompts = [[SYSTEM, {"role": "user", "content": row["prompt"]}] for row in rows]
    assert score(prompts, [row["base"]["output"] for row in rows]) == pytest.approx(base.tolist(), abs=1e-4)
    user_only = score([row["prompt"] for row in rows], [row["base"]["output"] for row in rows])
    assert np.abs(np.array(user_only) - base).max() > 1e-4  # so the system turn made a difference

    md, page = (out / "report.md").read_text(), (out / "report.html").read_text()
    assert "## Reward model" in md
    assert f"| {run_dir.name} | {c['baseline']:.4g} | {c['candidate']:.4g} |" in md
    assert f"| {w['rate']:.1%} | [{w['ci_low']:.1%}, {w['ci_high']:.1%}] | {w['wins']} / {w['ties']} /" in md
    assert "Reward model: mean reward and win rate" in page and f"{w['wins']} / {w['ties']} / {w['losses']}" in page
    assert "reward &lt;b&gt;&amp;" in page and "<b>&" not in page
    assert "win rate (reward model)" in result.out and f"{w['rate']:10.1%}" in result.out


def test_a_reward_model_that_is_not_a_reward_run_is_an_error_before_generation(
    chat_run: tuple[Path, Path], tmp_path: Path, monkeypatch, cli
) -> None:
    from tuneloop import generate, registry
    from tuneloop.evaluate.runner import evaluate, load_test

    path, run_dir = chat_run

    def no_generation(*args, **kwargs):
        raise AssertionError("generated before the reward model was checked")

    monkeypatch.setattr(generate, "generate_batch", no_generation)
    cfg = config.load(path, overrides=QUICK)
    sha = load_test(cfg, private=False)[1]
    looks = len(registry.test_uses(cfg, sha))
    for value, message in [
        (run_dir, r"eval.reward_model: .* is not a reward-model run \(method.name reward\)"),
        (tmp_path / "nowhere", r"eval.reward_model .*nowhere: no such run folder"),
    ]:
        with pytest.raises(UserError, match=message):
            evaluate(config.load(path, overrides=[*QUICK, f"eval.reward_model={value}"]), [run_dir], out_dir=tmp_path)
    assert len(registry.test_uses(cfg, sha)) == looks  # refused before the test set counted as looked at
    result = cli("eval", "--config", path, "--run", run_dir, "--set", f"eval.reward_model={run_dir}")
    assert result.code == 1 and "is not a reward-model run" in result.err and "Traceback" not in result.err


# --------------------------------------------------------------------------- the preference evaluation


@pytest.fixture(scope="module")
def dpo_run(tmp_path_factory: pytest.TempPathFactory, tiny_llama: Path) -> Path:
    from tuneloop.train.preference import train

    path = make_preference_project(tmp_path_factory.mktemp("dpo"), tiny_llama, rows=pair_rows(100))
    _edit(path, eval={"max_new_tokens": 10, "bootstrap": 200})
    return train(config.load(path)).run_dir


def test_preference_eval_reports_the_judge_and_reward_win_rates_of_the_answers(
    dpo_run: Path, reward_run: Path, tmp_path: Path, cli
) -> None:
    path = dpo_run.parent.parent / "tuneloop.yaml"
    server = _serve(_longer)
    try:
        url = f"http://127.0.0.1:{server.server_port}/v1"
        sets = ["--set", f"eval.judge.url={url}", "--set", f"eval.reward_model={reward_run}"]
        result = cli("eval", "--config", path, "--run", dpo_run, *sets, "--out", tmp_path / "p")
    finally:
        server.shutdown()
        server.server_close()
    assert result.code == 0, result.err
    report = json.loads((tmp_path / "p" / "metrics.json").read_text())
    assert report["comparisons"][dpo_run.name]["preference_accuracy"]["baseline"] == 0.5  # the pair scores still
    answers = _rows(tmp_path / "p" / "answers.jsonl")
    assert len(answers) == report["test"]["examples"] >= 5  # one answer per test prompt (each pair its own prompt)

    judged = report["judge_win_rate"]
    j = judged["runs"][dpo_run.name]
    assert judged["examples"] == len(answers) and j["unparsed"] == 0
    assert j["wins"] + j["ties"] + j["losses"] == j["examples"] == len(answers)
    longer = [len(a["answers"][dpo_run.name]) > len(a["answers"]["base"]) for a in answers]
    shorter = [len(a["answers"][dpo_run.name]) < len(a["answers"]["base"]) for a in answers]
    assert (j["wins"], j["losses"]) == (sum(longer), sum(shorter))  # the judge prefers the longer answer
    assert j["ci_low"] <= j["rate"] <= j["ci_high"]
    assert [a["judge"][dpo_run.name] for a in answers] == [
        1.0 if x else 0.0 if y else 0.5 for x, y in zip(longer, shorter, strict=True)
    ]

    w = report["reward_model"]["runs"][dpo_run.name]["win_rate"]
    assert w["wins"] + w["ties"] + w["losses"] == len(answers) and w["ci_low"] <= w["rate"] <= w["ci_high"]
    assert all(set(a["reward"]) == {"base", dpo_run.name} for a in answers)

    md, page = (tmp_path / "p" / "report.md").read_text(), (tmp_path / "p" / "report.html").read_text()
    assert "## Judge win rate" in md and "## Reward model" in md
    assert f"| {dpo_run.name} | {j['rate']:.1%} | [{j['ci_low']:.1%}, {j['ci_high']:.1%}] |" in md
    assert "<h2>Judge win rate</h2>" in page and f"<td>{j['rate']:.1%}</td>" in page
    assert "win rate (judge)" in result.out and "win rate (reward model)" in result.out


def test_preference_eval_refuses_a_judge_that_gives_no_win_rate(dpo_run: Path, monkeypatch) -> None:
    from tuneloop import runs
    from tuneloop.evaluate.preference import evaluate

    monkeypatch.setattr(runs, "load_final", lambda *a: pytest.fail("a model was loaded before the settings check"))
    overrides = ["eval.judge.url=http://127.0.0.1:9/v1", "eval.judge.mode=score"]
    cfg = config.load(dpo_run.parent.parent / "tuneloop.yaml", overrides=overrides)
    with pytest.raises(UserError, match=r"set eval\.judge\.mode: pairwise"):
        evaluate(cfg, [dpo_run])


def test_a_kto_runs_win_rate_is_asked_on_its_rated_prompts_with_the_desirable_answer_as_reference(
    tmp_path: Path, tiny_llama: Path
) -> None:
    """Unpaired test rows: one answer per prompt; the judge sees a desirable answer as the reference, else none."""
    from tests.test_kto import rated_rows
    from tuneloop.evaluate.preference import evaluate
    from tuneloop.train.preference import train

    path = make_preference_project(tmp_path / "kto", tiny_llama, method="kto", rows=rated_rows(60))
    _edit(path, eval={"max_new_tokens": 6, "bootstrap": 200})
    run_dir = train(config.load(path)).run_dir
    asked: list[str] = []
    server = _serve(lambda prompt: asked.append(prompt) or _longer(prompt))
    try:
        cfg = config.load(path, overrides=[f"eval.judge.url=http://127.0.0.1:{server.server_port}/v1"])
        report = evaluate(cfg, [run_dir], out_dir=tmp_path / "e").report
    finally:
        server.shutdown()
        server.server_close()
    answers = _rows(tmp_path / "e" / "answers.jsonl")
    assert report["test"]["pairs"] == 0 and len(answers) == report["test"]["rated"] >= 3
    j = report["judge_win_rate"]["runs"][run_dir.name]
    assert j["wins"] + j["ties"] + j["losses"] == len(answers) and j["unparsed"] == 0
    test_rows = {r["prompt"]: r for r in rated_rows(60)}
    assert {test_rows[a["prompt"]]["label"] for a in answers} == {True, False}  # both kinds of reference
    for answer in answers:
        row = test_rows[answer["prompt"]]
        shown = [p for p in asked if f"Question:\n{answer['prompt']}\n" in p]
        assert len(shown) == 2  # asked in both orders
        expected = row["completion"] if row["label"] else "(none)"
        assert all(f"Reference answer:\n{expected}\n" in p for p in shown)
