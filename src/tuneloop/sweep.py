"""`tuneloop sweep SWEEP.yaml`: search learning rate, LoRA rank, epochs (any config key) on validation.

A sweep file names the space and how to search it:

    strategy: auto          # auto: optuna when installed, else grid | grid | random | optuna
    trials: 8               # random and optuna; a grid runs every combination
    seed: 0
    metric: loss            # validation metric to rank by (default: train.metric); must be measured
    space:
      train.learning_rate: {low: 5.0e-5, high: 5.0e-4, log: true, grid: 3}   # a range (grid: points for grids)
      method.lora.r: [8, 16, 32]                                           # a list of values
      train.epochs: [1, 2]

Trials rank by the best validation value of each run — never the test set, which stays for the
final verdict. Each trial is a train stage of `tuneloop run`: cached by its inputs, so re-running
a sweep (same seed) reuses finished trials and resumes an interrupted one.
"""

from __future__ import annotations

import csv
import itertools
import json
import math
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from tuneloop import config, console, loop
from tuneloop.config import ProjectConfig
from tuneloop.errors import UserError


class Range(BaseModel):
    """A numeric range; ints stay ints when both ends are ints and log is false."""

    model_config = ConfigDict(extra="forbid")
    low: float
    high: float
    log: bool = False
    grid: int | None = Field(default=None, ge=2, description="Points on the range for a grid search.")

    @field_validator("high")
    @classmethod
    def _ordered(cls, high: float, info: Any) -> float:
        low = info.data.get("low")
        if low is not None and high <= low:
            raise ValueError(f"high ({high}) must be above low ({low})")
        return high

    @property
    def integer(self) -> bool:
        return float(self.low).is_integer() and float(self.high).is_integer() and not self.log

    def points(self) -> list[float | int]:
        """`grid` evenly spaced values (geometric when log)."""
        if self.grid is None:
            raise ValueError("a grid search needs a list of values or `grid: N` points on the range")
        if self.log:
            lo, hi = math.log(self.low), math.log(self.high)
            return [float(f"{math.exp(lo + (hi - lo) * i / (self.grid - 1)):.3g}") for i in range(self.grid)]
        values = [self.low + (self.high - self.low) * i / (self.grid - 1) for i in range(self.grid)]
        return sorted({round(v) for v in values}) if self.integer else values


class SweepSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    strategy: Literal["auto", "grid", "random", "optuna"] = "auto"
    trials: int = Field(default=8, gt=0)
    seed: int = 0
    metric: str | None = None
    space: dict[str, list[Any] | Range]

    @field_validator("space")
    @classmethod
    def _not_empty(cls, space: dict[str, Any]) -> dict[str, Any]:
        if not space:
            raise ValueError("name at least one config key to search, e.g. train.learning_rate: [1e-4, 2e-4]")
        for key, values in space.items():
            if isinstance(values, list) and not values:
                raise ValueError(f"{key}: the list of values is empty")
        return space


@dataclass
class SweepResult:
    out_dir: Path
    strategy: str
    metric: str
    trials: list[dict[str, Any]]


def load_spec(path: Path) -> SweepSpec:
    """Read and validate a sweep file; every problem at once, with what to write instead."""
    if not path.is_file():
        raise UserError(f"sweep file {path} not found; see `tuneloop sweep --help` for its format")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        return SweepSpec.model_validate(data)
    except yaml.YAMLError as e:
        raise UserError(f"{path}: invalid YAML: {e}") from None
    except ValidationError as e:
        problems = [p for p in dict.fromkeys(_explain(err) for err in e.errors()) if p]
        raise UserError(f"{path}: {len(problems)} problem(s) in the sweep file:\n  " + "\n  ".join(problems)) from None


