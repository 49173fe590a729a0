"""`tuneloop eval` for preference runs: preference accuracy on the test pairs, base vs tuned, with intervals.

What "prefers the chosen answer" means depends on what was trained:
- a dpo/ipo/kto run: its implicit reward, β·(log π(y|x) − log π_ref(y|x)), of the chosen answer above the
  rejected one's (what TRL reports as `rewards/accuracies`). π_ref is the run's starting point (the base,
  or the run it started from). The base is that reference itself, whose implicit reward is 0 for every
  answer: a tie on every pair, scored 0.5, which is chance by construction. The report also gives the
  mean implicit-reward margin.
- a simpo/orpo run (no reference): its mean per-token log-probability of the chosen answer above the
  rejected one's (SimPO's reward, up to its scale β). The base is the model the run started from, scored
  the same way. The report also gives the mean margin.
- a reward run: its score of the chosen answer above the rejected one's. The base is the same model
  before training: the base weights with the score head initialised from `train.seed`, as training
  started from.

Each pair scores 1 (right), 0.5 (tie) or 0 (wrong); the change against the base gets a paired bootstrap
interval over test pairs (evaluate/compare.py). Rankings count as every better-worse pair of them.

Unpaired test rows (one answer rated desirable or undesirable, what kto trains on) are scored by the
implicit reward too, so only for dpo/ipo/kto runs: `label_accuracy` is the share of answers whose implicit
reward has the sign of their label (above 0 for desirable, below for undesirable; 0 is a tie, 0.5). The
base, the reference itself, ties on every answer: 0.5. Its interval is a paired bootstrap over the rows.

With `eval.reward_model` or `eval.judge.url` set, a generating run (dpo, ipo, kto, simpo, orpo) is also asked
what it was tuned for: the base (the runs' start) and each run answer every test prompt, and the report gives
each run's win rate over the base under the reward model and/or the pairwise judge, with intervals
(evaluate/winrate.py).
"""

from __future__ import annotations

import gc
import html
import json
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from tuneloop import console
from tuneloop.config import RESOLVED_FILENAME, ProjectConfig
from tuneloop.config_preference import PREFERENCE_METHODS, REFERENCE_FREE
from tuneloop.data.pairs import Pair, Rated, pairs_of, rated_of, render_pairs, render_rated
from tuneloop.errors import UserError
from tuneloop.evaluate import winrate
from tuneloop.evaluate.compare import MeanScores, bootstrap_indices, compare
from tuneloop.evaluate.provenance import check_no_test_overlap, split_row_hashes
from tuneloop.evaluate.runner import EvalResult, load_test, record_test_use, test_uses
from tuneloop.runs import check_same_base

BASE = "base"


