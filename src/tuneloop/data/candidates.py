"""`tuneloop data candidates`: sampled answers become preference data, a teacher's answers become SFT data.

1. read the prompts (`read_prompts`): any chat row the data stage reads (the turns before the last
   assistant turn are the prompt, that turn the reference answer), a bare `{"prompt": ...}` row (with an
   optional "reference") or `{"messages": [...]}` ending with a user turn;
   a row that is not one is a reject at its file:line;
2. answer each prompt K times with the `Answerer` the caller passes in (a local model through the shared
   renderer, or an OpenAI-compatible endpoint), so this module never loads a model;
3. write, for every prompt, one of:
   - `ranked` rows `{prompt, responses, ranking, scores}` (`write_ranked`), scored by a `Scorer`;
   - `outputs` rows for the human review app's ranking mode (`write_for_review`);
   - SFT rows, `messages` or `prompt_completion` (`write_sft`, distillation, K = 1).

Ties. The `ranked` format orders answers strictly, so a tie cannot be written as one. Identical answers are
kept once; of answers with equal scores, the first sampled is kept and the others go to the rejects
file with the reason. Every pair the ranking implies is then a real difference in score. A prompt left
with fewer than two distinct scores has no preference to learn and is a reject.

Nothing leaves silently: every reject (bad input row, failed answer, tie, unscorable answer) is
written to the rejects file with its `file:line` and counted in the result.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from tuneloop.data.formats import KIND_OF_FORMAT, Reject, RowError, read_rows, reject_from, shape_of, to_example
from tuneloop.errors import UserError

STAGE = "candidates"


@dataclass
class Prompt:
    """One prompt to answer: where it came from, its turns (ending with a user turn), its reference answer."""

    id: str  # file:line
    messages: list[dict[str, Any]]
    reference: str | None = None

    @property
    def user(self) -> str:
        """The last user message: what a reward or a judge reads as the prompt."""
        return self.messages[-1]["content"]


@dataclass
class Answer:
    """One answer; `error` says why it is unusable (the endpoint failed, it hit the token limit, ...)."""

    text: str
    error: str | None = None


# Answers `k` times to each prompt's messages, in order: one list of k Answers per prompt.
Answerer = Callable[[list[list[dict[str, Any]]], int], list[list[Answer]]]
# A score for one answer; raises ValueError when it cannot score it (the prompt becomes a reject).
Scorer = Callable[[Prompt, str], float]


@dataclass
class Result:
    out: Path
    rejects: Path
    prompts: int  # prompt rows read
    written: int  # rows written to `out`
    rejected: list[Reject] = field(default_factory=list)  # whole prompts and single answers that left

    def rejects_by_reason(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for r in self.rejected:
            key = r.reason.split(":")[0]
            counts[key] = counts.get(key, 0) + 1
        return counts


# --------------------------------------------------------------------------- 1. prompts


def read_prompts(path: Path) -> tuple[list[Prompt], list[Reject]]:
    """Prompts from a JSONL/JSON/CSV/Parquet file, and the rows that are not prompts (with file:line)."""
    if not path.is_file():
        raise UserError(f"{path} does not exist; give a file of prompts (JSONL rows with 'prompt' or 'messages')")
    prompts: list[Prompt] = []
    rejects: list[Reject] = []
    for row in read_rows(path, str(path)):
        if row.error is not None:
            rejects.append(reject_from(row, row.error, STAGE))
            continue
        try:
            prompts.append(_prompt_of(row.value, f"{path}:{row.line}"))
        except RowError as e:
            rejects.append(reject_from(row, str(e), STAGE))
    if not prompts and not rejects:
        raise UserError(f"{path} has no rows")
    return prompts, rejects


def _prompt_of(value: Any, where: str) -> Prompt:
    bare = isinstance(value, dict) and "prompt" in value and shape_of(value) == "other"
    turns = value.get("messages") if isinstance(value, dict) else None
    unanswered = isinstance(turns, list) and turns and isinstance(turns[-1], dict) and turns[-1].get("role") == "user"
    if bare or unanswered:
        # A prompt without an answer: read as a prompt/completion row's prompt (the placeholder is discarded).
        prompt = value["prompt"] if bare else turns
        example = to_example({"prompt": prompt, "completion": "-"}, "prompt_completion", where)
        messages, reference = example.messages[:-1], value.get("reference")
        if reference is not None and not isinstance(reference, str):
            raise RowError(f"field 'reference' is a {type(reference).__name__}, expected a string")
    else:
        fmt = shape_of(value)
        if fmt == "other" or KIND_OF_FORMAT[fmt] not in ("chat", "preference", "ranked"):
            keys = ", ".join(sorted(value)) if isinstance(value, dict) else type(value).__name__
            raise RowError(
                f"row has {keys}; expected a prompt: {{prompt}} or a chat row (messages, prompt/completion, alpaca, "
                "sharegpt, preference, ranked)"
            )
        example = to_example(value, fmt, where)
        if example.kind == "chat":
            last = max(i for i, m in enumerate(example.messages) if m["role"] == "assistant")
            messages, reference = example.messages[:last], example.messages[last]["content"]
        else:
            messages, reference = example.messages, None
    if not messages or messages[-1]["role"] != "user":
        raise RowError("the prompt must end with a user turn")
    return Prompt(where, messages, reference)


# --------------------------------------------------------------------------- 2-3. answers and rows


def _prompt_field(messages: list[dict[str, Any]]) -> str | list[dict[str, Any]]:
    """A one-user-turn prompt as a string (as people write it), anything longer as its messages."""
    if len(messages) == 1:
        return messages[0]["content"]
    return messages


def _answer_all(prompts: list[Prompt], answer: Answerer, k: int) -> list[list[Answer]]:
    answers = answer([p.messages for p in prompts], k)
    if len(answers) != len(prompts) or any(len(a) != k for a in answers):
        raise RuntimeError(f"the answerer returned {len(answers)} lists for {len(prompts)} prompts (k={k})")
    return answers


def _reject(prompt: Prompt, reason: str, raw: dict[str, Any]) -> Reject:
    source, _, line = prompt.id.rpartition(":")
    return Reject(source, int(line), reason, STAGE, raw=json.dumps(raw, ensure_ascii=False))


def rank(prompt: Prompt, texts: list[str], scores: list[float]) -> tuple[dict[str, Any] | None, list[Reject]]:
    """The ranked row for these answers and scores, and the answers (or the prompt) it leaves out.

    Identical answers and equal scores are kept once (the first sampled); fewer than two distinct scores
    leave nothing to prefer, and the whole prompt is a reject.
    """
    kept: list[int] = []
    rejects: list[Reject] = []
    seen_text: dict[str, int] = {}
    seen_score: dict[float, int] = {}
    for i, (text, score) in enumerate(zip(texts, scores, strict=True)):
        raw = {"prompt": _prompt_field(prompt.messages), "response": text, "score": score}
        if text.strip() in seen_text:
            rejects.append(_reject(prompt, f"duplicate answer: the same text as answer {seen_text[text.strip()]}", raw))
        elif score in seen_score:
            j = seen_score[score]
            rejects.append(_reject(prompt, f"tied score: {score:g}, as answer {j} (sampled first, kept)", raw))
        else:
            seen_text[text.strip()], seen_score[score] = i, i
            kept.append(i)
    if len(kept) < 2:
        raw = {"prompt": _prompt_field(prompt.messages), "responses": texts, "scores": scores}
        reason = f"no preference: the {len(texts)} answers have {len(kept)} distinct score(s) ({_fmt(scores)})"
        return None, [_reject(prompt, reason, raw)]
    responses = [texts[i] for i in kept]
    kept_scores = [scores[i] for i in kept]
    ranking = sorted(range(len(kept)), key=lambda j: -kept_scores[j])
    row = {
        "prompt": _prompt_field(prompt.messages),
        "responses": responses,
        "ranking": ranking,
        "scores": kept_scores,
        "source": prompt.id,
    }
    return row, rejects


def _fmt(scores: list[float]) -> str:
    return ", ".join(f"{s:g}" for s in scores)


def write_ranked(
    prompts: list[Prompt], answer: Answerer, k: int, scorer: Scorer, out: Path, rejects: list[Reject]
) -> Result:
    """Sample `k` answers per prompt, score them, write `ranked` rows to `out` (rejects beside it)."""
    if k < 2:
        raise UserError(f"--k {k}: ranking needs at least 2 answers per prompt; use --k 4, say")
    rows: list[dict[str, Any]] = []
    rejected = list(rejects)
    for prompt, answers in zip(prompts, _answer_all(prompts, answer, k), strict=True):
        failed = [(i, a.error) for i, a in enumerate(answers) if a.error]
        if failed:
            raw = {"prompt": _prompt_field(prompt.messages), "responses": [a.text for a in answers]}
            i, why = failed[0]
            rejected.append(_reject(prompt, f"answer failed: answer {i}: {why}", raw))
            continue
        texts = [a.text for a in answers]
        try:
            scores = [float(scorer(prompt, t)) for t in texts]
        except ValueError as e:
            raw = {"prompt": _prompt_field(prompt.messages), "responses": texts}
            rejected.append(_reject(prompt, f"not scored: {e}", raw))
            continue
        row, left = rank(prompt, texts, scores)
        rejected += left
        if row is not None:
            rows.append(row)
    return _write(out, rows, rejected, len(prompts) + len(rejects))


def write_for_review(prompts: list[Prompt], answer: Answerer, k: int, out: Path, rejects: list[Reject]) -> Result:
    """Sample `k` answers per prompt for people to rank: rows `{prompt, outputs}` for `tuneloop review create`."""
    rows: list[dict[str, Any]] = []
    rejected = list(rejects)
    for prompt, answers in zip(prompts, _answer_all(prompts, answer, k), strict=True):
        good = [a.text for a in answers if not a.error]
        failed = [a.error for a in answers if a.error]
        if failed or len(set(t.strip() for t in good)) < 2:
            reason = f"answer failed: {failed[0]}" if failed else "no choice: fewer than 2 different answers"
            rejected.append(_reject(prompt, reason, {"prompt": _prompt_field(prompt.messages), "outputs": good}))
            continue
        row = {"id": prompt.id, "prompt": _prompt_field(prompt.messages), "outputs": good}
        if prompt.reference is not None:
            row["reference"] = prompt.reference
        rows.append(row)
    return _write(out, rows, rejected, len(prompts) + len(rejects))


def write_sft(
    prompts: list[Prompt],
    answer: Answerer,
    out: Path,
    rejects: list[Reject],
    fmt: Literal["messages", "prompt_completion"] = "messages",
) -> Result:
    """A teacher's one answer per prompt as SFT rows; a failed or empty answer is a reject at the prompt's line."""
    rows: list[dict[str, Any]] = []
    rejected = list(rejects)
    for prompt, (reply,) in zip(prompts, _answer_all(prompts, answer, 1), strict=True):
        error = reply.error or (None if reply.text.strip() else "the teacher's answer is empty")
        if error:
            raw = {"prompt": _prompt_field(prompt.messages), "answer": reply.text}
            rejected.append(_reject(prompt, f"teacher failed: {error}", raw))
            continue
        if fmt == "prompt_completion":
            row = {"prompt": _prompt_field(prompt.messages), "completion": reply.text}
        else:
            row = {"messages": [*prompt.messages, {"role": "assistant", "content": reply.text}]}
        rows.append({**row, "source": prompt.id})
    return _write(out, rows, rejected, len(prompts) + len(rejects))


def rejects_path(out: Path) -> Path:
    """Where the rejects of `out` go: ranked.jsonl -> ranked.rejects.jsonl."""
    return out.with_name(out.name.removesuffix(".jsonl") + ".rejects.jsonl")


def _write(out: Path, rows: list[dict[str, Any]], rejected: list[Reject], read: int) -> Result:
    """Write both files whole, each through a temporary file: an interrupted run leaves no half file."""
    import os

    out.parent.mkdir(parents=True, exist_ok=True)
    bad = rejects_path(out)
    for path, items in ((out, rows), (bad, [r.to_json() for r in rejected])):
        tmp = path.with_name(path.name + ".tmp")
        with tmp.open("w", encoding="utf-8") as f:
            for item in items:
                f.write(json.dumps(item, ensure_ascii=False) + "\n")
        os.replace(tmp, path)
    return Result(out, bad, read, len(rows), rejected)