def _explain(err: dict[str, Any]) -> str | None:
    loc = [str(p) for p in err["loc"]]
    if loc[0] == "space" and len(loc) >= 3 and loc[2] in ("list[any]", "Range"):
        # A space entry is a list or a range; say which shapes are accepted, not why each one failed.
        key, branch = loc[1], loc[2]
        if branch == "Range" and len(loc) > 3:
            return f"space.{key}.{loc[3]}: {err['msg'].removeprefix('Value error, ')}"
        if branch == "Range" or not isinstance(err.get("input"), dict):
            return f"space.{key}: give a list of values, e.g. [8, 16], or a range {{low: 1e-4, high: 1e-3}}"
        return None  # a mapping is meant as a range: its own errors say what is wrong
    return f"{'.'.join(loc) or '(top level)'}: {err['msg'].removeprefix('Value error, ')}"


def choose_strategy(requested: str) -> str:
    """'auto' is optuna when it is installed, else a plain grid."""
    if requested in ("auto", "optuna"):
        try:
            import optuna  # noqa: F401
        except ImportError:
            if requested == "optuna":
                raise UserError("strategy optuna needs Optuna: pip install optuna (or use grid or random)") from None
            return "grid"
        return "optuna"
    return requested


def grid(spec: SweepSpec) -> list[dict[str, Any]]:
    """Every combination of the listed values (ranges contribute their `grid` points)."""
    axes = []
    for key, values in spec.space.items():
        try:
            axes.append([(key, v) for v in (values if isinstance(values, list) else values.points())])
        except ValueError as e:
            raise UserError(f"{key}: {e}") from None
    return [dict(combo) for combo in itertools.product(*axes)]


def sample(spec: SweepSpec, rng: random.Random) -> dict[str, Any]:
    """One random point: a choice from each list, a uniform (or log-uniform) draw from each range."""
    params = {}
    for key, values in spec.space.items():
        if isinstance(values, list):
            params[key] = rng.choice(values)
        elif values.log:
            params[key] = float(f"{math.exp(rng.uniform(math.log(values.low), math.log(values.high))):.3g}")
        elif values.integer:
            params[key] = rng.randint(int(values.low), int(values.high))
        else:
            params[key] = rng.uniform(values.low, values.high)
    return params


def _suggest(trial: Any, spec: SweepSpec) -> dict[str, Any]:
    params = {}
    for key, values in spec.space.items():
        if isinstance(values, list):
            params[key] = trial.suggest_categorical(key, values)
        elif values.integer:
            params[key] = trial.suggest_int(key, int(values.low), int(values.high))
        else:
            params[key] = trial.suggest_float(key, values.low, values.high, log=values.log)
    return params


# --------------------------------------------------------------------------- the sweep