def evaluate(
    cfg: ProjectConfig,
    run_dirs: list[Path],
    *,
    private: bool = False,
    out_dir: Path | None = None,
    limit: int | None = None,
) -> EvalResult:
    """Score every test pair with the base and each run; write metrics.json, outputs.jsonl and the reports."""
    from tuneloop import registry

    examples, test_sha, source = load_test(cfg, private)
    wrong = sorted({e.kind for e in examples if e.kind not in ("preference", "ranked", "unpaired")})
    if wrong:
        raise UserError(f"the test set holds {', '.join(wrong)} rows; a preference run is scored on preference pairs")
    pairs = pairs_of([e for e in examples if e.kind != "unpaired"])
    rated = rated_of([e for e in examples if e.kind == "unpaired"])
    limit = limit or cfg.eval.max_examples
    pairs, rated = (pairs[:limit], rated[:limit]) if limit else (pairs, rated)
    methods = {d.name: run_method(d) for d in run_dirs}
    families = {family_of(m) for m in methods.values()}
    if len(families) > 1:
        raise UserError(
            "evaluate reward-model runs, dpo/ipo/kto runs and simpo/orpo runs separately: their bases and scores differ"
        )
    if rated and families != {"dpo"}:
        raise UserError(
            f"the test set holds {len(rated)} unpaired rows (single rated answers); they are scored by the implicit "
            "reward of a dpo, ipo or kto run, not a reward-model or simpo/orpo run: evaluate this run on pairs"
        )
    family = families.pop()
    test_hashes = None if private else split_row_hashes(cfg.path(cfg.data.prepared_dir))
    for d in run_dirs:
        check_same_base(cfg, d)
        if test_hashes is not None:
            check_no_test_overlap(d, test_hashes, len(test_hashes))
    wanted = _check_win_rate_settings(cfg, family, run_dirs)  # before the test set counts as looked at
    uses = record_test_use(cfg, test_sha, [d.name for d in run_dirs], private)
    shown = f"{len(pairs)} pairs" + (f" and {len(rated)} rated answers" if rated else "")
    console.note(f"test set: {shown} from the {source} (evaluated {uses} time(s) so far)")

    margins: dict[str, np.ndarray] = {}  # per pair: the system's score of chosen minus rejected
    rewards: dict[str, np.ndarray] = {}  # per rated answer: the system's implicit reward (dpo family only)
    if family == "reward":
        margins[BASE] = _reward_margins(_base_reward_scorer(cfg), pairs)
        for d in run_dirs:
            from tuneloop.reward import load_reward_model

            console.note(f"scoring with {d.name}")
            margins[d.name] = _reward_margins(load_reward_model(d), pairs)
            gc.collect()
    elif family == "free":
        starts = {start_of(d) for d in run_dirs}
        if len(starts) > 1:
            raise UserError("these simpo/orpo runs started from different models; evaluate each with its own base")
        margins[BASE] = mean_logp_margins(cfg, _reference(cfg, next(iter(starts))), pairs)
        for d in run_dirs:
            from tuneloop import runs

            console.note(f"scoring with {d.name}")
            margins[d.name] = mean_logp_margins(cfg, runs.load_final(cfg, d)[0], pairs)
            gc.collect()
    else:
        margins[BASE] = np.zeros(len(pairs))  # the reference's implicit reward is 0: every pair ties
        rewards[BASE] = np.zeros(len(rated))
        for d in run_dirs:
            console.note(f"scoring with {d.name}")
            margins[d.name] = implicit_reward_margins(cfg, d, pairs) if pairs else np.zeros(0)
            rewards[d.name] = rated_rewards(cfg, d, rated) if rated else np.zeros(0)
            gc.collect()

    indices = {"pairs": bootstrap_indices(len(pairs), cfg.eval.bootstrap, cfg.eval.seed)}
    scores = {name: system_scores(m, family) if pairs else {} for name, m in margins.items()}
    if rated:
        indices["rated"] = bootstrap_indices(len(rated), cfg.eval.bootstrap, cfg.eval.seed)
        labels = np.array([r.desirable for r in rated])
        for name, r in rewards.items():
            scores[name]["label_accuracy"] = MeanScores("label_accuracy", label_agreement(r, labels))
    comparisons = {
        name: {
            metric: compare(
                scores[BASE][metric],
                s[metric],
                indices["rated" if metric in RATED_METRICS else "pairs"],
                cfg.eval.confidence,
            ).to_json()
            for metric in s
        }
        for name, s in scores.items()
        if name != BASE
    }
    report = {
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "task": "preference",
        "scored_by": SCORED_BY[family],
        "test": {
            "source": source,
            "sha256": test_sha,
            "examples": len(pairs) + len(rated),
            "pairs": len(pairs),
            "rated": len(rated),
            "records": len(examples),
            "private": private,
            "evaluations": uses,
            "history": test_uses(cfg, test_sha),
        },
        "base": {"what": BASE_MEANS[family]},
        "systems": list(margins),
        "runs": {d.name: str(d) for d in run_dirs},
        "metrics": {name: {m: {"value": v.value} for m, v in s.items()} for name, s in scores.items()},
        "comparisons": comparisons,
        "confidence": cfg.eval.confidence,
        "bootstrap": cfg.eval.bootstrap,
        "reward_model": None,
        "judge_win_rate": None,
    }
    answers: list[dict[str, Any]] = []
    if wanted is not None:
        reward_dir, start = wanted
        win_rates, answers = win_rates_of_answers(cfg, pairs, rated, run_dirs, start, reward_dir)
        report.update(win_rates)
    out_dir = out_dir or (run_dirs[0] / "eval" if len(run_dirs) == 1 else _shared_out_dir(cfg))
    out_dir.mkdir(parents=True, exist_ok=True)
    if answers:
        with (out_dir / "answers.jsonl").open("w", encoding="utf-8") as f:
            f.writelines(json.dumps(row, ensure_ascii=False) + "\n" for row in answers)
    with (out_dir / "outputs.jsonl").open("w", encoding="utf-8") as f:
        for i, pair in enumerate(pairs):
            row = {"id": pair.id, "margins": {name: round(float(m[i]), 6) for name, m in margins.items()}}
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
        for i, answer in enumerate(rated):
            row = {"id": answer.id, "desirable": answer.desirable}
            row["rewards"] = {name: round(float(r[i]), 6) for name, r in rewards.items()}
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    (out_dir / "metrics.json").write_text(json.dumps(report, indent=2) + "\n")
    write_reports(out_dir, report)
    for d in run_dirs:
        registry.record(cfg, d)
    return EvalResult(out_dir, report, scores)


