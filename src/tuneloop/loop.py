"""`tuneloop run`: the loop in one command — prepare → train → eval (→ export) — each stage cached by its inputs.

A stage is reused when the hash of everything it reads equals the hash recorded with its output:

  prepare  the data section, the model (its tokenizer) and every input file's sha256
           → recorded in data/prepared/manifest.json by the data stage itself
  train    the prepared train/val sha256, the chat template, and the data, model, method and train sections
           → runs/<id>/loop.json (written before training starts, so an interrupted run is found again)
  eval     the train key, the test split's sha256, and the task and eval sections
           → runs/<id>/eval/stage.json, next to the report it vouches for
  export   the train key, the eval key (the model card quotes the eval), and the export section; only
           when export.enabled → runs/<id>/export/stage.json, next to the verification it vouches for

So changing train.learning_rate re-runs train and eval but not prepare; changing eval.max_new_tokens
re-runs eval only. An interrupted stage left no record, so the next `tuneloop run` redoes it, and
training resumes from its last complete checkpoint.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tuneloop import __version__, console, models
from tuneloop.config import ProjectConfig

LOOP_FILE = "loop.json"
EVAL_STAMP = "stage.json"
# Train settings that change how a run is watched or stored, not the weights it produces.
UNKEYED_TRAIN = ("log_every", "report_to", "keep_last", "save_every")
FINISHED = ("completed", "early_stopped")


@dataclass
class Stage:
    """What happened to one stage in this invocation."""

    name: str
    action: str  # ran | reused | resumed | skipped
    seconds: float
    output: str
    key: str
    detail: str = ""


@dataclass
class LoopResult:
    run_dir: Path | None
    status: str  # completed | interrupted
    stages: list[Stage] = field(default_factory=list)
    report: dict[str, Any] | None = None  # the eval report (metrics.json), when eval ran or was reused
    report_dir: Path | None = None


def digest(value: Any) -> str:
    """sha256 of a JSON-serialisable value, independent of key order."""
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()


def read_json(path: Path) -> dict[str, Any] | None:
    """A JSON file's content, or None when it is missing or unreadable (a stage never finished)."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _write_json(path: Path, value: dict[str, Any]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(value, indent=2, default=str) + "\n", encoding="utf-8")
    os.replace(tmp, path)


# --------------------------------------------------------------------------- 1. prepare


def prepare_inputs(cfg: ProjectConfig) -> dict[str, Any]:
    """What the data stage reads, in the form its manifest records it."""
    from tuneloop.data.prepare import input_sources, settings_sha256

    return {"tuneloop": __version__, "settings_sha256": settings_sha256(cfg), "sources": input_sources(cfg)}


def prepare_stage(cfg: ProjectConfig) -> tuple[Stage, dict[str, Any]]:
    """Reuse data/prepared when its manifest was made from the same inputs; else run the data stage."""
    from tuneloop.data.prepare import prepare

    out = cfg.path(cfg.data.prepared_dir)
    wanted = prepare_inputs(cfg)
    key = digest(wanted)
    manifest = read_json(out / "manifest.json")
    if manifest and manifest.get("tokenized") and all(manifest.get(k) == v for k, v in wanted.items()):
        return Stage("prepare", "reused", 0.0, str(out), key, _split_rows(manifest)), manifest
    started = time.perf_counter()
    result = prepare(cfg)
    for warning in result.warnings:
        console.warn(warning)
    manifest = read_json(out / "manifest.json") or {}
    r = result.report
    detail = f"{r['rows_in']:,} rows in; {_split_rows(manifest)}"
    return Stage("prepare", "ran", time.perf_counter() - started, str(out), key, detail), manifest


def _split_rows(manifest: dict[str, Any]) -> str:
    return " / ".join(f"{name} {s['rows']:,}" for name, s in manifest.get("splits", {}).items())


# --------------------------------------------------------------------------- 2. train


