"""`tuneloop monitor export`: the Iterate edge of the loop. Traffic people corrected becomes training data.

From the traffic log (`tuneloop serve --log`) and its feedback (`POST /v1/feedback`; the latest
feedback on a response counts), it picks the responses whose feedback was given in the window:

  corrected   feedback with a correction: the person wrote the answer the model should have given.
              Written as training records in a format `tuneloop data prepare` reads, with the
              correction as the answer (never the model's own answer).
  down        a thumbs down. With a correction it is a training record as above; without one there
              is no right answer to train on, so it goes to a review file instead (the request, the
              wrong answer, the comment), for a person to write the answer.
  flagged     answers that arrived in the window and that the monitor report's output signals flag
              (empty, truncated, refusal, repetition, invalid JSON or schema: the evaluation's own
              checks, passed in by the caller), unless a person corrected them (then they are
              training records) or rated them up (a person's judgement beats a heuristic). They go
              to the review file with their flags.

The training file goes to `data/traffic/export-<time>.jsonl` by default: add `data/traffic` to
`data.train` once, and each later export is picked up by the next `data prepare`. Nothing empty is
written (an empty file would stop `data prepare`). Records are split like any other data, by the
content hash of each record.

The record format follows the project's task type:
  chat and the others   chat requests: {"messages": [...the conversation..., {assistant: correction}]},
                        earlier assistant turns with weight 0 (only the correction is endorsed);
                        text completions: {"prompt", "completion"} in a second file (-completions)
  preference            {"prompt", "chosen": correction, "rejected": the model's answer}
  preference, kto       rated answers, {"prompt", "completion", "label": true|false} (TRL's unpaired format):
                        a thumbs up or down rates the model's answer, so it is a training record even
                        without a correction (not a review entry); a correction is a desirable answer and
                        the model's answer it replaces an undesirable one. `all` picks thumbs up too.
  classification        {"text": the user's text, "label": correction}
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

from tuneloop import traffic
from tuneloop.config import ProjectConfig
from tuneloop.errors import UserError
from tuneloop.monitor.signals import ANSWERED, OutputChecks
from tuneloop.traffic import FeedbackRow, TrafficRow

Only = Literal["down", "corrected", "flagged", "all"]
ONLY: tuple[Only, ...] = ("down", "corrected", "flagged", "all")
EXPORT_DIR = Path("data") / "traffic"


@dataclass
class ExportResult:
    """What an export wrote, and why each response it looked at went where it went."""

    written: dict[str, int] = field(default_factory=dict)  # file path → records (only files that were written)
    review_path: Path | None = None
    review_rows: int = 0
    with_feedback: int = 0  # responses whose latest feedback falls in the window
    corrected: int = 0
    down_uncorrected: int = 0
    flagged: int = 0  # flagged answers sent to review (neither corrected nor rated up)
    not_logged: int = 0  # feedback whose request is not in the log (deleted, or another log)
    rated: int = 0  # kto: uncorrected answers written as rated by their thumbs up or down
    skipped: list[dict[str, str]] = field(default_factory=list)  # {id, reason}: picked but not convertible


def export(
    cfg: ProjectConfig,
    since: datetime | None = None,
    only: Only = "all",
    out: Path | None = None,
    review_out: Path | None = None,
    log_path: Path | None = None,
    checks: OutputChecks | None = None,
) -> ExportResult:
    """Write the picked responses as training records (and a review file); see the module docstring.

    `checks` judges answers for `flagged` (and `all`); without them, `all` is down + corrected.
    """
    if only not in ONLY:
        raise UserError(f"--only {only!r}: choose one of {', '.join(ONLY)}")
    if only == "flagged" and checks is None:
        raise UserError("--only flagged needs the output checks of `tuneloop monitor` (the CLI passes them)")
    path = log_path or traffic.default_path(cfg)
    every = traffic.latest_feedback(path)
    latest = {rid: fb for rid, fb in every.items() if since is None or datetime.fromisoformat(fb["time"]) >= since}
    requests = {row["id"]: row for row in traffic.read_requests(path, ids=latest)}
    result = ExportResult(with_feedback=len(latest), not_logged=len(set(latest) - set(requests)))
    flags: dict[str, list[str]] = {}
    if checks is not None and only in ("flagged", "all"):
        for row in traffic.read_requests(path, since):
            requests.setdefault(row["id"], row)
        flags = answer_flags(list(requests.values()), checks)

    kto = cfg.task.type == "preference" and cfg.method.name == "kto"
    records: dict[str, list[dict[str, Any]]] = {"main": [], "completions": []}
    review: list[dict[str, Any]] = []
    for rid, row in sorted(requests.items(), key=lambda item: (item[1]["time"], item[0])):
        fb = latest.get(rid)
        corrected = fb is not None and bool(fb["correction"] and fb["correction"].strip())
        down = fb is not None and fb["rating"] == "down"
        flagged = rid in flags and not _vouched(every.get(rid))  # a person's judgement beats a heuristic
        picked = (
            (down and only in ("down", "all"))
            or (corrected and only in ("corrected", "all"))
            or (flagged and only in ("flagged", "all"))
            or (kto and fb is not None and fb["rating"] == "up" and only == "all")
        )
        if not picked:
            continue
        if kto and fb is not None and (corrected or fb["rating"] is not None):
            try:
                records["main"] += rated_records(row, fb)
            except ValueError as e:
                result.skipped.append({"id": rid, "reason": str(e)})
                continue
            result.corrected += corrected
            result.rated += not corrected
            continue
        if corrected:
            assert fb is not None
            try:
                kind, record = training_record(row, fb, cfg.task.type)
            except ValueError as e:
                result.skipped.append({"id": rid, "reason": str(e)})
                continue
            records[kind].append(record)
            result.corrected += 1
        else:
            review.append(review_record(row, fb or every.get(rid), flags.get(rid)))
            result.down_uncorrected += down
            result.flagged += not down

    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    main = out or cfg.root / EXPORT_DIR / f"export-{stamp}.jsonl"
    targets = {"main": main, "completions": main.with_name(main.stem + "-completions" + main.suffix)}
    for kind, rows in records.items():
        if rows:
            _write_jsonl(targets[kind], rows)
            result.written[str(targets[kind])] = len(rows)
    if review:
        result.review_path = review_out or cfg.root / "monitor" / f"review-{stamp}.jsonl"
        _write_jsonl(result.review_path, review)
        result.review_rows = len(review)
    return result


def training_record(row: TrafficRow, fb: FeedbackRow, task_type: str) -> tuple[str, dict[str, Any]]:
    """(file kind, record) for a corrected response: 'main' or 'completions'. ValueError when the
    request cannot become a record of the task's format (the reason is reported, the row skipped)."""
    correction = (fb["correction"] or "").strip()
    source = {"traffic_id": row["id"]}
    prompt, user_text = request_prompt(row)
    if task_type == "preference":
        if row["output"].strip() == correction:
            raise ValueError("the correction is the model's own answer: no preference to learn")
        return "main", {"prompt": prompt, "chosen": correction, "rejected": row["output"], **source}
    if task_type == "classification":
        return "main", {"text": user_text, "label": correction, **source}
    if isinstance(prompt, str):
        return "completions", {"prompt": prompt, "completion": correction, **source}
    earlier = [dict(m, weight=0) if m["role"] == "assistant" else dict(m) for m in prompt]
    return "main", {"messages": [*earlier, {"role": "assistant", "content": correction}], **source}


