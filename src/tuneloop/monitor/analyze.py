"""`tuneloop monitor`: logged traffic against the training prompts, and the alerts the config asks for.

`analyze` turns requests, feedback and training prompts into one JSON-ready report; `find_alerts`
applies the `monitor:` thresholds to it. Both are pure given their inputs (the encoder, the length
counter and the output checks are passed in), so tests drive them with synthetic traffic. `run`
reads the project's store and writes the HTML and JSON report.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from tuneloop.config import ProjectConfig
from tuneloop.config_monitor import MonitorConfig
from tuneloop.data.formats import Example
from tuneloop.errors import UserError
from tuneloop.monitor import drift, signals

EXIT_ALERT = 3  # `tuneloop monitor` exits with this when any alert fires (1 is a user error, 0 all clear)
NOT_ENOUGH = "not enough traffic"


@dataclass
class MonitorResult:
    report: dict[str, Any]
    alerts: list[dict[str, Any]] = field(default_factory=list)
    html_path: Path | None = None
    json_path: Path | None = None


def user_text(messages: Sequence[Mapping[str, Any]] | None, prompt: str | None = None) -> str:
    """The user side of a request or example: its user turns joined by newlines, or the plain prompt."""
    if messages:
        return "\n".join(str(m.get("content") or "") for m in messages if m.get("role") == "user")
    return prompt or ""


def example_prompt(ex: Example) -> str:
    """What a training example asked: the user turns of a conversation, or the text of a text/classification row."""
    if ex.messages:
        return user_text(ex.messages)
    return ex.text or ""


def training_prompts(cfg: ProjectConfig) -> list[str]:
    """The user-side text of every example in the prepared train split."""
    from tuneloop.data.prepared import load_split

    examples, _ = load_split(cfg, "train")
    prompts = [p for p in map(example_prompt, examples) if p.strip()]
    if not prompts:
        raise UserError(
            f"the prepared train split in {cfg.path(cfg.data.prepared_dir)} has no prompts to compare traffic "
            "with; run `tuneloop data prepare` on your training data first"
        )
    return prompts


def analyze(
    mcfg: MonitorConfig,
    requests: Sequence[Mapping[str, Any]],
    feedback: Mapping[str, Any],
    train: Sequence[str],
    *,
    checks: signals.OutputChecks,
    embed: Callable[[list[str]], np.ndarray],
    length_of: Callable[[str], int],
    unit: str,
) -> dict[str, Any]:
    """Every statistic `tuneloop monitor` reports, as plain JSON-ready values."""
    prompts = [p for p in (user_text(r["messages"], r["prompt"]) for r in requests) if p.strip()]
    return {
        "requests": len(requests),
        "prompts": len(prompts),
        "drift": _drift(mcfg, prompts, list(train), embed, length_of, unit),
        "outputs": signals.output_signals(requests, checks),
        "feedback": signals.feedback_rates((r["id"] for r in requests), feedback),
        "latency": signals.latency(r["latency_s"] for r in requests),
    }


def _drift(
    mcfg: MonitorConfig,
    prompts: list[str],
    train: list[str],
    embed: Callable[[list[str]], np.ndarray],
    length_of: Callable[[str], int],
    unit: str,
) -> dict[str, Any]:
    if len(prompts) < mcfg.min_requests:
        return {"status": NOT_ENOUGH, "prompts": len(prompts), "min_requests": mcfg.min_requests}
    recent = prompts[-mcfg.traffic_sample :]
    picked = drift.sample_indices(len(train), mcfg.train_sample, mcfg.seed)
    sample = [train[i] for i in picked]
    lengths = drift.length_shift(map(length_of, recent), map(length_of, sample), unit)
    terms = drift.new_terms(prompts, train, mcfg.top_terms)
    x, y = embed(recent), embed(sample)
    mmd = drift.mmd_test(x, y, mcfg.permutations, mcfg.seed)
    # Each test runs at alpha/2 (Bonferroni), so the drift alarm as a whole is within drift_alpha.
    level = mcfg.drift_alpha / 2
    nearest = (x @ y.T).argmax(axis=1)  # unit vectors: the dot product is the cosine similarity
    order = np.argsort(-mmd.witness, kind="stable")[: mcfg.top_examples]
    return {
        "status": "tested",
        "traffic_sample": len(recent),
        "train_sample": len(sample),
        "train_prompts": len(train),
        "level": level,
        "length": {**lengths.__dict__, "drifted": lengths.p_value < level},
        "length_values": {"traffic": [length_of(t) for t in recent], "train": [length_of(t) for t in sample]},
        "embedding": {
            "mmd2": mmd.mmd2,
            "p_value": mmd.p_value,
            "bandwidth": mmd.bandwidth,
            "permutations": mmd.permutations,
            "drifted": mmd.p_value < level,
        },
        "drifted": mmd.p_value < level or lengths.p_value < level,
        "most_drifted": [
            {
                "prompt": recent[i],
                "witness": float(mmd.witness[i]),
                "nearest_train": sample[nearest[i]],
                "similarity": float(x[i] @ y[nearest[i]]),
            }
            for i in order
        ],
        "new_terms": {
            "rate": terms.rate,
            "new_words": terms.new_words,
            "traffic_words": terms.traffic_words,
            "distinct_new": terms.distinct_new,
            "top": [{"term": t, "count": c} for t, c in terms.top],
        },
    }


def find_alerts(report: Mapping[str, Any], mcfg: MonitorConfig) -> list[dict[str, Any]]:
    """The thresholds of `mcfg` that `report` crosses, each as {name, value, threshold, message}."""
    alerts: list[dict[str, Any]] = []

    def check(name: str, value: float | None, threshold: float | None, above: bool, what: str) -> None:
        if value is None or threshold is None:
            return
        if (value > threshold) if above else (value < threshold):
            sign = ">" if above else "<"
            alerts.append(
                {
                    "name": name,
                    "value": value,
                    "threshold": threshold,
                    "message": f"{what} {value:.4g} {sign} {threshold:g}",
                }
            )

    d = report["drift"]
    if d["status"] == "tested":
        check("drift_embedding", d["embedding"]["p_value"], d["level"], False, "embedding drift (MMD) p-value")
        check("drift_length", d["length"]["p_value"], d["level"], False, "input length shift (KS) p-value")
        check("new_terms", d["new_terms"]["rate"], mcfg.max_new_term_rate, True, "new-term rate")
    rates = report["outputs"]["rates"]
    check("errors", rates["errors"], mcfg.max_error_rate, True, "error rate")
    check("empty", rates["empty"], mcfg.max_empty_rate, True, "empty answer rate")
    check("truncated", rates["truncated"], mcfg.max_truncated_rate, True, "truncated answer rate")
    check("refusal", rates["refusal"], mcfg.max_refusal_rate, True, "refusal rate")
    check("repetition", rates["repetition"], mcfg.max_repetition_rate, True, "repetition rate")
    check("json_valid", rates.get("json_valid"), mcfg.min_json_valid_rate, False, "valid JSON rate")
    check("json_schema", rates.get("json_schema"), mcfg.min_json_valid_rate, False, "schema-valid JSON rate")
    fb = report["feedback"]
    if fb["rated"] >= mcfg.min_feedback:
        check("thumbs_down", fb["down_rate"], mcfg.max_thumbs_down_rate, True, "thumbs-down rate")
    check("latency_p95", report["latency"]["p95"], mcfg.max_p95_latency_s, True, "p95 latency (s)")
    return alerts


def run(
    cfg: ProjectConfig,
    since: str,
    checks: signals.OutputChecks,
    *,
    embed: Callable[[list[str]], np.ndarray] | None = None,
    now: datetime | None = None,
) -> MonitorResult:
    """Read the project's traffic since `since` (7d, 24h, an ISO date), analyze it, write the report."""
    from tuneloop import traffic
    from tuneloop.monitor import embed as embedding
    from tuneloop.monitor import report as html

    now = now or datetime.now(timezone.utc)
    store = traffic.default_path(cfg)
    start = traffic.parse_since(since, now)
    requests = traffic.read_requests(store, start)
    feedback = traffic.latest_feedback(store)
    if not requests:
        raise UserError(
            f"no requests in {store} since {start.isoformat(timespec='seconds')} (--since {since}); "
            "widen --since, or check that `tuneloop serve --log` is the server your clients call"
        )
    train = training_prompts(cfg)
    mcfg = cfg.monitor
    length_of, unit = embedding.length_counter(cfg)
    report = analyze(
        mcfg,
        requests,
        feedback,
        train,
        checks=checks,
        embed=embed or embedding.encoder(mcfg.encoder),
        length_of=length_of,
        unit=unit,
    )
    report = {
        "created": now.isoformat(timespec="seconds"),
        "since": since,
        "window": {
            "from": start.isoformat(timespec="seconds"),
            "first": requests[0]["time"],
            "last": requests[-1]["time"],
        },
        "store": str(store),
        **report,
        "settings": mcfg.model_dump(),
    }
    alerts = find_alerts(report, mcfg)
    report["alerts"] = alerts
    out = store.parent
    stamp = now.strftime("%Y%m%d-%H%M%S")
    json_path, html_path = html.write(out, f"report-{stamp}", report, cfg.task.objective)
    return MonitorResult(report, alerts, html_path, json_path)
