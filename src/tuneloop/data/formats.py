"""Read records from JSONL / JSON / CSV / Parquet files and turn each into one canonical `Example`.

Every record either becomes an Example or a `Reject` carrying its `file:line`, the reason and the
record exactly as it was. Nothing is dropped silently.
"""

from __future__ import annotations

import base64
import csv
import json
import math
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tuneloop.errors import UserError

SUFFIXES = (".jsonl", ".json", ".csv", ".parquet")
ROLES = ("system", "user", "assistant")
SHAREGPT_ROLES = {
    "system": "system",
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
}

# Each format: the keys that identify it, in detection priority (most specific first).
FORMAT_KEYS: dict[str, tuple[str, ...]] = {
    "messages": ("messages",),
    "sharegpt": ("conversations",),
    "ranked": ("prompt", "responses", "ranking"),
    "preference": ("prompt", "chosen", "rejected"),
    "unpaired": ("prompt", "completion", "label"),  # only with a boolean label: see `shape_of`
    "alpaca": ("instruction", "output"),
    "prompt_completion": ("prompt", "completion"),
    "classification": ("text", "label"),
    "text": ("text",),
}
KIND_OF_FORMAT = {
    "messages": "chat",
    "sharegpt": "chat",
    "alpaca": "chat",
    "prompt_completion": "chat",
    "text": "text",
    "classification": "classification",
    "preference": "preference",
    "ranked": "ranked",
    "unpaired": "unpaired",
}
DETECT_SAMPLE = 1000  # rows read to detect a file's format
MAJORITY = 0.5  # the winning shape must cover more than this share of the sample


class RowError(ValueError):
    """A record that cannot become an Example; the message is the reject reason.

    `systemic` marks a reason no record can fix, such as a tokenizer without a chat template: it is
    the model's problem, not the row's, and `data prepare` stops at it once instead of rejecting every row.
    """

    def __init__(self, reason: str, systemic: bool = False) -> None:
        super().__init__(reason)
        self.systemic = systemic

    def __reduce__(self) -> tuple:
        return (RowError, (str(self), self.systemic))  # keep `systemic` across worker processes


@dataclass
class Example:
    """The one example type inside tuneloop, whatever the input format.

    kind "chat": `messages` is the whole conversation; `plain` marks a prompt/completion record whose
    prompt and completion were plain strings (rendered as `prompt + completion` on a model without a
    chat template). "text": `text`, all of it trained.
    "classification": `text` + `label`. "preference": `messages` is the prompt, plus `chosen` /
    `rejected`. "ranked": `messages` is the prompt, plus `responses` ordered by `ranking`.
    "unpaired": `messages` is the prompt, plus one `completion` and whether it is `desirable` (a
    thumbs up or down: what KTO trains on).
    """

    id: str
    kind: str
    messages: list[dict[str, Any]] = field(default_factory=list)
    text: str | None = None
    label: str | None = None
    chosen: str | None = None
    rejected: str | None = None
    responses: list[str] | None = None
    ranking: list[int] | None = None
    plain: bool | None = None  # True for a prompt/completion record of two strings; None otherwise
    completion: str | None = None  # unpaired: the one answer
    desirable: bool | None = None  # unpaired: its label

    def to_json(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if v is not None and v != []}

    @classmethod
    def from_json(cls, row: dict[str, Any]) -> Example:
        return cls(**row)

    def map_text(self, fn: Callable[[str], str]) -> bool:
        """Apply `fn` to every natural-language field in place; return whether anything changed."""
        changed = False

        def apply(value: str) -> str:
            nonlocal changed
            new = fn(value)
            changed |= new != value
            return new

        for m in self.messages:
            m["content"] = apply(m["content"])
        for name in ("text", "chosen", "rejected", "completion"):
            value = getattr(self, name)
            if value is not None:
                setattr(self, name, apply(value))
        if self.responses is not None:
            self.responses = [apply(r) for r in self.responses]
        return changed

    def dedup_text(self) -> str:
        """The text that identifies this example for duplicate detection."""
        parts = [f"{m['role']}: {m['content']}" for m in self.messages]
        parts += [v for v in (self.text, self.chosen, self.rejected, self.completion) if v is not None]
        parts += self.responses or []
        if self.desirable is not None:  # the same answer rated up and down are two records, not duplicates
            parts.append(f"label: {self.desirable}")
        return "\n".join(parts)