SCORED_BY = {
    "reward": "reward model score",
    "dpo": "implicit reward (policy vs reference log-ratio)",
    "free": "mean per-token log-probability (SimPO's reward up to its scale)",
}
BASE_MEANS = {
    "dpo": "the reference model (the runs' starting point): its implicit reward is 0 for every answer, so every "
    "pair (and every rated answer) is a tie, scored 0.5",
    "reward": "the base model with the score head as training initialised it (train.seed), before any training",
    "free": "the model the runs started from (the base, or their start run), scored the same way",
}


def family_of(method: str) -> str:
    return "reward" if method == "reward" else ("free" if method in REFERENCE_FREE else "dpo")


def start_of(run_dir: Path) -> str | None:
    saved = yaml.safe_load((run_dir / RESOLVED_FILENAME).read_text())
    return (((saved or {}).get("method") or {}).get("preference") or {}).get("start")


def run_method(run_dir: Path) -> str:
    """The preference method a run was trained with, from its resolved config."""
    path = run_dir / RESOLVED_FILENAME
    saved = yaml.safe_load(path.read_text()) if path.is_file() else {}
    method = ((saved or {}).get("method") or {}).get("name")
    if method not in PREFERENCE_METHODS:
        raise UserError(f"{run_dir.name} was trained with method.name {method}, not a preference method")
    return method


RATED_METRICS = ("label_accuracy",)  # scored over the unpaired rows, not the pairs


def label_agreement(rewards: np.ndarray, desirable: np.ndarray) -> np.ndarray:
    """Per rated answer: 1 when its implicit reward has its label's sign (> 0 desirable, < 0 undesirable), 0.5 at 0."""
    signed = np.where(desirable, rewards, -rewards)
    return np.where(signed > 0, 1.0, np.where(signed == 0, 0.5, 0.0))


def system_scores(margins: np.ndarray, family: str) -> dict[str, MeanScores]:
    """Per-pair scores: preference accuracy (1 right, 0.5 tie, 0 wrong), and the mean margin for dpo/ipo."""
    right = np.where(margins > 0, 1.0, np.where(margins == 0, 0.5, 0.0))
    scores = {"preference_accuracy": MeanScores("preference_accuracy", right)}
    if family == "dpo":
        scores["reward_margin"] = MeanScores("reward_margin", margins)
    if family == "free":
        scores["logp_margin"] = MeanScores("logp_margin", margins)
    return scores


# --------------------------------------------------------------------------- win rate of the answers


def _check_win_rate_settings(
    cfg: ProjectConfig, family: str, run_dirs: list[Path]
) -> tuple[Path | None, str | None] | None:
    """(the reward run or None, the runs' common start) when a win rate is asked for; None when not.

    Everything that could stop the win rate is checked here, before any model is loaded.
    """
    if not (cfg.eval.reward_model or cfg.eval.judge.url):
        return None
    if family == "reward":
        console.note("reward runs score answers and write none: no win rate for them (eval.reward_model, eval.judge)")
        return None
    starts = {start_of(d) for d in run_dirs}
    if len(starts) > 1:
        raise UserError(
            "these runs started from different models, so no one base answers for the win rate; evaluate the runs "
            "of each start together"
        )
    start = starts.pop()
    if start is not None:
        _start_dir(cfg, start)
    reward_dir = winrate.reward_run(cfg)
    if cfg.eval.judge.url:
        from tuneloop.evaluate.judge import check_endpoint

        if cfg.eval.judge.mode != "pairwise":
            raise UserError(
                "a preference evaluation reports the judge's win rate of tuned over base: set eval.judge.mode: "
                "pairwise (score mode rates answers 1-5 on their own)"
            )
        check_endpoint(cfg)
    return reward_dir, start


