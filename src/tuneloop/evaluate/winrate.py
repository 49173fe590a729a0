"""Win rate of tuned over base: on each test prompt, is the run's answer better than the base's answer?

Two things can say "better": a trained reward model (`eval.reward_model`, a `method.name: reward` run),
which scores every answer, and the pairwise LLM judge (evaluate/judge.py), which compares the two answers
asked in both orders. Each prompt scores 1 (the run's answer wins), 0.5 (a tie) or 0 (the base's wins);
the win rate is their mean, so 0.5 is no preference either way. Its interval is a bootstrap over the test
prompts; the reward model's mean reward, base against run, gets the paired-bootstrap comparison every
metric gets (evaluate/compare.py).

Used by the generative evaluation (runner.py) and the preference evaluation (preference.py): both generate
the answers, this module scores and compares them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal, TypedDict

import numpy as np

from tuneloop import console
from tuneloop.errors import UserError
from tuneloop.evaluate.compare import MIN_EXAMPLES, MeanScores, bootstrap_indices, compare

Verdict = Literal["run preferred", "base preferred", "no significant preference", "too few examples (< 10)"]


@dataclass
class WinRate:
    """How often a run's answer beat the base's answer to the same prompt."""

    rate: float  # mean over prompts of 1 (win), 0.5 (tie), 0 (loss)
    ci_low: float
    ci_high: float
    wins: int
    ties: int
    losses: int
    examples: int  # prompts compared
    verdict: Verdict  # a preference only when the interval excludes 0.5

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


class RewardRun(TypedDict):
    """One run against the base under the reward model."""

    reward: dict[str, Any]  # Comparison.to_json(): mean reward base → run, change, interval, verdict
    win_rate: dict[str, Any]  # WinRate.to_json()


class RewardReport(TypedDict):
    """`reward_model` in metrics.json."""

    model: str  # the reward run's folder
    examples: int
    runs: dict[str, RewardRun]


class JudgeWinRates(TypedDict):
    """`judge_win_rate` in a preference evaluation's metrics.json."""

    url: str
    model: str
    rubric: str
    reference: str  # what the judge was shown as the reference answer
    examples: int
    runs: dict[str, dict[str, Any]]  # WinRate.to_json() plus `unparsed`


# --------------------------------------------------------------------------- the statistics


def outcomes(base: Sequence[float], run: Sequence[float], same_answer: Sequence[bool] | None = None) -> np.ndarray:
    """Per prompt: 1 when the run's score is higher, 0 when lower, 0.5 when equal or when both gave the same answer."""
    base, run = np.asarray(base, dtype=np.float64), np.asarray(run, dtype=np.float64)
    result = np.where(run > base, 1.0, np.where(run < base, 0.0, 0.5))
    if same_answer is not None:
        result[np.asarray(same_answer, dtype=bool)] = 0.5  # an answer cannot beat itself, whatever float noise says
    return result


def win_rate(per_prompt: np.ndarray, indices: np.ndarray, confidence: float = 0.95) -> WinRate:
    """The mean of per-prompt outcomes with a percentile-bootstrap interval over the rows of `indices`."""
    per_prompt = np.asarray(per_prompt, dtype=np.float64)
    means = per_prompt[indices].mean(axis=1)
    tail = (1 - confidence) / 2 * 100
    low, high = (float(x) for x in np.percentile(means, [tail, 100 - tail]))
    rate = float(per_prompt.mean())
    verdict: Verdict
    if len(per_prompt) < MIN_EXAMPLES:
        verdict = "too few examples (< 10)"
    elif low > 0.5:
        verdict = "run preferred"
    elif high < 0.5:
        verdict = "base preferred"
    else:
        verdict = "no significant preference"
    return WinRate(
        rate=rate,
        ci_low=low,
        ci_high=high,
        wins=int((per_prompt == 1).sum()),
        ties=int((per_prompt == 0.5).sum()),
        losses=int((per_prompt == 0).sum()),
        examples=len(per_prompt),
        verdict=verdict,
    )