def request_prompt(row: TrafficRow) -> tuple[list[dict[str, Any]] | str, str]:
    """(the prompt as a record holds it: the conversation, or a completion's text; the user's last text).
    ValueError when the request has no single prompt to train on."""
    if row["messages"] is not None:
        conversation = [m for m in row["messages"] if m["content"].strip()]
        if not conversation or conversation[-1]["role"] != "user":
            raise ValueError("the conversation does not end with a user turn")
        return conversation, conversation[-1]["content"]
    if row["prompt"]:
        if row["params"].get("prompts"):
            raise ValueError("a request with several prompts has one correction for several answers")
        return row["prompt"], row["prompt"]
    raise ValueError("the request has neither messages nor a prompt")


def rated_records(row: TrafficRow, fb: FeedbackRow) -> list[dict[str, Any]]:
    """A kto project's records for a response people judged, in the `unpaired` format: a correction is a
    desirable answer and the model's answer it replaces an undesirable one (unless they are the same); without
    a correction, the thumbs up or down rates the model's answer. ValueError when nothing can be written."""
    prompt, _ = request_prompt(row)
    source = {"traffic_id": row["id"]}
    correction = (fb["correction"] or "").strip()
    output = row["output"] or ""
    records = []
    if correction:
        records.append({"prompt": prompt, "completion": correction, "label": True, **source})
    if output.strip() and output.strip() != correction:
        desirable = not correction and fb["rating"] == "up"  # a corrected answer was not the one wanted
        records.append({"prompt": prompt, "completion": output, "label": desirable, **source})
    if not records:
        raise ValueError("the answer is empty and there is no correction: nothing to rate")
    return records