def train_key(cfg: ProjectConfig, manifest: dict[str, Any]) -> str:
    """Hash of everything the trained weights depend on."""
    splits = manifest.get("splits", {})
    train = {k: v for k, v in cfg.train.model_dump(mode="json").items() if k not in UNKEYED_TRAIN}
    return digest(
        {
            "tuneloop": __version__,
            "data": {name: splits[name]["sha256"] for name in ("train", "val") if name in splits},
            "data_settings": cfg.data.model_dump(mode="json"),  # a resume checks these too
            "chat_template": manifest.get("chat_template_sha256"),
            "model": cfg.model.model_dump(mode="json"),
            # The name alone can point at other weights (an edited folder, a moved hub revision).
            "weights": models.fingerprint(models.resolve(cfg.model.name, cfg.model.revision)),
            "method": cfg.method.model_dump(mode="json"),
            "train": train,
            # A classifier's strategy settings; other tasks' keys stay as they were.
            **({"classify": cfg.classify.model_dump(mode="json")} if cfg.task.type == "classification" else {}),
        }
    )


def find_run(cfg: ProjectConfig, key: str) -> Path | None:
    """The run folder trained with this key: a finished one if any, else the newest interrupted one."""
    base = cfg.path(cfg.output.dir)
    if not base.is_dir():
        return None
    matches = []
    for loop_file in base.glob(f"*/{LOOP_FILE}"):
        record = read_json(loop_file) or {}
        if record.get("train_key") == key:
            matches.append(loop_file.parent)
    if not matches:
        return None
    finished = [d for d in matches if _finished(d)]
    return max(finished or matches, key=lambda d: d.stat().st_mtime)


def _finished(run_dir: Path) -> bool:
    summary = read_json(run_dir / "summary.json") or {}
    return summary.get("status") in FINISHED and (run_dir / "final").is_dir()


def train_stage(
    cfg: ProjectConfig, manifest: dict[str, Any], kind: str = "loop", group: str | None = None
) -> tuple[Stage, Path, str]:
    """(stage, run folder, training status): reuse a finished run, resume an interrupted one, or train."""
    from functools import partial

    from tuneloop import runs
    from tuneloop.evaluate.runner import higher_is_better, training_evaluator
    from tuneloop.train import checkpoint, sft

    # The evaluation stage lends training its metrics on generated answers and their directions.
    train = partial(sft.train, evaluator=training_evaluator, higher_is_better=higher_is_better)
    if cfg.task.type == "classification":
        from tuneloop.train import classify

        train = classify.train
    if cfg.method.name == "grpo":
        from tuneloop.train import grpo

        train = grpo.train
    if cfg.task.type == "preference":
        from tuneloop.train import preference

        train = preference.train
    key = train_key(cfg, manifest)
    run_dir = find_run(cfg, key)
    if run_dir is not None and _finished(run_dir):
        summary = read_json(run_dir / "summary.json") or {}
        return Stage("train", "reused", 0.0, str(run_dir), key, _train_detail(summary)), run_dir, summary["status"]

    started = time.perf_counter()
    if run_dir is not None and checkpoint.latest(run_dir / "checkpoints") is not None:
        action, result = "resumed", train(cfg, resume=run_dir)
    else:
        if run_dir is not None:  # interrupted before its first checkpoint: start it again, in place
            _empty_folder(run_dir, keep=LOOP_FILE)
        else:
            run_dir = runs.new_run_dir(cfg)
            _write_json(run_dir / LOOP_FILE, {"kind": kind, "group": group, "train_key": key, "history": []})
        action, result = "ran", train(cfg, run_dir=run_dir)
    stage = Stage("train", action, time.perf_counter() - started, str(run_dir), key, _train_detail(result.summary))
    return stage, run_dir, result.status


