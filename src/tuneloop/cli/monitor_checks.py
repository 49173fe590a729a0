"""The evaluation's answer checks as `tuneloop monitor` uses them (the report's output signals, and the
answers `monitor export` flags for review). Here, in the CLI, because the monitor stage may not import
the evaluation stage: the caller passes the checks in."""

from __future__ import annotations

import json
from typing import Any

from tuneloop import config


def output_checks(cfg: config.ProjectConfig) -> Any:
    """The evaluation's answer checks (refusal phrases, repeated 3-grams, strict JSON, the task's JSON Schema)."""
    from tuneloop.errors import UserError
    from tuneloop.evaluate import metrics, redteam
    from tuneloop.monitor.signals import OutputChecks

    schema = None
    if cfg.eval.json_schema:
        path = cfg.path(cfg.eval.json_schema)
        try:
            schema = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as e:
            raise UserError(f"cannot read eval.json_schema {path}: {e}") from None

    def scored(name: str):
        def score(texts: list[str]) -> list[float]:
            n = len(texts)
            ids = [str(i) for i in range(n)]
            result = metrics.compute(name, ids=ids, prompts=[""] * n, predictions=texts, references=None, schema=schema)
            return result.per_example.tolist()

        return score

    wants_json = schema is not None or bool({"json_valid", "json_schema"} & set(cfg.task.metrics))
    threshold = cfg.monitor.repetition_threshold
    return OutputChecks(
        refusal=lambda text: bool(redteam.signals(text, True)["refusal"]),
        repetition=lambda text: redteam.repetition(text) >= threshold,
        json_valid=scored("json_valid") if wants_json else None,
        json_schema=scored("json_schema") if schema is not None else None,
    )