@dataclass
class Reject:
    """A record that left the pipeline: where it was, why, and what it was."""

    source: str
    line: int
    reason: str
    stage: str = "validate"
    raw: str | None = None
    raw_base64: str | None = None  # for bytes that are not valid UTF-8

    @property
    def where(self) -> str:
        return f"{self.source}:{self.line}"

    def to_json(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if v is not None}


@dataclass
class RawRow:
    source: str
    line: int
    raw: str | bytes
    value: Any = None
    error: str | None = None
    parsed: bool = True  # False: a JSONL line not parsed yet; `parse_json_line` does it (in a worker)


# --------------------------------------------------------------------------- reading


def list_files(paths: list[Path]) -> list[Path]:
    """Expand folders into their data files (sorted, recursive); refuse unknown file types."""
    files: list[Path] = []
    for path in paths:
        if path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in SUFFIXES)
            if not found:
                raise UserError(f"folder {path} has no {', '.join(SUFFIXES)} files")
            files += found
        elif path.is_file():
            if path.suffix.lower() not in SUFFIXES:
                raise UserError(f"{path}: unsupported file type; use one of {', '.join(SUFFIXES)}")
            files.append(path)
        else:
            raise UserError(f"data file {path} does not exist")
    return files


def read_rows(path: Path, name: str, parse: bool = True) -> Iterator[RawRow]:
    """Yield every record of a file with its line number, streaming where the format allows.

    With `parse=False`, JSONL lines come back as text (`parsed=False`) for `parse_json_line` to
    decode later, so the decoding can happen in worker processes rather than the reading one.
    """
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        yield from _read_jsonl(path, name, parse)
    elif suffix == ".json":
        yield from _read_json(path, name)
    elif suffix == ".csv":
        yield from _read_csv(path, name)
    elif suffix == ".parquet":
        yield from _read_parquet(path, name)
    else:
        raise UserError(f"{path}: unsupported file type")


def _read_jsonl(path: Path, name: str, parse: bool) -> Iterator[RawRow]:
    with path.open("rb") as f:
        for number, raw in enumerate(f, 1):
            if number == 1 and raw.startswith(b"\xef\xbb\xbf"):
                raw = raw[3:]
            stripped = raw.strip()
            if not stripped:
                continue
            try:
                text = stripped.decode("utf-8")
            except UnicodeDecodeError as e:
                yield RawRow(name, number, stripped, error=f"invalid UTF-8 at byte {e.start}")
                continue
            row = RawRow(name, number, text, parsed=False)
            yield parse_json_line(row) if parse else row


def parse_json_line(row: RawRow) -> RawRow:
    """Decode a row read with `parse=False`: sets `value`, or `error` for invalid JSON."""
    if not row.parsed:
        row.parsed = True
        try:
            row.value = json.loads(row.raw)
        except json.JSONDecodeError as e:
            row.error = f"invalid JSON: {e.msg} at column {e.colno}"
    return row


def _read_json(path: Path, name: str) -> Iterator[RawRow]:
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise UserError(f"{path}: invalid UTF-8 at byte {e.start}; fix the file or export it as JSONL") from None
    decoder = json.JSONDecoder()
    pos = _skip_ws(text, 0)
    if pos >= len(text) or text[pos] != "[":
        raise UserError(f"{path}: expected a JSON array of records; for one record per line, use .jsonl")
    pos, line = pos + 1, 1 + text.count("\n", 0, pos + 1)
    while True:
        start = _skip_ws(text, pos)
        line += text.count("\n", pos, start)
        if start < len(text) and text[start] == "]":
            return
        try:
            value, end = decoder.raw_decode(text, start)
        except json.JSONDecodeError as e:
            raise UserError(f"{path}:{e.lineno}: invalid JSON: {e.msg}; the array cannot be read past it") from None
        yield RawRow(name, line, text[start:end], value=value)
        line += text.count("\n", start, end)
        pos = _skip_ws(text, end)
        line += text.count("\n", end, pos)
        if pos < len(text) and text[pos] == ",":
            pos += 1
        elif pos < len(text) and text[pos] == "]":
            return
        else:
            raise UserError(f"{path}:{line}: invalid JSON: expected ',' or ']' after a record")


def _skip_ws(text: str, pos: int) -> int:
    while pos < len(text) and text[pos] in " \t\r\n":
        pos += 1
    return pos