def win_rates_of_answers(
    cfg: ProjectConfig,
    pairs: list[Pair],
    rated: list[Rated],
    run_dirs: list[Path],
    start: str | None,
    reward_dir: Path | None,
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Each run's answers against its start's on every test prompt: the win rate under the reward model and/or
    the pairwise judge ({"reward_model", "judge_win_rate"}), and one row per prompt with every answer.

    The answers are generated as the generative evaluation generates them (runner.generate_answers, eval's
    decoding), once per distinct prompt of the test pairs and rated answers: a ranking's pairs share theirs.
    The judge is shown the prompt's chosen answer (a ranking's best; a desirable rated answer) as the
    reference, or none when the prompt has only an undesirable one.
    """
    from tuneloop import runs
    from tuneloop.data.pairs import conversation
    from tuneloop.evaluate.runner import Case, SystemOutputs, generate_answers, load_system

    firsts: dict[str, Case] = {}
    for item in [*pairs, *rated]:
        good = item.chosen if isinstance(item, Pair) else (item.completion if item.desirable else None)
        case = Case(item.id, item.prompt, item.prompt[-1]["content"], good, conversation(item.prompt, good or ""))
        firsts.setdefault(json.dumps(item.prompt, sort_keys=True), case)
    cases = list(firsts.values())
    conversations = [c.conversation for c in cases]
    systems: list[SystemOutputs] = []
    for name, run_dir in [(BASE, _start_dir(cfg, start) if start else None), *((d.name, d) for d in run_dirs)]:
        model, tokenizer = load_system(cfg, run_dir)
        model = runs.merged_for_inference(model)
        answers = generate_answers(name, model, tokenizer, cfg, conversations, run_dir, "test prompts (win rate)")
        systems.append(SystemOutputs(name, answers=answers))
        del model
        gc.collect()
    texts = {s.name: [a.text for a in s.answers] for s in systems}
    rows = [
        {"id": c.id, "prompt": c.prompt, "answers": {n: t[i] for n, t in texts.items()}} for i, c in enumerate(cases)
    ]
    result: dict[str, Any] = {}
    if reward_dir is not None:
        indices = bootstrap_indices(len(cases), cfg.eval.bootstrap, cfg.eval.seed)
        result["reward_model"], rewards = winrate.score_with_reward_model(
            cfg, reward_dir, conversations, texts, indices
        )
        for i, row in enumerate(rows):
            row["reward"] = {n: r[i] for n, r in rewards.items()}
    if cfg.eval.judge.url:
        result["judge_win_rate"], outcomes = winrate.judge_win_rates(
            cfg, cases, systems, "the test pair's chosen answer (a ranking's best, a desirable rated answer)"
        )
        for i, row in enumerate(rows[: result["judge_win_rate"]["examples"]]):
            row["judge"] = {n: o[i] for n, o in outcomes.items()}
    return result, rows


# --------------------------------------------------------------------------- scoring


def _reward_margins(score: Any, pairs: list[Pair]) -> np.ndarray:
    prompts = [p.prompt for p in pairs]
    chosen = score(prompts, [p.chosen for p in pairs])
    rejected = score(prompts, [p.rejected for p in pairs])
    return np.array(chosen) - np.array(rejected)


def _base_reward_scorer(cfg: ProjectConfig) -> Any:
    import torch

    from tuneloop.data.chat_templates import project_tokenizer
    from tuneloop.models import load_sequence_classifier
    from tuneloop.reward import scorer

    torch.manual_seed(cfg.train.seed)  # the head training started from (train/preference.py seeds the same way)
    model, _ = load_sequence_classifier(cfg.model.name, ["reward"], cfg.model.revision, cfg.model.trust_remote_code)
    tokenizer = project_tokenizer(cfg)
    model.config.pad_token_id = tokenizer.pad_token_id
    return scorer(model, tokenizer, cfg.eval.batch_size)


def implicit_reward_margins(cfg: ProjectConfig, run_dir: Path, pairs: list[Pair]) -> np.ndarray:
    """β·[(log π − log π_ref)(chosen) − (log π − log π_ref)(rejected)] per pair, for a dpo/ipo/kto run."""

    def rows(renderer: Any) -> list[tuple[list[int], list[int]]]:
        rendered = _rendered(renderer, pairs, f"{run_dir.name}'s")
        return [(r["prompt_ids"], r["chosen_ids"]) for r in rendered] + [
            (r["prompt_ids"], r["rejected_ids"]) for r in rendered
        ]

    rewards = implicit_rewards(cfg, run_dir, rows)
    return rewards[: len(pairs)] - rewards[len(pairs) :]


def rated_rewards(cfg: ProjectConfig, run_dir: Path, rated: list[Rated]) -> np.ndarray:
    """β·(log π − log π_ref) of each rated answer, for a dpo/ipo/kto run."""

    def rows(renderer: Any) -> list[tuple[list[int], list[int]]]:
        rendered = render_rated(renderer, rated)
        bad = [f"{r.id}: {t}" for r, t in zip(rated, rendered, strict=True) if not isinstance(t, dict)]
        if bad:
            raise UserError(
                f"{len(bad)} test answers cannot be rendered with {run_dir.name}'s template:\n  " + "\n  ".join(bad[:5])
            )
        return [(t["prompt_ids"], t["completion_ids"]) for t in rendered if isinstance(t, dict)]

    return implicit_rewards(cfg, run_dir, rows)


def implicit_rewards(cfg: ProjectConfig, run_dir: Path, rows_of: Any) -> np.ndarray:
    """β·(log π − log π_ref) of each (prompt ids, answer ids) row `rows_of(the run's Renderer)` gives."""
    from peft import PeftModel

    from tuneloop import runs
    from tuneloop.data.render import Renderer

    run_cfg = yaml.safe_load((run_dir / RESOLVED_FILENAME).read_text())
    preference = (run_cfg.get("method") or {}).get("preference") or {}
    beta, start = float(preference.get("beta", 0.1)), preference.get("start")
    policy, tokenizer = runs.load_final(cfg, run_dir)
    rows = rows_of(Renderer(tokenizer))
    batch = cfg.eval.batch_size
    logps = answer_logps(policy, rows, batch)
    if isinstance(policy, PeftModel) and start is None:
        with policy.disable_adapter():  # the adapter-off model is the reference, as in training
            ref = answer_logps(policy, rows, batch)
    else:
        del policy
        gc.collect()
        ref = answer_logps(_reference(cfg, start), rows, batch)
    return beta * (logps - ref)


def mean_logp_margins(cfg: ProjectConfig, model: Any, pairs: list[Pair]) -> np.ndarray:
    """Mean per-token log-probability of the chosen answer minus the rejected one's, per pair."""
    from tuneloop.data.chat_templates import project_tokenizer
    from tuneloop.data.render import Renderer

    rendered = _rendered(Renderer(project_tokenizer(cfg)), pairs, "the project's")
    chosen = [(r["prompt_ids"], r["chosen_ids"]) for r in rendered]
    rejected = [(r["prompt_ids"], r["rejected_ids"]) for r in rendered]
    per_token_c = answer_logps(model, chosen, cfg.eval.batch_size) / np.array([len(a) for _, a in chosen])
    per_token_r = answer_logps(model, rejected, cfg.eval.batch_size) / np.array([len(a) for _, a in rejected])
    return per_token_c - per_token_r


