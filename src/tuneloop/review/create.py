"""`tuneloop review create`: build a review from an evaluation's answers or from any JSONL of outputs.

An evaluation folder (`<run>/eval/`, or `evals/<stamp>/` for several runs) holds `outputs.jsonl`,
one row per test case with every system's answer and its per-example metric scores, and
`metrics.json` with the metric directions and the judge's verdicts. A review samples those cases,
keeps what the evaluation measured beside each answer (to compare with the humans later), and
draws, with a seeded RNG, the hidden order in which each item shows its answers.
"""

from __future__ import annotations

import hashlib
import json
import random
from pathlib import Path
from typing import Any

from tuneloop.errors import UserError
from tuneloop.review.store import Candidate, Item, Mode, Review, Store, now

OUTPUTS = "outputs.jsonl"
METRICS = "metrics.json"
BASE = "base"


# --------------------------------------------------------------------------- from an evaluation


def eval_folder(path: Path) -> Path:
    """The evaluation folder of a run folder (its eval/), or `path` itself when it holds outputs.jsonl."""
    for candidate in (path, path / "eval"):
        if (candidate / OUTPUTS).is_file():
            return candidate
    raise UserError(
        f"{path} has no evaluation outputs ({OUTPUTS}); run `tuneloop eval --run {path}` first, "
        "or give a JSONL of outputs with --from-jsonl"
    )