def _train_detail(summary: dict[str, Any]) -> str:
    best = summary.get("best") or {}
    text = f"{summary.get('status')} at step {summary.get('steps')}/{summary.get('max_steps')}"
    if best.get("value") is not None:
        text += f"; best {best['metric']} {best['value']:.4f} at step {best['step']}"
    return text


def _empty_folder(folder: Path, keep: str) -> None:
    for child in folder.iterdir():
        if child.name == keep:
            continue
        shutil.rmtree(child) if child.is_dir() else child.unlink()


# --------------------------------------------------------------------------- 3. eval


def eval_key(cfg: ProjectConfig, trained_key: str, manifest: dict[str, Any]) -> str:
    """Hash of everything the evaluation depends on."""
    from tuneloop.evaluate.winrate import reward_run

    test = manifest.get("splits", {}).get("test", {})
    parts = {
        "tuneloop": __version__,
        "train_key": trained_key,
        "test": test.get("sha256"),
        "task": cfg.task.model_dump(mode="json"),
        "eval": cfg.eval.model_dump(mode="json"),
    }
    reward_dir = reward_run(cfg)  # a wrong folder is a clear error here, before any stage runs
    if reward_dir is not None:
        # eval.reward_model names a folder; a reward run trained again into it scores differently.
        parts["reward_model_weights"] = models.fingerprint(reward_dir / "final")
    return digest(parts)


def eval_stage(
    cfg: ProjectConfig, run_dir: Path, trained_key: str, manifest: dict[str, Any]
) -> tuple[Stage, dict[str, Any] | None]:
    """Reuse run_dir/eval when its stamp matches; else evaluate base vs the run on the test split."""
    from tuneloop.data.prepare import sha256_file
    from tuneloop.evaluate.runner import evaluate

    if cfg.task.type == "classification":
        from tuneloop.evaluate.classify import evaluate
    if cfg.task.type == "preference":
        from tuneloop.evaluate.preference import evaluate
    out = run_dir / "eval"
    key = eval_key(cfg, trained_key, manifest)
    if not manifest.get("splits", {}).get("test", {}).get("rows"):
        console.warn("no test split, so no evaluation: give data.split.test a share (e.g. 0.1) or data.test a file")
        return Stage("eval", "skipped", 0.0, "", key, "no test split"), None
    stamp = read_json(out / EVAL_STAMP) or {}
    metrics = out / "metrics.json"
    if stamp.get("key") == key and metrics.is_file() and stamp.get("metrics_sha256") == sha256_file(metrics):
        report = read_json(metrics)
        return Stage("eval", "reused", 0.0, str(out / "report.html"), key, _eval_detail(report)), report
    started = time.perf_counter()
    (out / EVAL_STAMP).unlink(missing_ok=True)
    result = evaluate(cfg, [run_dir], out_dir=out)
    _write_json(out / EVAL_STAMP, {"key": key, "metrics_sha256": sha256_file(metrics)})
    seconds = time.perf_counter() - started
    return Stage("eval", "ran", seconds, str(out / "report.html"), key, _eval_detail(result.report)), result.report


def _eval_detail(report: dict[str, Any] | None) -> str:
    if not report:
        return ""
    parts = []
    for per in report.get("comparisons", {}).values():
        for metric, c in per.items():
            parts.append(f"{metric} {c['baseline']:.3g} → {c['candidate']:.3g} ({c['verdict']})")
    return "; ".join(parts)


# --------------------------------------------------------------------------- 4. export


def export_key(cfg: ProjectConfig, trained_key: str, evaluated_key: str | None) -> str:
    """Hash of everything the export depends on."""
    return digest(
        {
            "tuneloop": __version__,
            "train_key": trained_key,
            "eval_key": evaluated_key,
            "export": cfg.export.model_dump(mode="json"),
        }
    )


