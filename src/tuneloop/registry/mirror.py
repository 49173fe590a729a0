"""The MLflow mirror: indexed runs copied to an MLflow tracking server (`mirror_mlflow`)."""

from __future__ import annotations

import json
import math
import re
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml

from tuneloop import console
from tuneloop.config import ProjectConfig
from tuneloop.errors import UserError
from tuneloop.registry.diff import flatten
from tuneloop.registry.index import _entry, sync
from tuneloop.registry.store import _connect

_MLFLOW_STATUS = {"completed": "FINISHED", "early_stopped": "FINISHED", "stopped": "KILLED", "failed": "FAILED"}
_MLFLOW_LIMITS = {"params": 100, "metrics": 1000, "tags": 100}  # entities per log_batch call
_MLFLOW_PARAM_LENGTH = 6000


def mirror_mlflow(cfg: ProjectConfig, uri: str, run_ids: list[str] | None = None) -> dict[str, str]:
    """Mirror indexed runs (all, or `run_ids`) to the MLflow tracking server at `uri`; return {run id: MLflow run id}.

    The experiment is named after the project folder. Params are the flattened resolved config,
    metrics the training log (per step) and the evaluation against the base, tags the status,
    kind, group and data hash. Mirroring again updates each run (found by its `tuneloop.run_id`
    tag) with what is new, never duplicating it.
    """
    client, experiment_id = _mlflow_experiment(cfg, uri)
    from mlflow.exceptions import MlflowException

    sync(cfg)
    with _connect(cfg) as conn:
        runs = [_entry(conn, r) for r in conn.execute("SELECT * FROM runs ORDER BY created, id")]
    if run_ids is not None:
        unknown = sorted(set(run_ids) - {r["id"] for r in runs})
        if unknown:
            raise UserError(f"no run {', '.join(unknown)} in the registry; `tuneloop runs list` shows the run ids")
        runs = [r for r in runs if r["id"] in set(run_ids)]
    try:
        existing = _mlflow_mirrored(client, experiment_id)
        return {run["id"]: _mirror_run(client, experiment_id, run, existing.get(run["id"])) for run in runs}
    except MlflowException as e:
        raise UserError(f"MLflow at {uri}: {e.message}") from None


def _mlflow_experiment(cfg: ProjectConfig, uri: str) -> tuple[Any, str]:
    try:
        from mlflow.exceptions import MlflowException
        from mlflow.tracking import MlflowClient
    except ImportError:
        raise UserError("mirroring to MLflow needs its client: pip install mlflow-skinny") from None
    name = cfg.root.name
    try:
        client = MlflowClient(tracking_uri=uri)
        experiment = client.get_experiment_by_name(name)
        if experiment is None:
            return client, client.create_experiment(name)
        if experiment.lifecycle_stage == "deleted":
            client.restore_experiment(experiment.experiment_id)
        return client, experiment.experiment_id
    except MlflowException as e:
        raise UserError(f"MLflow at {uri}: {e.message}") from None


def _mlflow_mirrored(client: Any, experiment_id: str) -> dict[str, Any]:
    """{tuneloop run id: MLflow run} for the runs already mirrored into the experiment."""
    found, token = {}, None
    while True:
        page = client.search_runs([experiment_id], max_results=1000, page_token=token)
        for run in page:
            if "tuneloop.run_id" in run.data.tags:
                found[run.data.tags["tuneloop.run_id"]] = run
        token = page.token
        if not token:
            return found


def _mirror_run(client: Any, experiment_id: str, run: dict[str, Any], existing: Any) -> str:
    from mlflow.entities import Metric, Param, RunTag

    tags = {
        "tuneloop.run_id": run["id"],
        "tuneloop.status": "missing" if run["missing"] else run["status"],
        "tuneloop.kind": run["kind"],
        "tuneloop.group": run["group"] or "",
        "tuneloop.data_sha256": run["data_sha256"] or "",
        "tuneloop.config_sha256": run["config_sha256"],
        "tuneloop.path": run["path"],
    }
    if existing is None:
        created = client.create_run(experiment_id, start_time=_ms(run["created"]), tags=tags, run_name=run["id"])
        mlflow_id, old_params, old_metrics, old_status = created.info.run_id, {}, set(), None
    else:
        mlflow_id, old_params, old_status = existing.info.run_id, existing.data.params, existing.info.status
        old_metrics = set(existing.data.metrics)

    params = {_mlflow_key(k): _param_value(v) for k, v in flatten(yaml.safe_load(run["config"]) or {}).items()}
    changed = sorted(k for k, v in params.items() if k in old_params and old_params[k] != v)
    if changed:
        console.warn(f"MLflow params cannot change; run {run['id']} keeps its mirrored values of {', '.join(changed)}")
    new_params = [Param(k, v) for k, v in params.items() if k not in old_params]

    metrics = _mlflow_metrics(run)
    seen: set[tuple[str, int, float]] = set()
    for key in {m[0] for m in metrics} & old_metrics:
        seen |= {(key, m.step, m.value) for m in client.get_metric_history(mlflow_id, key)}
    new_metrics = [Metric(k, v, ts, step) for k, v, ts, step in metrics if (k, step, v) not in seen]

    batches = {
        "params": new_params,
        "metrics": new_metrics,
        "tags": [RunTag(k, v) for k, v in tags.items()],
    }
    for kind, items in batches.items():
        size = _MLFLOW_LIMITS[kind]
        for start in range(0, len(items), size):
            client.log_batch(mlflow_id, **{kind: items[start : start + size]})
    status = _MLFLOW_STATUS.get(run["status"], "RUNNING" if run["status"] == "running" else "FAILED")
    if status != old_status and status != "RUNNING":
        client.set_terminated(mlflow_id, status=status, end_time=_end_time(run))
    return mlflow_id


def _mlflow_metrics(run: dict[str, Any]) -> list[tuple[str, float, int, int]]:
    """(key, value, timestamp ms, step): the training log per step, then the evaluation against the base."""
    out = []
    path = Path(run["path"]) / "metrics.jsonl"
    if not run["missing"] and path.is_file():
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue
            step, stamp = int(row.get("step", 0)), int(float(row.get("time", 0)) * 1000) or _ms(None)
            for key, value in row.items():
                if key not in ("step", "time") and _finite(value):
                    out.append((_mlflow_key(key), float(value), stamp, step))
    evaluation = run["evaluation"]
    if evaluation:
        step, stamp = run["training"]["steps"] or 0, _ms(evaluation["created"])
        for metric, e in evaluation["metrics"].items():
            for field_name in ("baseline", "value", "delta", "ci_low", "ci_high"):
                if _finite(e[field_name]):
                    out.append((_mlflow_key(f"eval.{metric}.{field_name}"), float(e[field_name]), stamp, step))
    return out


def _finite(value: Any) -> bool:
    # NaN never equals itself, so a NaN point would be re-sent on every mirror: skip non-finite values.
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _mlflow_key(key: str) -> str:
    # MLflow allows letters, digits, _ - . / and space in names; user metrics are 'module:function'.
    return re.sub(r"[^\w\-./ ]", "_", key)[:250]


def _param_value(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value)
    return text[:_MLFLOW_PARAM_LENGTH]


def _end_time(run: dict[str, Any]) -> int | None:
    summary = Path(run["path"]) / "summary.json"
    return int(summary.stat().st_mtime * 1000) if not run["missing"] and summary.is_file() else None


def _ms(iso: str | None) -> int:
    if iso:
        try:
            return int(datetime.fromisoformat(iso).timestamp() * 1000)
        except ValueError:
            pass
    return int(time.time() * 1000)