def _rendered(renderer: Any, pairs: list[Pair], whose: str) -> list[Any]:
    rendered = render_pairs(renderer, pairs)
    bad = [f"{p.id}: {r}" for p, r in zip(pairs, rendered, strict=True) if not isinstance(r, dict)]
    if bad:
        raise UserError(f"{len(bad)} test pairs cannot be rendered with {whose} template:\n  " + "\n  ".join(bad[:5]))
    return rendered


def _reference(cfg: ProjectConfig, start: str | None) -> Any:
    """The model a dpo/ipo run started from: the base, or its start run's final model."""
    from tuneloop import runs
    from tuneloop.models import load_causal_lm

    if start is None:
        model, _ = load_causal_lm(cfg.model.name, "float32", cfg.model.trust_remote_code, cfg.model.revision)
        return model
    model, _ = runs.load_final(cfg, _start_dir(cfg, start))
    return runs.merged_for_inference(model)


def _start_dir(cfg: ProjectConfig, start: str) -> Path:
    start_dir = cfg.path(start)
    if not start_dir.is_dir():
        raise UserError(f"a run started from {start}, which is gone; the model it started from cannot be rebuilt")
    return start_dir


def answer_logps(model: Any, rows: list[tuple[list[int], list[int]]], batch_size: int) -> np.ndarray:
    """Sum of the answer tokens' log-probabilities given the prompt, per (prompt ids, answer ids) row."""
    import torch

    model.eval()
    pad = 0
    out: list[float] = []
    for start in range(0, len(rows), batch_size):
        chunk = rows[start : start + batch_size]
        seqs = [p + a for p, a in chunk]
        width = max(map(len, seqs))
        ids = torch.tensor([s + [pad] * (width - len(s)) for s in seqs])
        mask = torch.tensor([[1] * len(s) + [0] * (width - len(s)) for s in seqs])
        with torch.no_grad():
            logits = model(input_ids=ids, attention_mask=mask).logits.float()
        logps = torch.log_softmax(logits[:, :-1], dim=-1).gather(-1, ids[:, 1:, None])[..., 0]
        for row, (p, a) in enumerate(chunk):
            out.append(float(logps[row, len(p) - 1 : len(p) + len(a) - 1].sum()))
    return np.array(out, dtype=np.float64)