def export_stage(cfg: ProjectConfig, run_dir: Path, trained_key: str, evaluated_key: str | None) -> Stage:
    """Reuse run_dir/export when its stamp matches; else export and verify the run's model."""
    from tuneloop.data.prepare import sha256_file
    from tuneloop.export import VERIFICATION, export_run

    out = run_dir / "export"
    key = export_key(cfg, trained_key, evaluated_key)
    stamp = read_json(out / EVAL_STAMP) or {}
    verification = out / VERIFICATION
    if (
        stamp.get("key") == key
        and verification.is_file()
        and stamp.get("verification_sha256") == sha256_file(verification)
    ):
        return Stage("export", "reused", 0.0, str(out), key, _export_detail(read_json(verification)))
    started = time.perf_counter()
    if cfg.task.type == "classification":
        from tuneloop.export.classify import export_classifier

        export_classifier(cfg, run_dir, out)  # verified through pipeline("text-classification")
    else:
        export_run(cfg, run_dir, out=out)  # replaces the folder (and any old stamp) only once verified
    _write_json(out / EVAL_STAMP, {"key": key, "verification_sha256": sha256_file(verification)})
    seconds = time.perf_counter() - started
    return Stage("export", "ran", seconds, str(out), key, _export_detail(read_json(verification)))


def _export_detail(record: dict[str, Any] | None) -> str:
    checks = (record or {}).get("checks", [])
    if (record or {}).get("pipeline"):  # a classifier's export
        c = record["pipeline"]
        return f"pipeline max |Δprobability| {c['max_abs_diff']:.2g}, top label {c['top1_agreement']:.0%}"
    return "; ".join(
        f"{c['format']} max |Δlogit| {c['max_abs_diff']:.2g}, top-1 {c['top1_agreement']:.1%}" for c in checks
    )


# --------------------------------------------------------------------------- the loop


def run(cfg: ProjectConfig, *, kind: str = "loop", group: str | None = None, evaluate: bool = True) -> LoopResult:
    """Prepare, train, evaluate (and export, when export.enabled) `cfg`, reusing every stage whose inputs did not
    change."""
    stages: list[Stage] = []
    stage, manifest = prepare_stage(cfg)
    _announce(stage)
    stages.append(stage)

    stage, run_dir, status = train_stage(cfg, manifest, kind, group)
    _announce(stage)
    stages.append(stage)
    if status not in FINISHED:
        _record(run_dir, stages)
        return LoopResult(run_dir, "interrupted", stages)

    report, trained_key, evaluated_key = None, stage.key, None
    if evaluate:
        stage, report = eval_stage(cfg, run_dir, trained_key, manifest)
        _announce(stage)
        stages.append(stage)
        evaluated_key = stage.key if report else None
    if cfg.export.enabled:
        stage = export_stage(cfg, run_dir, trained_key, evaluated_key)
        _announce(stage)
        stages.append(stage)
    _record(run_dir, stages)
    return LoopResult(run_dir, "completed", stages, report, run_dir / "eval" if report else None)


def _announce(stage: Stage) -> None:
    took = f" in {format_seconds(stage.seconds)}" if stage.action != "reused" else " (inputs unchanged)"
    console.note(f"{stage.name}: {stage.action}{took}")


def _record(run_dir: Path, stages: list[Stage]) -> None:
    """Append this invocation's stage outcomes to the run's loop.json."""
    path = run_dir / LOOP_FILE
    record = read_json(path) or {"kind": "train", "history": []}
    record.setdefault("history", []).append(
        {
            "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "stages": [
                {"name": s.name, "action": s.action, "seconds": round(s.seconds, 2), "key": s.key} for s in stages
            ],
        }
    )
    record["stage_keys"] = {s.name: s.key for s in stages}
    _write_json(path, record)


def format_seconds(seconds: float) -> str:
    """90.5 → '1m31s'; 4.2 → '4.2s'."""
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(round(seconds), 60)
    return f"{minutes}m{secs:02d}s" if minutes < 60 else f"{minutes // 60}h{minutes % 60:02d}m"
