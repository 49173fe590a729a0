"""Comparing runs A and B (`tuneloop runs compare`): config, data and metric differences, with
`rescore_outputs` for a paired B-vs-A bootstrap over the answers both evaluations kept."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tuneloop.config import ProjectConfig
from tuneloop.errors import UserError
from tuneloop.registry import config_diff, data_diff, get_run


def compare(cfg: ProjectConfig, a: str | Path, b: str | Path) -> dict[str, Any]:
    """What differs between runs A and B: config, data and metrics.

    Returns {"a", "b": the runs in brief, "config": [{key, a, b}], "data": per-split row or hash
    differences, "metrics": each run's own evaluation against the base model, plus a paired
    bootstrap of B - A when both were evaluated on the same test set and kept their answers}.
    """
    run_a = get_run(cfg, a)
    run_b = get_run(cfg, b, refresh=False)
    return {
        "a": _brief(run_a),
        "b": _brief(run_b),
        "config": config_diff(run_a["config"], run_b["config"]),
        "data": data_diff(run_a, run_b),
        "metrics": metric_diff(cfg, run_a, run_b),
    }


def _brief(run: dict[str, Any]) -> dict[str, Any]:
    keys = ("id", "path", "status", "missing", "kind", "group", "created", "method", "config_sha256", "data_sha256")
    return {k: run[k] for k in keys}


def metric_diff(cfg: ProjectConfig, run_a: dict[str, Any], run_b: dict[str, Any]) -> dict[str, Any]:
    """Each run's own evaluation against the base, and a direct paired comparison of B with A where possible."""
    result: dict[str, Any] = {
        "a": (run_a["evaluation"] or {}).get("metrics"),
        "b": (run_b["evaluation"] or {}).get("metrics"),
        "paired": None,
        "notes": [],
    }
    notes = result["notes"]
    ev_a, ev_b = run_a["evaluation"], run_b["evaluation"]
    for run, ev in ((run_a, ev_a), (run_b, ev_b)):
        if ev is None:
            notes.append(
                f"{run['id']} has not been evaluated (eval/metrics.json); run `tuneloop eval --run {run['id']}`"
            )
    if ev_a is None or ev_b is None:
        return result
    if ev_a["test_sha256"] != ev_b["test_sha256"]:
        notes.append("the runs were evaluated on different test sets, so they cannot be compared directly")
        return result
    paths = [Path(r["path"]) / "eval" / "outputs.jsonl" for r in (run_a, run_b)]
    if not all(p.is_file() for p in paths):
        notes.append(
            "no direct comparison: eval/outputs.jsonl is missing in "
            + " and ".join(r["id"] for r, p in zip((run_a, run_b), paths, strict=True) if not p.is_file())
        )
        return result
    result["paired"] = paired_comparison(cfg, paths[0], ev_a["system"], paths[1], ev_b["system"], notes)
    return result


def paired_comparison(
    cfg: ProjectConfig, outputs_a: Path, system_a: str, outputs_b: Path, system_b: str, notes: list[str]
) -> dict[str, Any] | None:
    """B - A for each task metric, by paired bootstrap over the test examples both answered.

    Appends to `notes` what could not be compared and why; returns None when no example is shared.
    """
    from tuneloop.evaluate.compare import bootstrap_indices
    from tuneloop.evaluate.compare import compare as compare_scores

    ids_b = {r["id"] for r in _read_outputs(outputs_b)}
    ids_a = [r["id"] for r in _read_outputs(outputs_a)]
    common = [i for i in ids_a if i in ids_b]
    if not common:
        notes.append("no direct comparison: the two evaluations share no test example")
        return None
    if len(common) < max(len(ids_a), len(ids_b)):
        notes.append(f"compared directly on the {len(common)} test examples both evaluations answered")
    scored_a = rescore_outputs(cfg, outputs_a, system_a, common)
    scored_b = rescore_outputs(cfg, outputs_b, system_b, common)
    notes.extend(n for n in dict.fromkeys(scored_a.notes + scored_b.notes) if n not in notes)
    indices = bootstrap_indices(len(common), cfg.eval.bootstrap, cfg.eval.seed)
    metrics = {
        name: compare_scores(scored_a.scores[name], scored_b.scores[name], indices, cfg.eval.confidence).to_json()
        for name in cfg.task.metrics
        if name in scored_a.scores and name in scored_b.scores
    }
    return {
        "examples": len(common),
        "confidence": cfg.eval.confidence,
        "bootstrap": cfg.eval.bootstrap,
        "metrics": metrics,
    }