# Columns that hold lists; in a CSV they arrive as JSON strings.
_LIST_FIELDS = (
    "messages",
    "conversations",
    "responses",
    "ranking",
    "prompt",
    "chosen",
    "rejected",
    "completion",
)


def _read_csv(path: Path, name: str) -> Iterator[RawRow]:
    with path.open(encoding="utf-8-sig", errors="surrogateescape", newline="") as f:
        reader = csv.DictReader(f)
        header = reader.fieldnames or []
        previous = reader.line_num  # quoted cells may span lines, so track where each row starts
        for row in reader:
            start, previous = previous + 1, reader.line_num
            cells = [v for v in row.values() if isinstance(v, str)] + list(row.get(None) or [])
            raw = ",".join(cells)
            if None in row or None in row.values():
                yield RawRow(name, start, raw, error=f"has {len(cells)} cells, the header has {len(header)}")
                continue
            if any(_has_surrogate(v) for v in cells):
                yield RawRow(name, start, raw.encode("utf-8", "surrogateescape"), error="invalid UTF-8")
                continue
            value: dict[str, Any] = dict(row)
            error = None
            for key in _LIST_FIELDS:
                cell = value.get(key)
                if isinstance(cell, str) and cell.lstrip().startswith("["):
                    try:
                        value[key] = json.loads(cell)
                    except json.JSONDecodeError as e:
                        error = f"column {key}: invalid JSON: {e.msg}"
                        break
            yield RawRow(name, start, raw, value=None if error else value, error=error)


def _has_surrogate(text: str) -> bool:
    return any("\udc80" <= ch <= "\udcff" for ch in text)


def _read_parquet(path: Path, name: str) -> Iterator[RawRow]:
    import pyarrow.parquet as pq

    number = 0
    for batch in pq.ParquetFile(path).iter_batches(batch_size=2048):
        for row in batch.to_pylist():
            number += 1
            yield RawRow(name, number, json.dumps(row, ensure_ascii=False, default=str), value=row)


# --------------------------------------------------------------------------- detection


def shape_of(value: Any) -> str:
    """The format a single record looks like, or 'other' (the report shows the keys)."""
    if not isinstance(value, dict):
        return "other"
    for fmt, keys in FORMAT_KEYS.items():
        if all(k in value for k in keys):
            if fmt == "unpaired" and not isinstance(value["label"], bool):
                continue  # a prompt/completion record that carries a label of its own (a category, say)
            return fmt
    return "other"


def detect_format(rows: list[RawRow], source: str) -> str:
    """The format that holds a clear majority of the sampled rows, or a UserError with the counts."""
    shapes = Counter(shape_of(r.value) for r in rows if r.error is None)
    if not shapes:
        if rows:
            first = rows[0]
            raise UserError(
                f"{source}: none of the first {len(rows)} records could be read "
                f"(line {first.line}: {first.error}); is this a {Path(source).suffix} file?"
            )
        raise UserError(f"{source}: the file has no records")
    fmt, count = shapes.most_common(1)[0]
    total = sum(shapes.values())
    if fmt == "other" or count <= MAJORITY * total:
        counts = ", ".join(f"{n} {s}" for s, n in shapes.most_common())
        raise UserError(
            f"{source}: no format holds a clear majority of the first {total} records ({counts}); "
            "make the records uniform, or set data.format"
        )
    return fmt


# --------------------------------------------------------------------------- conversion