def sweep(cfg: ProjectConfig, spec: SweepSpec, out_dir: Path | None = None) -> SweepResult:
    """Train one run per trial (reusing finished ones), rank them on the validation metric, write the table."""
    from tuneloop.evaluate.runner import higher_is_better

    strategy = choose_strategy(spec.strategy)
    base_sets = [f"train.metric={spec.metric}"] if spec.metric else []
    base = config.derive(cfg, base_sets) if base_sets else cfg
    metric = base.train.metric
    higher = higher_is_better(metric)
    stage, manifest = loop.prepare_stage(base)
    console.note(f"prepare: {stage.action}")
    if not manifest["splits"].get("val", {}).get("rows"):
        raise UserError(
            "a sweep ranks trials on the validation split, which is empty; give data.split.val a share "
            "(e.g. 0.1) or data.val a file — never rank on test"
        )
    sweep_id = "sweep-" + loop.digest([spec.model_dump(mode="json"), loop.train_key(base, manifest)])[:10]
    out_dir = out_dir or cfg.path(cfg.output.dir) / "sweeps" / sweep_id
    out_dir.mkdir(parents=True, exist_ok=True)
    console.note(f"sweep {sweep_id}: strategy {strategy}, ranking on validation {metric}")

    def run_trial(number: int, params: dict[str, Any]) -> dict[str, Any]:
        sets = [f"{key}={json.dumps(value)}" for key, value in params.items()]
        trial_cfg = config.derive(base, sets)
        console.note(f"trial {number}: {', '.join(sets)}")
        started = time.perf_counter()
        row: dict[str, Any] = {"trial": number, "params": params}
        try:
            stage, run_dir, status = loop.train_stage(trial_cfg, manifest, kind="sweep-trial", group=sweep_id)
        except UserError as e:  # e.g. a learning rate that diverges: the trial failed, the sweep goes on
            console.warn(f"trial {number} failed: {e}")
            return {**row, "status": "failed", "error": str(e), "value": None, "run": None}
        summary = loop.read_json(run_dir / "summary.json") or {}
        if status not in loop.FINISHED:
            raise UserError(f"trial {number} was interrupted ({run_dir}); run the same command again to resume")
        best = summary.get("best") or {}
        return {
            **row,
            "status": status,
            "action": stage.action,
            "value": best.get("value"),
            "best_step": best.get("step"),
            "steps": summary.get("steps"),
            "seconds": round(time.perf_counter() - started, 1),
            "run": str(run_dir),
        }

    trials = []
    if strategy == "optuna":
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        study = optuna.create_study(
            direction="maximize" if higher else "minimize", sampler=optuna.samplers.TPESampler(seed=spec.seed)
        )
        for number in range(spec.trials):
            trial = study.ask()
            row = run_trial(number, _suggest(trial, spec))
            trials.append(row)
            if row["value"] is None:
                study.tell(trial, state=optuna.trial.TrialState.FAIL)
            else:
                study.tell(trial, row["value"])
    else:
        if strategy == "grid":
            points = grid(spec)
        else:
            rng = random.Random(spec.seed)
            points = [sample(spec, rng) for _ in range(spec.trials)]
        trials = [run_trial(number, params) for number, params in enumerate(points)]

    ranked = rank(trials, higher)
    write_table(out_dir, ranked, metric, spec, strategy, sweep_id)
    return SweepResult(out_dir, strategy, metric, ranked)


def rank(trials: list[dict[str, Any]], higher_is_better: bool) -> list[dict[str, Any]]:
    """Best first; failed trials (no value) last. Adds each trial's 'rank' (None when failed)."""
    scored = sorted((t for t in trials if t["value"] is not None), key=lambda t: t["value"], reverse=higher_is_better)
    failed = [t for t in trials if t["value"] is None]
    for i, t in enumerate(scored, 1):
        t["rank"] = i
    for t in failed:
        t["rank"] = None
    return scored + failed


def write_table(
    out_dir: Path, trials: list[dict[str, Any]], metric: str, spec: SweepSpec, strategy: str, sweep_id: str
) -> None:
    """sweep.json (everything), sweep.csv and sweep.md (the ranked table)."""
    keys = list(spec.space)
    summary = {"id": sweep_id, "strategy": strategy, "metric": f"validation {metric}", "spec": spec.model_dump()}
    (out_dir / "sweep.json").write_text(json.dumps({**summary, "trials": trials}, indent=2) + "\n", encoding="utf-8")
    header = ["rank", "trial", *keys, f"val_{metric}", "status", "steps", "run"]
    rows = [
        [t["rank"], t["trial"], *(t["params"][k] for k in keys), t["value"], t["status"], t.get("steps"), t["run"]]
        for t in trials
    ]
    with (out_dir / "sweep.csv").open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)
    lines = [
        f"# Sweep {sweep_id}",
        "",
        f"Strategy {strategy}; {len(trials)} trials ranked on validation {metric}.",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
    ]
    for row in rows:
        lines.append("| " + " | ".join(cell(v) for v in row) + " |")
    (out_dir / "sweep.md").write_text("\n".join(lines) + "\n", encoding="utf-8")


def cell(value: Any) -> str:
    """A table cell: 4 significant digits for floats, an en dash for nothing."""
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)