@dataclass
class Rescored:
    """One system's task metrics recomputed from an eval's outputs.jsonl."""

    ids: list[str]
    scores: dict[str, Any] = field(default_factory=dict)  # metric -> MetricScores or MeanScores (resamplable)
    notes: list[str] = field(default_factory=list)  # metrics not rescored, or rescored differently, and why


def _read_outputs(path: Path) -> list[dict[str, Any]]:
    try:
        return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    except (OSError, json.JSONDecodeError) as e:
        raise UserError(f"cannot read {path}: {e}; re-run `tuneloop eval` for that run") from None


def rescore_outputs(cfg: ProjectConfig, outputs_path: Path, system: str, ids: list[str] | None = None) -> Rescored:
    """Score one system's answers in an eval's outputs.jsonl with the config's task.metrics.

    Text metrics are recomputed from the prompts, references and answers (so corpus metrics like
    BLEU resample correctly). Metrics that need the model (perplexity) cannot be: their stored
    per-example scores are used when present, else they are left out with a note. `ids` restricts
    and orders the examples, so two systems can be paired example by example.
    """
    import numpy as np

    from tuneloop.evaluate.compare import MeanScores
    from tuneloop.evaluate.metrics import METRIC_INFO, compute, needs_reference

    rows = _read_outputs(Path(outputs_path))
    if ids is not None:
        by_id = {r["id"]: r for r in rows}
        absent = [i for i in ids if i not in by_id]
        if absent:
            raise UserError(f"{outputs_path} has no answers for test examples {', '.join(absent[:5])}")
        rows = [by_id[i] for i in ids]
    if not rows:
        raise UserError(f"{outputs_path} has no answers; re-run `tuneloop eval` for that run")
    if any(system not in r for r in rows):
        systems = [k for k, v in rows[0].items() if isinstance(v, dict)]
        raise UserError(f"{outputs_path} has no answers from {system!r}; it has {', '.join(systems)}")
    answers = [r[system] for r in rows]
    references = [r.get("reference") or "" for r in rows]
    has_refs = any(references)
    schema = _json_schema(cfg) if "json_schema" in cfg.task.metrics else None
    result = Rescored([str(r["id"]) for r in rows])
    for name in cfg.task.metrics:
        stored = [(a.get("scores") or {}).get(name) for a in answers]
        stored_scores = np.asarray(stored, dtype=np.float64) if all(s is not None for s in stored) else None
        info = METRIC_INFO.get(name)
        higher = info.higher_is_better if info else True
        if info is not None and info.model_based:
            if stored_scores is None:
                result.notes.append(
                    f"{name}: not compared: it needs the model's log-likelihoods, and the outputs.jsonl "
                    f"of {system} has no per-example {name} scores"
                )
                continue
            # Stored per-example perplexity scores are mean NLLs; outputs.jsonl lacks the token counts
            # the report weights them by, so the rescored value is exp(mean NLL) over examples.
            result.scores[name] = MeanScores(name, stored_scores, higher, exp_mean=name == "perplexity")
            if name == "perplexity":
                result.notes.append(
                    "perplexity: compared as exp(mean per-example NLL), since outputs.jsonl has no token "
                    "counts; the eval reports weight examples by their tokens"
                )
            continue
        try:
            result.scores[name] = compute(
                name,
                ids=result.ids,
                prompts=[r.get("prompt") or "" for r in rows],
                predictions=[a.get("output") or "" for a in answers],
                references=references if has_refs or not needs_reference(name) else None,
                labels=cfg.data.labels or None,
                schema=schema,
                search_path=cfg.root,
            )
        except UserError as e:
            if stored_scores is None:
                result.notes.append(f"{name}: not compared: {e}")
                continue
            result.scores[name] = MeanScores(name, stored_scores, higher)
            result.notes.append(f"{name}: rescoring failed ({e}); compared the mean of the stored per-example scores")
    return result


def _json_schema(cfg: ProjectConfig) -> dict | None:
    if not cfg.eval.json_schema:
        return None
    path = cfg.path(cfg.eval.json_schema)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise UserError(f"cannot read eval.json_schema {path}: {e}") from None
