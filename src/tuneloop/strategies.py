"""`tuneloop compare-strategies`: every classification strategy on the same splits, in one table.

Reads top to bottom: for each strategy (`features`, `last_k`, `lora`, `full`, cheapest first) train one
run in its own process (`tuneloop train --set method.name=S`), so its wall time and peak memory are its
own → evaluate every run together against the base's linear probe on the same test split, with the
same bootstrap resamples → one table (accuracy and macro-F1 with intervals, trainable parameters,
training time, peak RSS) in strategies.md / strategies.json, and strategies.png. Every run lands in
the run registry, as any training run does.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from tuneloop import console, registry
from tuneloop.config import DEFAULT_LEARNING_RATE, ProjectConfig
from tuneloop.config_classify import STRATEGIES
from tuneloop.errors import UserError


@dataclass
class StrategiesResult:
    out_dir: Path
    rows: list[dict[str, Any]]
    eval_dir: Path


def parse_learning_rates(items: list[str]) -> dict[str, float]:
    """`--lr full=5e-5` items → {strategy: learning rate}; a clear error for anything else."""
    rates = {}
    for item in items:
        name, _, value = item.partition("=")
        if name not in STRATEGIES or not value:
            raise UserError(f"--lr {item}: write STRATEGY=RATE with a strategy of {', '.join(STRATEGIES)}")
        try:
            rates[name] = float(value)
        except ValueError:
            raise UserError(f"--lr {item}: {value!r} is not a number") from None
    return rates


def train_one(config_path: Path, overrides: list[str], strategy: str, rate: float, name: str) -> tuple[Path, float]:
    """Train `strategy` in a child `tuneloop train`; (its run folder, the process's wall seconds)."""
    command = [sys.executable, "-m", "tuneloop", "train", "--config", str(config_path)]
    for item in [
        *overrides,
        f"method.name={strategy}",
        f"train.learning_rate={rate}",
        f"output.run_name={name}",
    ]:
        command += ["--set", item]
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, env=os.environ.copy())
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise UserError(f"training the {strategy} strategy failed (exit {done.returncode}): {last}")
    for line in done.stdout.splitlines():
        if line.startswith("run "):
            return Path(line.split(maxsplit=1)[1].strip()), seconds
    raise UserError(f"training the {strategy} strategy printed no run folder:\n{done.stdout[-2000:]}")


def compare_strategies(
    cfg: ProjectConfig,
    config_path: Path,
    overrides: list[str],
    strategies: list[str],
    rates: dict[str, float],
    out_dir: Path | None = None,
) -> StrategiesResult:
    """Train each strategy, evaluate them together, write the table and the plot."""
    from tuneloop.evaluate.classify import evaluate as evaluate_classifiers

    if cfg.task.type != "classification":
        raise UserError("compare-strategies trains classifiers: set task.type: classification")
    unknown = [s for s in strategies if s not in STRATEGIES]
    if unknown or not strategies:
        raise UserError(f"--strategies {','.join(unknown)}: choose from {', '.join(STRATEGIES)}")
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    out_dir = out_dir or cfg.path(cfg.output.dir) / "strategies" / stamp
    out_dir.mkdir(parents=True, exist_ok=True)
    trained: list[tuple[str, Path, float, float]] = []
    for strategy in strategies:
        rate = rates.get(strategy, DEFAULT_LEARNING_RATE[strategy])
        console.note(f"{strategy}: training (learning rate {rate:g}) ...")
        run_dir, seconds = train_one(config_path, overrides, strategy, rate, f"{strategy}-{stamp}")
        registry.record(cfg, run_dir, kind="strategies", group=stamp)
        trained.append((strategy, run_dir, rate, seconds))
        console.note(f"{strategy}: {run_dir.name} in {seconds:.0f}s")

    result = evaluate_classifiers(cfg, [run for _, run, _, _ in trained], out_dir=out_dir / "eval")
    report = result.report
    rows = [_row(report, "base", report["systems"][0], None, None, None)]
    for strategy, run_dir, rate, seconds in trained:
        rows.append(_row(report, strategy, run_dir.name, run_dir, rate, seconds))
    (out_dir / "strategies.json").write_text(json.dumps({"rows": rows, "eval": str(result.out_dir)}, indent=2) + "\n")
    (out_dir / "strategies.md").write_text(markdown(rows, report), encoding="utf-8")
    plot(rows, out_dir / "strategies.png")
    return StrategiesResult(out_dir, rows, result.out_dir)