def to_example(value: Any, fmt: str, example_id: str, labels: frozenset[str] | None = None) -> Example:
    """Convert one parsed record of format `fmt` into an Example, or raise RowError with the reason."""
    if not isinstance(value, dict):
        raise RowError(f"record is a {type(value).__name__}, expected an object with {_keys(fmt)}")
    missing = [k for k in FORMAT_KEYS[fmt] if k not in value]
    if missing:
        have = "{" + ", ".join(sorted(value)) + "}"
        raise RowError(f"row has keys {have}, expected {_keys(fmt)}")
    kind = KIND_OF_FORMAT[fmt]
    if fmt == "messages":
        return Example(example_id, kind, messages=_check_chat(_messages(value["messages"], "messages")))
    if fmt == "sharegpt":
        return Example(example_id, kind, messages=_check_chat(_sharegpt(value["conversations"])))
    if fmt == "alpaca":
        instruction = _text(value, "instruction")
        extra = value.get("input")
        if extra is not None and not isinstance(extra, str):
            raise RowError(f"field 'input' is a {type(extra).__name__}, expected a string")
        user = instruction + (f"\n\n{extra.strip()}" if extra and extra.strip() else "")
        msgs = [{"role": "user", "content": user}, {"role": "assistant", "content": _text(value, "output")}]
        if value.get("system"):
            msgs.insert(0, {"role": "system", "content": _text(value, "system")})
        return Example(example_id, kind, messages=msgs)
    if fmt == "prompt_completion":
        prompt = _prompt(value["prompt"])
        completion = value["completion"]
        if isinstance(completion, list):
            completion = _messages(completion, "completion")
        else:
            completion = [{"role": "assistant", "content": _text(value, "completion")}]
        plain = True if isinstance(value["prompt"], str) and isinstance(value["completion"], str) else None
        return Example(example_id, kind, messages=_check_chat(prompt + completion), plain=plain)
    if fmt == "text":
        return Example(example_id, kind, text=_text(value, "text"))
    if fmt == "classification":
        label = value["label"]
        if isinstance(label, bool) or not isinstance(label, (str, int)):
            raise RowError(f"label is a {type(label).__name__}, expected a string or integer")
        label = str(label).strip()
        if not label:
            raise RowError("field 'label' is empty")
        if labels is not None and label not in labels:
            raise RowError(f"unknown label '{label}'; known labels: {', '.join(sorted(labels))}")
        return Example(example_id, kind, text=_text(value, "text"), label=label)
    if fmt == "preference":
        example = Example(
            example_id,
            kind,
            messages=_preference_prompt(value["prompt"]),
            chosen=_answer(value, "chosen"),
            rejected=_answer(value, "rejected"),
        )
        check_distinct(example)
        return example
    if fmt == "unpaired":
        label = value["label"]
        if not isinstance(label, bool):
            raise RowError(
                f"field 'label' is {label!r}, expected true (a desirable answer, thumbs up) or false (undesirable, "
                "thumbs down) as a JSON boolean"
            )
        prompt = _preference_prompt(value["prompt"])
        return Example(example_id, kind, messages=prompt, completion=_answer(value, "completion"), desirable=label)
    if fmt == "ranked":
        prompt = _preference_prompt(value["prompt"])
        responses = value["responses"]
        if not isinstance(responses, list) or len(responses) < 2:
            raise RowError("field 'responses' must be a list of at least 2 strings")
        texts = [_string(r, f"responses[{i}]") for i, r in enumerate(responses)]
        example = Example(example_id, kind, messages=prompt, responses=texts, ranking=_ranking(value["ranking"], texts))
        check_distinct(example)
        return example
    raise RowError(f"unknown format {fmt}")


def _preference_prompt(prompt: Any) -> list[dict[str, Any]]:
    messages = _prompt(prompt)
    if messages[-1]["role"] != "user":
        raise RowError("the prompt must end with a user turn: the answers being compared or rated reply to it")
    return messages


def _ranking(ranking: Any, texts: list[str]) -> list[int]:
    """Every response index exactly once, best first: a tie or a missing entry leaves the order undefined."""
    n = len(texts)
    if not isinstance(ranking, list) or not all(isinstance(i, int) and not isinstance(i, bool) for i in ranking):
        raise RowError(
            f"field 'ranking' must be a list of response indexes 0..{n - 1}, best first (ties are not allowed); "
            f"got {ranking!r}"
        )
    repeated = sorted({i for i in ranking if ranking.count(i) > 1})
    if repeated:
        raise RowError(
            f"field 'ranking' lists response {', '.join(map(str, repeated))} more than once; a ranking orders every "
            "response once, best first, without ties"
        )
    outside = [i for i in ranking if not 0 <= i < n]
    if outside:
        raise RowError(f"field 'ranking' names response {outside[0]}, but there are {n} responses (0..{n - 1})")
    missing = [i for i in range(n) if i not in ranking]
    if missing:
        raise RowError(
            f"field 'ranking' leaves out response {', '.join(map(str, missing))}; rank every response, best first"
        )
    return ranking


def _same(a: str, b: str) -> bool:
    return " ".join(a.split()) == " ".join(b.split())


