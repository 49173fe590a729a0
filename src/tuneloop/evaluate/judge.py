"""An LLM judge behind any OpenAI-compatible endpoint: rubric scores, or pairwise base-vs-tuned preference.

Pairwise asks twice with the answers' order swapped: judges favour a position, and a preference
that flips with the order is a tie, not a win. The judge is a second opinion, so the report also
says how often it agrees with the reference metric. A judge that cannot be reached is an error,
never a score of 0.
"""

from __future__ import annotations

import json
import os
import re
from typing import Any

import numpy as np

from tuneloop import console
from tuneloop.errors import UserError

_SCORE = re.compile(r"\b([1-5])\b")
_CHOICE = re.compile(r"\b(A|B|TIE)\b", re.IGNORECASE)

SCORE_PROMPT = """You are grading an assistant's answer.
Rubric: {rubric}

Question:
{question}

Reference answer:
{reference}

Answer to grade:
{answer}

Reply with one integer from 1 (bad) to 5 (excellent) and nothing else."""

PAIR_PROMPT = """You are comparing two assistant answers to the same question.
Rubric: {rubric}

Question:
{question}

Reference answer:
{reference}

Answer A:
{a}

Answer B:
{b}

Which answer is better under the rubric? Reply with exactly one of: A, B, TIE."""