def _row(report: dict, strategy: str, system: str, run_dir: Path | None, rate: float | None, seconds: float | None):
    summary = json.loads((run_dir / "summary.json").read_text()) if run_dir else {}
    row: dict[str, Any] = {
        "strategy": strategy,
        "run": str(run_dir) if run_dir else None,
        "learning_rate": rate,
        "trainable_parameters": (summary.get("parameters") or {}).get("trainable"),
        "total_parameters": (summary.get("parameters") or {}).get("total"),
        "train_seconds": (summary.get("this_session") or {}).get("seconds"),
        "process_seconds": round(seconds, 1) if seconds is not None else None,
        "peak_rss_mb": summary.get("peak_rss_mb"),
    }
    for metric in ("accuracy", "f1"):
        row[metric] = report["metrics"][system][metric]["value"]
        comparison = report["comparisons"].get(system, {}).get(metric)
        if comparison:
            row[f"{metric}_vs_base"] = [comparison["ci_low"], comparison["ci_high"]]
            row[f"{metric}_verdict"] = comparison["verdict"]
    return row


def _num(value: Any, fmt: str) -> str:
    return "–" if value is None else format(value, fmt)


def markdown(rows: list[dict[str, Any]], report: dict[str, Any]) -> str:
    """The strategy table, with the change against the base's intervals."""
    pct = round(report["confidence"] * 100)
    lines = [
        f"# Strategies on {report['test']['examples']} test examples",
        "",
        "Base: a linear probe (logistic regression on the frozen base model's features). Changes are against it,",
        f"with {pct}% paired-bootstrap intervals. Training time is the training loop's; peak RSS is the training",
        "process's.",
        "",
        "| strategy | accuracy | macro-F1 | accuracy vs base | trainable parameters | training s | peak RSS MB |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        ci = r.get("accuracy_vs_base")
        change = f"[{ci[0]:+.3f}, {ci[1]:+.3f}] {r['accuracy_verdict']}" if ci else "–"
        lines.append(
            f"| {r['strategy']} | {r['accuracy']:.3f} | {r['f1']:.3f} | {change} | "
            f"{_num(r['trainable_parameters'], ',')} | {_num(r['train_seconds'], '.1f')} | "
            f"{_num(r['peak_rss_mb'], '.0f')} |"
        )
    return "\n".join(lines) + "\n"


def plot(rows: list[dict[str, Any]], path: Path) -> Path:
    """strategies.png: accuracy and macro-F1 per strategy, with each one's trainable parameters under it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    names = [r["strategy"] for r in rows]
    x = np.arange(len(rows))
    fig, ax = plt.subplots(figsize=(max(5.0, 1.4 * len(rows) + 2), 4), dpi=110)
    ax.bar(x - 0.2, [r["accuracy"] for r in rows], width=0.4, label="accuracy")
    ax.bar(x + 0.2, [r["f1"] for r in rows], width=0.4, label="macro-F1")
    ticks = [
        f"{n}\n{r['trainable_parameters']:,} trained" if r["trainable_parameters"] else f"{n}\n(linear probe)"
        for n, r in zip(names, rows, strict=True)
    ]
    ax.set_xticks(x, ticks, fontsize=8)
    ax.set_ylim(0, 1)
    ax.set_ylabel("on the test split")
    ax.legend(loc="lower right")
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