def from_eval(folder: Path, against: Path | None = None) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Rows of {id, conversation, reference, candidates} from an evaluation, plus where they came from.

    Alone, a run's evaluation gives base vs the run (base first: the win rate is the run's). With
    `against`, the candidates are the first folder's run and the second folder's run, joined on the
    test case id (the second first: the win rate is the first run's).
    """
    rows, info = _read_eval(folder)
    tuned = [s for s in info["systems"] if s != BASE]
    if not tuned:
        raise UserError(f"{folder}/{METRICS} lists no fine-tuned run beside the base model")
    source = {
        "kind": "eval",
        "eval_dir": str(folder),
        # the report shows the human review only beside the evaluation it was made from
        "outputs_sha256": hashlib.sha256((folder / OUTPUTS).read_bytes()).hexdigest(),
        **_metric_info(info),
    }
    if against is None:
        systems = [BASE, *tuned]
        return [_eval_row(r, systems, info, folder) for r in rows], {**source, "systems": systems}
    other_rows, other_info = _read_eval(against)
    other = [s for s in other_info["systems"] if s != BASE]
    if not other:
        raise UserError(f"{against}/{METRICS} lists no fine-tuned run beside the base model")
    if other[0] == tuned[0]:
        raise UserError(f"--from and --against are the same run ({tuned[0]}); compare two different runs")
    by_id = {r["id"]: r for r in other_rows}
    joined = []
    for r in rows:
        o = by_id.get(r["id"])
        if o is None or o["prompt"] != r["prompt"]:
            continue
        merged = {**r, other[0]: o[other[0]]}
        joined.append(_eval_row(merged, [other[0], tuned[0]], {}, folder))  # the judge compared each with the base
    if not joined:
        raise UserError(
            f"{folder} and {against} share no test case (same id and prompt); evaluate both on the same test split"
        )
    source.update(against_dir=str(against), systems=[other[0], tuned[0]])
    return joined, source


def _read_eval(folder: Path) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    try:
        info = json.loads((folder / METRICS).read_text(encoding="utf-8"))
        rows = [json.loads(line) for line in (folder / OUTPUTS).read_text(encoding="utf-8").splitlines() if line]
        for i, row in enumerate(rows):
            row["_index"] = i  # the judge's verdicts are listed in this order
    except (OSError, json.JSONDecodeError) as e:
        raise UserError(f"cannot read the evaluation in {folder}: {e}; re-run `tuneloop eval`") from None
    return rows, info


def _metric_info(info: dict[str, Any]) -> dict[str, Any]:
    metrics = list(info.get("metric_info", {}))
    primary = metrics[0] if metrics else None
    higher = info["metric_info"][primary].get("higher_is_better", True) if primary else True
    judge = info.get("judge") or {}
    return {"primary": primary, "higher_is_better": higher, "judge_mode": (judge.get("summary") or {}).get("mode")}


def _eval_row(row: dict[str, Any], systems: list[str], info: dict[str, Any], folder: Path) -> dict[str, Any]:
    """One test case as review candidates; the judge's verdicts on it ride along in the scores."""
    index = row.get("_index")
    candidates = []
    for s in systems:
        answer = row[s]
        scores = dict(answer.get("scores", {}))
        judge = ((info.get("judge") or {}).get("details") or {}).get(s) or {}
        outcomes = judge.get("outcomes") or []
        if index is not None and index < len(outcomes) and outcomes[index] is not None:
            scores["judge_win"] = outcomes[index]  # 1 this run preferred over the base, 0 the base
        candidates.append(Candidate(s, answer["output"], scores))
    for s in systems:  # score-mode judges rate every system, the base included, under each run's key
        for details in ((info.get("judge") or {}).get("details") or {}).values():
            per = (details.get("scores") or {}).get(s)
            if index is not None and per and index < len(per) and per[index] is not None:
                candidates[systems.index(s)].scores["judge_score"] = per[index]
    return {
        "id": str(row["id"]),
        "conversation": [{"role": "user", "content": row["prompt"]}],
        "reference": row.get("reference"),
        "candidates": candidates,
    }


# --------------------------------------------------------------------------- from any JSONL

ANSWER_KEYS = ("output", "completion", "response", "answer")
LIST_KEYS = ("outputs", "responses")


def from_jsonl(path: Path) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Rows from a JSONL file of prompts and outputs.

    Each line is one of:
    - {"messages": [...]}: the last assistant turn is the answer, the turns before it the prompt
      (the training records `tuneloop monitor export` and `review export` write);
    - {"messages": [...prompt turns], "answer": str}: the review file of `tuneloop monitor export`
      (thumbs-down answers without a correction);
    - {"prompt": str or messages, "output" | "completion" | "response": str}: one answer;
    - {"prompt": ..., "outputs": [str or {"system": name, "output": str}, ...]}: several answers.
    Optional: "id", "reference", "system" (the name of a single answer's model).
    """
    if not path.is_file():
        raise UserError(f"{path} does not exist; give a JSONL file of prompts and outputs")
    rows, errors = [], []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            rows.append(_jsonl_row(json.loads(line), f"{path.stem}-{n}"))
        except (json.JSONDecodeError, ValueError) as e:
            errors.append(f"{path}:{n}: {e}")
    if errors:
        raise UserError(f"{len(errors)} bad lines in {path}:\n  " + "\n  ".join(errors[:10]))
    if not rows:
        raise UserError(f"{path} has no rows")
    names = list(dict.fromkeys(c.system for r in rows for c in r["candidates"]))
    return rows, {"kind": "jsonl", "path": str(path), "systems": names}


def _jsonl_row(value: Any, default_id: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ValueError(f"expected a JSON object, got {type(value).__name__}")
    reference = value.get("reference")
    if reference is not None and not isinstance(reference, str):
        raise ValueError("field 'reference' must be a string")
    answer_key = next((k for k in ANSWER_KEYS if value.get(k) is not None), None)
    if value.get("messages") is not None and answer_key is not None:  # a monitor review file: prompt turns + answer
        conversation = _messages(value["messages"], "messages")
        candidates = [
            Candidate(_name(value.get("system") or value.get("model"), "model"), _str(value[answer_key], answer_key))
        ]
    elif value.get("messages") is not None:
        messages = _messages(value["messages"], "messages")
        last = max((i for i, m in enumerate(messages) if m["role"] == "assistant"), default=None)
        if last is None or last == 0:
            raise ValueError("field 'messages' needs a prompt turn and an assistant answer after it")
        conversation = messages[:last]
        candidates = [Candidate(_name(value.get("system"), "model"), messages[last]["content"])]
    elif value.get("prompt") is not None:
        prompt = value["prompt"]
        conversation = (
            _messages(prompt, "prompt")
            if isinstance(prompt, list)
            else [{"role": "user", "content": _str(prompt, "prompt")}]
        )
        key = next((k for k in LIST_KEYS if k in value), None)
        if key is not None:
            outputs = value[key]
            if not isinstance(outputs, list) or not outputs:
                raise ValueError(f"field '{key}' must be a non-empty list")
            candidates = [_candidate(o, f"{key}[{i}]", i) for i, o in enumerate(outputs)]
        else:
            if answer_key is None:
                raise ValueError(f"a 'prompt' row needs one of {', '.join(ANSWER_KEYS + LIST_KEYS)}")
            name = _name(value.get("system") or value.get("model"), "model")
            candidates = [Candidate(name, _str(value[answer_key], answer_key))]
    else:
        raise ValueError(f"row has keys {{{', '.join(sorted(value))}}}; expected 'messages' or 'prompt' + 'output(s)'")
    systems = [c.system for c in candidates]
    if len(set(systems)) != len(systems):
        raise ValueError(f"two answers share the system name {systems}; name each answer's system once")
    return {
        "id": str(value.get("id", default_id)),
        "conversation": conversation,
        "reference": reference,
        "candidates": candidates,
    }


def _candidate(value: Any, where: str, i: int) -> Candidate:
    if isinstance(value, str):
        return Candidate(f"output {i + 1}", _str(value, where))
    if isinstance(value, dict):
        text = next((value[k] for k in ("output", "text", "content") if k in value), None)
        return Candidate(_name(value.get("system") or value.get("name"), f"output {i + 1}"), _str(text, where))
    raise ValueError(f"{where} must be a string or an object with system and output")


def _messages(value: Any, key: str) -> list[dict[str, str]]:
    if not isinstance(value, list) or not value:
        raise ValueError(f"field '{key}' must be a non-empty list of {{role, content}} objects")
    out = []
    for i, m in enumerate(value):
        if not isinstance(m, dict) or m.get("role") not in ("system", "user", "assistant"):
            raise ValueError(f"{key}[{i}] must be an object with role system, user or assistant")
        out.append({"role": m["role"], "content": _str(m.get("content"), f"{key}[{i}].content")})
    return out


def _str(value: Any, what: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"field '{what}' must be a non-empty string")
    return value


def _name(value: Any, default: str) -> str:
    return value.strip() if isinstance(value, str) and value.strip() else default


# --------------------------------------------------------------------------- the review


def build(
    store: Store,
    rows: list[dict[str, Any]],
    source: dict[str, Any],
    *,
    name: str,
    mode: Mode,
    sample: int,
    seed: int,
    criteria: list[str],
    overlap: int,
) -> tuple[Review, list[Item]]:
    """Sample `sample` rows with a seeded RNG, shape them for `mode`, and store the review.

    pairwise: each item shows two answers (the systems' order is fixed by the source: baseline
    first), in a random order per item. rubric: each answer is its own item, items shuffled so a
    prompt's answers are not side by side. ranking: all of a row's answers, in a random order.
    """
    rng = random.Random(seed)
    for i, r in enumerate(rows):
        r["_row"] = i
    picked = rng.sample(rows, min(sample, len(rows)))
    systems = source["systems"]
    items: list[Item] = []
    if mode == "pairwise":
        bad = [r["id"] for r in picked if len(r["candidates"]) != 2]
        if bad and source["kind"] == "jsonl":
            raise UserError(
                f"pairwise mode needs two answers per row; {len(bad)} rows have another count (first: {bad[0]}). "
                "Use --mode rubric for single answers, or --mode ranking for several"
            )
        if len(systems) != 2:
            raise UserError(
                f"pairwise mode compares two systems; the source has {len(systems)} ({', '.join(systems)}). "
                "Pick two with --from RUN --against RUN2, or use --mode ranking"
            )
        for r in picked:
            order = sorted(r["candidates"], key=lambda c: systems.index(c.system))
            items.append(Item(len(items), r["id"], r["conversation"], r["reference"], order, rng.sample([0, 1], 2)))
    elif mode == "rubric":
        pairs = [(r, c) for r in picked for c in r["candidates"]]
        rng.shuffle(pairs)
        for r, c in pairs:
            items.append(Item(len(items), r["id"], r["conversation"], r["reference"], [c], [0]))
    else:
        few = [r["id"] for r in picked if len(r["candidates"]) < 2]
        if few:
            raise UserError(f"ranking mode needs at least two answers per row; {len(few)} rows have one ({few[0]})")
        for r in picked:
            k = len(r["candidates"])
            items.append(
                Item(len(items), r["id"], r["conversation"], r["reference"], r["candidates"], rng.sample(range(k), k))
            )
    review = Review(name, mode, systems, criteria, overlap, seed, {**source, "rows": len(rows)}, now())
    store.create_review(review, items)
    return review, items