class JudgeClient:
    """Minimal OpenAI-compatible chat client: one prompt in, the reply's text out (stdlib HTTP)."""

    def __init__(self, url: str, model: str, api_key: str | None, timeout: float) -> None:
        self.url = url.rstrip("/") + "/chat/completions"
        self.model = model
        self.headers = {"Content-Type": "application/json"}
        if api_key:
            self.headers["Authorization"] = f"Bearer {api_key}"
        self.timeout = timeout

    def ask(self, prompt: str) -> str:
        return self.chat([{"role": "user", "content": prompt}])[0]

    def chat(
        self, messages: list[dict[str, Any]], temperature: float = 0.0, max_tokens: int | None = None
    ) -> tuple[str, str | None]:
        """(the reply's text, its finish_reason: "stop", "length" or None when the endpoint gives none)."""
        import urllib.error
        import urllib.request

        body: dict[str, Any] = {"model": self.model, "messages": messages, "temperature": temperature}
        if max_tokens is not None:
            body["max_tokens"] = max_tokens
        request = urllib.request.Request(self.url, json.dumps(body).encode(), self.headers, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                text = response.read().decode("utf-8", "replace")
        except urllib.error.HTTPError as e:
            detail = e.read().decode("utf-8", "replace")[:300]
            raise UserError(f"the judge at {self.url} answered HTTP {e.code}: {detail}") from None
        except TimeoutError:
            raise UserError(f"the judge at {self.url} did not answer within eval.judge.timeout") from None
        except (urllib.error.URLError, OSError) as e:
            reason = getattr(e, "reason", e)
            raise UserError(
                f"the judge endpoint {self.url} is not reachable ({reason}); start it, fix eval.judge.url, "
                "or remove eval.judge.url to evaluate without a judge"
            ) from None
        try:
            choice = json.loads(text)["choices"][0]
            return choice["message"]["content"] or "", choice.get("finish_reason")
        except (ValueError, KeyError, IndexError, TypeError, AttributeError):
            raise UserError(f"the judge at {self.url} did not answer in the OpenAI chat format: {text[:300]}") from None


def _client(cfg: Any) -> JudgeClient:
    settings = cfg.eval.judge
    return JudgeClient(settings.url, settings.model, os.environ.get(settings.api_key_env), settings.timeout)


def check_endpoint(cfg: Any) -> None:
    """One tiny request, so a judge that is down fails the evaluation at the start."""
    _client(cfg).ask("Reply with the word OK.")


def parse_score(reply: str) -> int | None:
    match = _SCORE.search(reply)
    return int(match.group(1)) if match else None


def parse_choice(reply: str) -> str | None:
    match = _CHOICE.search(reply)
    return match.group(1).upper() if match else None


def judge_systems(cfg: Any, cases: list[Any], systems: list[Any], scores: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Judge the first `eval.judge.max_examples` test cases for every run against the base."""
    settings = cfg.eval.judge
    client = _client(cfg)
    n = min(len(cases), settings.max_examples)
    primary = cfg.task.metrics[0]
    base = systems[0]
    console.note(f"judge ({settings.mode}) at {settings.url}: {n} examples per run")
    summary: dict[str, Any] = {"mode": settings.mode, "examples": n, "rubric": settings.rubric}
    details: dict[str, Any] = {}
    for tuned in systems[1:]:
        if settings.mode == "pairwise":
            result = _pairwise(client, settings.rubric, cases[:n], base, tuned)
        else:
            result = {s.name: _scores(client, settings.rubric, cases[:n], s) for s in (base, tuned)}
        summary[tuned.name], details[tuned.name] = _summarise(
            settings.mode, result, scores, base.name, tuned.name, primary, n, cfg.eval
        )
    return {"summary": summary, "details": details}


def pairwise_outcomes(cfg: Any, cases: list[Any], base: Any, tuned: Any) -> list[float | None]:
    """Per case, the judge asked in both orders: 1 tuned preferred, 0 base preferred, 0.5 tie or flip, None unparsed.

    `cases` need `.prompt` and `.reference`; `base` and `tuned` need `.answers[i].text` for each case.
    """
    return _pairwise(_client(cfg), cfg.eval.judge.rubric, cases, base, tuned)


def _scores(client: JudgeClient, rubric: str, cases: list[Any], system: Any) -> list[int | None]:
    return [
        parse_score(
            client.ask(
                SCORE_PROMPT.format(
                    rubric=rubric, question=c.prompt, reference=c.reference or "(none)", answer=system.answers[i].text
                )
            )
        )
        for i, c in enumerate(cases)
    ]


def _pairwise(client: JudgeClient, rubric: str, cases: list[Any], base: Any, tuned: Any) -> list[float | None]:
    """Per case: 1 tuned preferred in both orders, 0 base preferred in both, 0.5 tie or flip, None unparsed."""
    outcomes: list[float | None] = []
    for i, c in enumerate(cases):
        common = {"rubric": rubric, "question": c.prompt, "reference": c.reference or "(none)"}
        first = parse_choice(client.ask(PAIR_PROMPT.format(a=base.answers[i].text, b=tuned.answers[i].text, **common)))
        second = parse_choice(client.ask(PAIR_PROMPT.format(a=tuned.answers[i].text, b=base.answers[i].text, **common)))
        if first is None or second is None:
            outcomes.append(None)
            continue
        # Map both replies to "which system won": in the second ask, A is the tuned answer.
        votes = {"A": "base", "B": "tuned", "TIE": "tie"}[first], {"A": "tuned", "B": "base", "TIE": "tie"}[second]
        outcomes.append(1.0 if votes == ("tuned", "tuned") else 0.0 if votes == ("base", "base") else 0.5)
    return outcomes


def _summarise(
    mode, result, scores, base_name, tuned_name, primary, n, settings
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The judge's verdicts for one run; the win rate's interval is drawn as every other one in the report
    (`settings` is cfg.eval: its bootstrap count, confidence and seed)."""
    from scipy.stats import spearmanr

    from tuneloop.evaluate.compare import bootstrap_indices

    metric_diff = scores[tuned_name][primary].per_example[:n] - scores[base_name][primary].per_example[:n]
    if not scores[base_name][primary].higher_is_better:
        metric_diff = -metric_diff
    if mode == "pairwise":
        valid = [i for i, o in enumerate(result) if o is not None]
        wins = np.array([result[i] for i in valid])
        if not len(wins):
            raise UserError("the judge gave no parseable A/B/TIE answer; check eval.judge.model and the endpoint")
        means = wins[bootstrap_indices(len(wins), settings.bootstrap, settings.seed)].mean(axis=1)
        tail = (1 - settings.confidence) / 2 * 100
        decided = [i for i in valid if result[i] != 0.5 and metric_diff[i] != 0]
        agree = [(result[i] > 0.5) == (metric_diff[i] > 0) for i in decided]
        summary = {
            "tuned_preferred": int((wins == 1).sum()),
            "base_preferred": int((wins == 0).sum()),
            "ties_or_position_flips": int((wins == 0.5).sum()),
            "unparsed": len(result) - len(valid),
            "tuned_win_rate": float(wins.mean()),
            "win_rate_ci": [float(np.percentile(means, tail)), float(np.percentile(means, 100 - tail))],
            f"agreement_with_{primary}": float(np.mean(agree)) if agree else None,
        }
        return summary, {"outcomes": result}
    base_scores, tuned_scores = result[base_name], result[tuned_name]
    both = [i for i in range(n) if base_scores[i] is not None and tuned_scores[i] is not None]
    if not both:
        raise UserError("the judge gave no parseable 1-5 score; check eval.judge.model and the endpoint")
    b, t = np.array([base_scores[i] for i in both], float), np.array([tuned_scores[i] for i in both], float)
    judge_diff = t - b
    correlation = spearmanr(judge_diff, metric_diff[both]).statistic if len(both) > 2 else None
    summary = {
        "base_mean_score": float(b.mean()),
        "tuned_mean_score": float(t.mean()),
        "unparsed": n - len(both),
        f"spearman_with_{primary}_change": None if correlation is None or np.isnan(correlation) else float(correlation),
    }
    return summary, {"scores": result}


def score_answer(client: JudgeClient, rubric: str, question: str, reference: str | None, answer: str) -> float:
    """The judge's 1-5 score of one answer; ValueError when its reply holds no score."""
    prompt = SCORE_PROMPT.format(rubric=rubric, question=question, reference=reference or "(none)", answer=answer)
    reply = client.ask(prompt)
    score = parse_score(reply)
    if score is None:
        raise ValueError(f"the judge's reply holds no 1-5 score: {reply[:120]!r}")
    return float(score)


def endpoint_answerer(client: JudgeClient, temperature: float, max_tokens: int) -> Any:
    """An Answerer for `tuneloop data candidates` (a teacher endpoint): one request per answer.

    A request that fails, or a reply cut at `max_tokens`, is an answer with an error (its prompt becomes
    a reject at its file:line); an endpoint that cannot be reached at all stops the command.
    """
    from tuneloop.data.candidates import Answer

    def answer(conversations: list[list[dict[str, Any]]], k: int) -> list[list[Answer]]:
        results = []
        for messages in conversations:
            replies = []
            for _ in range(k):
                try:
                    text, finish = client.chat(messages, temperature, max_tokens)
                except UserError as e:
                    if "not reachable" in str(e):
                        raise
                    replies.append(Answer("", str(e)))
                    continue
                cut = f"the answer was cut at max_tokens {max_tokens} (finish_reason length)"
                replies.append(Answer(text.strip(), cut if finish == "length" else None))
            results.append(replies)
        return results

    return answer