# --------------------------------------------------------------------------- the reward model


def reward_run(cfg: Any) -> Path | None:
    """`eval.reward_model` as a finished reward run's folder (None when unset); a clear error otherwise.

    Reads only the run's saved config, so it costs nothing: call it before any answer is generated.
    """
    from tuneloop.reward import check_reward_run

    value = cfg.eval.reward_model
    if not value:
        return None
    path = cfg.path(value)
    if not path.is_dir() and (cfg.path(cfg.output.dir) / value).is_dir():
        path = cfg.path(cfg.output.dir) / value  # a run's name, as `tuneloop eval --run NAME` takes it
    if not path.is_dir():
        raise UserError(
            f"eval.reward_model {value}: no such run folder (looked in {cfg.root} and {cfg.path(cfg.output.dir)}); "
            "train a reward model (method.name: reward) and give its run folder, or remove eval.reward_model"
        )
    try:
        check_reward_run(path)
    except UserError as e:
        raise UserError(f"eval.reward_model: {e}") from None
    return path.resolve()


def reward_win_rates(
    score: Any,
    conversations: Sequence[list[dict[str, Any]]],
    answers: dict[str, list[str]],
    indices: np.ndarray,
    confidence: float,
    model: str,
) -> tuple[RewardReport, dict[str, list[float]]]:
    """Score every system's answers with `score(prompts, answers)` and compare each run with the base.

    `answers` maps system name → one answer per conversation, the base first. The reward model sees each
    conversation as messages (its own chat template renders them, as in its training) and the answer.
    Returns the report and every answer's reward per system.
    """
    names = list(answers)
    console.note(f"reward model {model}: scoring {len(conversations)} answers of {len(names)} systems")
    rewards: dict[str, np.ndarray] = {}
    for name in names:
        try:
            rewards[name] = np.asarray(score(list(conversations), answers[name]), dtype=np.float64)
        except ValueError as e:
            raise UserError(f"the reward model cannot score {name}'s answers: {e}") from None
    base = names[0]
    runs: dict[str, RewardRun] = {}
    for name in names[1:]:
        same = [a == b for a, b in zip(answers[base], answers[name], strict=True)]
        per_prompt = outcomes(rewards[base], rewards[name], same)
        mean_base, mean_run = MeanScores("reward", rewards[base]), MeanScores("reward", rewards[name])
        runs[name] = {
            "reward": compare(mean_base, mean_run, indices, confidence).to_json(),
            "win_rate": win_rate(per_prompt, indices, confidence).to_json(),
        }
    report: RewardReport = {"model": model, "examples": len(conversations), "runs": runs}
    return report, {name: r.tolist() for name, r in rewards.items()}


def score_with_reward_model(
    cfg: Any,
    path: Path,
    conversations: Sequence[list[dict[str, Any]]],
    answers: dict[str, list[str]],
    indices: np.ndarray,
) -> tuple[RewardReport, dict[str, list[float]]]:
    """`reward_win_rates` with the reward run at `path` (loaded here, after every generating model is freed)."""
    from tuneloop.reward import load_reward_model

    score = load_reward_model(path, cfg.eval.batch_size)
    return reward_win_rates(score, conversations, answers, indices, cfg.eval.confidence, str(path))


# --------------------------------------------------------------------------- the judge