def answer_flags(rows: list[TrafficRow], checks: OutputChecks) -> dict[str, list[str]]:
    """{response id: the output signals its answer raises} for answered rows (finish reason stop or length),
    with the monitor report's signals: empty, truncated, refusal, repetition, json_invalid, schema_invalid."""
    answered = [row for row in rows if row["finish_reason"] in ANSWERED]
    texts = [row["output"] or "" for row in answered]
    json_ok = checks.json_valid(texts) if checks.json_valid is not None and texts else [1.0] * len(texts)
    schema_ok = checks.json_schema(texts) if checks.json_schema is not None and texts else [1.0] * len(texts)
    out = {}
    for row, text, valid, fits in zip(answered, texts, json_ok, schema_ok, strict=True):
        found = [
            name
            for name, hit in (
                ("empty", not text.strip()),
                ("truncated", row["finish_reason"] == "length"),
                ("refusal", bool(text.strip()) and checks.refusal(text)),
                ("repetition", bool(text.strip()) and checks.repetition(text)),
                ("json_invalid", not valid),
                ("schema_invalid", valid and not fits),
            )
            if hit
        ]
        if found:
            out[row["id"]] = found
    return out


def _vouched(fb: FeedbackRow | None) -> bool:
    """A person has judged this answer already: rated it up, or corrected it."""
    return fb is not None and (fb["rating"] == "up" or bool(fb["correction"] and fb["correction"].strip()))


def review_record(row: TrafficRow, fb: FeedbackRow | None, flags: list[str] | None = None) -> dict[str, Any]:
    """A response to review (a thumbs down without a correction, or a flagged answer), as a person needs it
    to write the right answer."""
    why = "thumbs down without a correction" if fb is not None and fb["rating"] == "down" else "flagged"
    if flags:
        why += f" ({', '.join(flags)})"
    return {
        "traffic_id": row["id"],
        "time": row["time"],
        "model": row["model"],
        "adapter": row["adapter"],
        "messages": row["messages"],
        "prompt": row["prompt"],
        "answer": row["output"],
        "finish_reason": row["finish_reason"],
        "rating": fb["rating"] if fb else None,
        "comment": fb["comment"] if fb else None,
        "feedback_time": fb["time"] if fb else None,
        "flags": flags or [],
        "todo": f"{why}: check the answer and write the right one (POST /v1/feedback with a correction) "
        "before it can be trained on",
    }


def _write_jsonl(path: Path, rows: Iterable[dict[str, Any]]) -> None:
    """Write whole or not at all: a half-written file in data/traffic would be read by the next prepare."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    os.replace(tmp, path)