def check_distinct(example: Example) -> None:
    """A preference pair, or a ranking, must compare different answers: the same text on both sides prefers nothing.

    Called when a record is read and again after cleaning and redaction, which can make two answers equal.
    """
    if example.kind == "preference" and _same(example.chosen or "", example.rejected or ""):
        raise RowError("chosen and rejected are the same answer, so the pair prefers nothing; fix one side or drop it")
    if example.kind == "ranked":
        texts = example.responses or []
        for i, a in enumerate(texts):
            for j in range(i + 1, len(texts)):
                if _same(a, texts[j]):
                    raise RowError(
                        f"responses[{i}] and responses[{j}] are the same answer ranked apart, which is a tie; "
                        "keep one of them"
                    )


def _keys(fmt: str) -> str:
    return ", ".join(FORMAT_KEYS[fmt])


def _text(value: dict, key: str) -> str:
    return _string(value.get(key), f"field '{key}'")


def _string(text: Any, what: str) -> str:
    """A present, non-blank string, or a RowError saying which of those it is not."""
    if text is None:
        raise RowError(f"{what} is missing")
    if not isinstance(text, str):
        raise RowError(f"{what} is a {type(text).__name__}, expected a string")
    if not text.strip():
        raise RowError(f"{what} is empty")
    return text


def _answer(value: dict, key: str) -> str:
    """A preference answer: a string, or a one-message assistant list as TRL writes it."""
    answer = value[key]
    if isinstance(answer, list) and len(answer) == 1 and isinstance(answer[0], dict):
        answer = answer[0].get("content")
    return _text({key: answer}, key)


def _prompt(prompt: Any) -> list[dict[str, Any]]:
    if isinstance(prompt, list):
        return _messages(prompt, "prompt")
    return [{"role": "user", "content": _text({"prompt": prompt}, "prompt")}]


def _messages(messages: Any, key: str) -> list[dict[str, Any]]:
    if not isinstance(messages, list) or not messages:
        raise RowError(f"field '{key}' must be a non-empty list of {{role, content}} objects")
    out = []
    for i, m in enumerate(messages, 1):
        if not isinstance(m, dict):
            raise RowError(f"{key}[{i}] is a {type(m).__name__}, expected an object with role and content")
        role = m.get("role")
        if role not in ROLES:
            raise RowError(f"{key}[{i}] has role {role!r}; expected one of {', '.join(ROLES)}")
        content = _string(m.get("content"), f"{key}[{i}] ({role}) content")
        msg: dict[str, Any] = {"role": role, "content": content}
        if "weight" in m:
            weight = m["weight"]
            if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not math.isfinite(weight):
                raise RowError(f"{key}[{i}] weight {weight!r} is not a number")
            if weight < 0:
                raise RowError(f"{key}[{i}] weight {weight} is negative")
            if role != "assistant":
                raise RowError(f"{key}[{i}] has a weight but only assistant messages are trained")
            msg["weight"] = float(weight)
        out.append(msg)
    return out


def _sharegpt(turns: Any) -> list[dict[str, Any]]:
    if not isinstance(turns, list) or not turns:
        raise RowError("field 'conversations' must be a non-empty list of {from, value} objects")
    converted = []
    for i, t in enumerate(turns, 1):
        if not isinstance(t, dict) or "from" not in t or "value" not in t:
            raise RowError(f"conversations[{i}] must be an object with 'from' and 'value'")
        role = SHAREGPT_ROLES.get(str(t["from"]).lower())
        if role is None:
            raise RowError(f"conversations[{i}] is from {t['from']!r}; expected one of {', '.join(SHAREGPT_ROLES)}")
        converted.append({"role": role, "content": t["value"]})
    return _messages(converted, "conversations")


def _check_chat(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Roles must be: optional system, then user/assistant alternating, ending with the assistant."""
    turns = messages[1:] if messages[0]["role"] == "system" else messages
    for i, m in enumerate(turns):
        expected = "user" if i % 2 == 0 else "assistant"
        if m["role"] != expected:
            position = i + 1 + (len(messages) - len(turns))
            raise RowError(f"message {position} is from {m['role']}, expected {expected} (roles must alternate)")
    if not any(m["role"] == "assistant" for m in turns):
        raise RowError("no assistant turn: nothing to train on")
    if turns[-1]["role"] != "assistant":
        raise RowError("the last message is from the user; the conversation must end with the assistant")
    return messages


def reject_from(row: RawRow, reason: str, stage: str = "validate") -> Reject:
    """A Reject that keeps the original record exactly as it was read."""
    if isinstance(row.raw, bytes):
        return Reject(row.source, row.line, reason, stage, raw_base64=base64.b64encode(row.raw).decode())
    return Reject(row.source, row.line, reason, stage, raw=row.raw)