def judge_win_rates(
    cfg: Any, cases: list[Any], systems: list[Any], reference: str
) -> tuple[JudgeWinRates, dict[str, list[float | None]]]:
    """The pairwise judge's win rate of each run over the base (`systems[0]`) on the first eval.judge.max_examples
    cases, asked in both orders (judge.py). Returns the report and each case's outcome per run (None: unparsed)."""
    from tuneloop.evaluate.judge import pairwise_outcomes

    settings = cfg.eval.judge
    n = min(len(cases), settings.max_examples)
    console.note(f"judge (pairwise) at {settings.url}: {n} prompts per run")
    runs: dict[str, dict[str, Any]] = {}
    raw: dict[str, list[float | None]] = {}
    for tuned in systems[1:]:
        raw[tuned.name] = pairwise_outcomes(cfg, cases[:n], systems[0], tuned)
        valid = np.array([o for o in raw[tuned.name] if o is not None])
        if not len(valid):
            raise UserError("the judge gave no parseable A/B/TIE answer; check eval.judge.model and the endpoint")
        indices = bootstrap_indices(len(valid), cfg.eval.bootstrap, cfg.eval.seed)
        result = win_rate(valid, indices, cfg.eval.confidence).to_json()
        runs[tuned.name] = {**result, "unparsed": n - len(valid)}
    report: JudgeWinRates = {
        "url": settings.url,
        "model": settings.model,
        "rubric": settings.rubric,
        "reference": reference,
        "examples": n,
        "runs": runs,
    }
    return report, raw


def markdown_lines(reward: RewardReport | None, judge: JudgeWinRates | None, confidence: float) -> list[str]:
    """The report.md section for both (empty when neither was measured)."""
    lines: list[str] = []
    if reward:
        lines += ["", "## Reward model", "", f"Scored by {reward['model']} on {reward['examples']} test prompts.", ""]
        lines += [
            f"| run | mean reward base | run | change | {confidence:.0%} interval | verdict | win rate | "
            f"{confidence:.0%} interval | wins / ties / losses | preference |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        for name, r in reward["runs"].items():
            c, w = r["reward"], r["win_rate"]
            lines.append(
                f"| {name} | {c['baseline']:.4g} | {c['candidate']:.4g} | {c['delta']:+.4g} | "
                f"[{c['ci_low']:+.3g}, {c['ci_high']:+.3g}] | {c['verdict']} | {w['rate']:.1%} | "
                f"[{w['ci_low']:.1%}, {w['ci_high']:.1%}] | {w['wins']} / {w['ties']} / {w['losses']} | "
                f"{w['verdict']} |"
            )
    if judge:
        lines += [
            "",
            "## Judge win rate",
            "",
            f"Pairwise judge {judge['model']} at {judge['url']}, asked in both orders on {judge['examples']} prompts; "
            f"reference shown: {judge['reference']}.",
            "",
            f"| run | win rate | {confidence:.0%} interval | wins / ties / losses | unparsed | preference |",
            "|---|---|---|---|---|---|",
        ]
        for name, w in judge["runs"].items():
            lines.append(
                f"| {name} | {w['rate']:.1%} | [{w['ci_low']:.1%}, {w['ci_high']:.1%}] | "
                f"{w['wins']} / {w['ties']} / {w['losses']} | {w['unparsed']} | {w['verdict']} |"
            )
    return lines


def console_lines(report: dict[str, Any], name: str) -> list[str]:
    """`tuneloop eval`'s table rows for run `name`: the mean reward and the win rates."""
    lines = []
    reward = (report.get("reward_model") or {}).get("runs", {}).get(name)
    if reward:
        c, w = reward["reward"], reward["win_rate"]
        lines.append(
            f"  {'reward':24} {c['baseline']:10.4g} → {c['candidate']:<10.4g} {c['delta']:+9.4g} "
            f"[{c['ci_low']:+.3g}, {c['ci_high']:+.3g}]  {c['verdict']}"
        )
        lines.append(_win_line("win rate (reward model)", w))
    judged = (report.get("judge_win_rate") or {}).get("runs", {}).get(name)
    if judged:
        lines.append(_win_line("win rate (judge)", judged))
    return lines


def _win_line(label: str, w: dict[str, Any]) -> str:
    return (
        f"  {label:24} {w['rate']:10.1%}  [{w['ci_low']:.1%}, {w['ci_high']:.1%}]  "
        f"{w['wins']}/{w['ties']}/{w['losses']} won/tied/lost  {w['verdict']}"
    )