# --------------------------------------------------------------------------- reports


def write_reports(out_dir: Path, report: dict[str, Any]) -> None:
    """report.md and a self-contained report.html (every text escaped): the comparison table, then the win rates
    of the runs' answers when they were measured."""
    lines = [
        f"# Preference evaluation: {report['test']['pairs']} test pairs"
        + (f", {report['test']['rated']} rated answers" if report["test"].get("rated") else ""),
        "",
        f"Scored by {report['scored_by']}. Base: {report['base']['what']}.",
        "",
        f"| run | metric | base | run | change | {report['confidence']:.0%} interval | verdict |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, per in report["comparisons"].items():
        for metric, c in per.items():
            lines.append(
                f"| {name} | {metric} | {c['baseline']:.4g} | {c['candidate']:.4g} | {c['delta']:+.4g} | "
                f"[{c['ci_low']:+.3g}, {c['ci_high']:+.3g}] | {c['verdict']} |"
            )
    lines += winrate.markdown_lines(report.get("reward_model"), report.get("judge_win_rate"), report["confidence"])
    (out_dir / "report.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    (out_dir / "report.html").write_text(_page(lines, "Preference evaluation"), encoding="utf-8")


def _page(lines: list[str], title: str) -> str:
    """The markdown lines as HTML: headings, paragraphs and tables (each table's first row its header)."""
    parts, table = [f"<!doctype html><meta charset='utf-8'><title>{html.escape(title)}</title>"], []
    for line in [*lines, ""]:
        if line.startswith("|"):
            if set(line) <= set("|-: "):
                continue  # the markdown separator row
            tag = "td" if table else "th"
            table.append(
                "<tr>" + "".join(f"<{tag}>{html.escape(c.strip())}</{tag}>" for c in line.strip("|").split("|"))
            )
            continue
        if table:
            parts.append("<table border='1' cellpadding='4'>" + "</tr>".join(table) + "</tr></table>")
            table = []
        if line.startswith("#"):
            level = len(line) - len(line.lstrip("#"))
            parts.append(f"<h{level}>{html.escape(line[level:].strip())}</h{level}>")
        elif line.strip():
            parts.append(f"<p>{html.escape(line)}</p>")
    return "".join(parts)


def _shared_out_dir(cfg: ProjectConfig) -> Path:
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    return cfg.path(cfg.output.dir) / "evals" / stamp
