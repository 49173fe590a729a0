"""The forgetting check: did fine-tuning break what the model knew before?

Both the base and the tuned model are measured on a general set that has nothing to do with the
task: perplexity on short passages of ordinary English, and accuracy on four-way questions about
the meaning of common words. Fine-tuning that overwrites general ability shows up as a higher
perplexity or a lower accuracy; `forgetting_check` flags either beyond a threshold.

The default set ships in `general/` (built from WordNet by scripts/make_general_set.py, see its
README); a user may point at a folder of their own with the same two files:

- `text.jsonl`: one `{"id", "text"}` per line;
- `questions.jsonl`: one `{"id", "question", "choices": [strings], "answer": index}` per line.

Both measures reduce to one operation, the log-likelihood of a continuation given a context,
computed in length-sorted, right-padded batches with an attention mask, so padding never changes
a number. Per-example values are returned too, so the caller can bootstrap confidence intervals.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tuneloop.errors import UserError

DEFAULT_GENERAL = Path(__file__).resolve().parent / "general"
TEXT_FILE = "text.jsonl"
QUESTIONS_FILE = "questions.jsonl"


# --------------------------------------------------------------------------- the general set


@dataclass(frozen=True)
class Question:
    """A multiple-choice question; `answer` is the index of the right choice."""

    id: str
    question: str
    choices: tuple[str, ...]
    answer: int


@dataclass(frozen=True)
class GeneralSet:
    """Passages for perplexity and questions for accuracy, with the folder they came from."""

    text_ids: list[str]
    texts: list[str]
    questions: list[Question]
    folder: Path

    def describe(self) -> str:
        """One line for progress output, e.g. "100 texts and 80 questions (the default WordNet set)"."""
        where = "the default WordNet set" if self.folder == DEFAULT_GENERAL else str(self.folder)
        return f"{len(self.texts)} texts and {len(self.questions)} questions ({where})"


def load_general_set(path: Path | None = None) -> GeneralSet:
    """Load `text.jsonl` and `questions.jsonl` from `path` (default: the shipped WordNet set).

    Every problem is reported at once, each at its `file:line`, in one UserError.
    """
    folder = Path(path).expanduser() if path is not None else DEFAULT_GENERAL
    if not folder.is_dir():
        raise UserError(f"general set folder {folder} does not exist (it needs {TEXT_FILE} and {QUESTIONS_FILE})")
    problems: list[str] = []
    text_rows = _read_jsonl(folder / TEXT_FILE, problems)
    question_rows = _read_jsonl(folder / QUESTIONS_FILE, problems)

    text_ids, texts = [], []
    for where, row in text_rows:
        error = _field_error(row, {"id": str, "text": str})
        if error:
            problems.append(f"{where}: {error}")
            continue
        text_ids.append(row["id"])
        texts.append(row["text"])

    questions = []
    for where, row in question_rows:
        error = _question_error(row)
        if error:
            problems.append(f"{where}: {error}")
            continue
        questions.append(Question(row["id"], row["question"], tuple(row["choices"]), row["answer"]))

    for rows in (text_rows, question_rows):
        seen: set[str] = set()
        for where, row in rows:
            row_id = row.get("id") if isinstance(row, dict) else None
            if isinstance(row_id, str) and row_id in seen:
                problems.append(f"{where}: duplicate id {row_id!r}")
            seen.add(row_id)
    if problems:
        shown = "\n".join(f"  {p}" for p in problems[:20])
        more = f"\n  ... and {len(problems) - 20} more" if len(problems) > 20 else ""
        raise UserError(f"general set {folder}: {len(problems)} problem(s):\n{shown}{more}")
    return GeneralSet(text_ids, texts, questions, folder)


def _read_jsonl(path: Path, problems: list[str]) -> list[tuple[str, Any]]:
    """(file:line, parsed record) for every non-blank line; unreadable lines become problems."""
    if not path.is_file():
        problems.append(f"{path}: missing")
        return []
    rows = []
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as e:
        problems.append(f"{path}: invalid UTF-8 at byte {e.start}")
        return []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        try:
            rows.append((where, json.loads(line)))
        except json.JSONDecodeError as e:
            problems.append(f"{where}: invalid JSON: {e.msg}")
    if not any(line.strip() for line in lines):
        problems.append(f"{path}: the file has no records")
    return rows


def _question_error(row: Any) -> str | None:
    """Why `row` is not a valid multiple-choice question, or None."""
    error = _field_error(row, {"id": str, "question": str, "choices": list, "answer": int})
    if error:
        return error
    choices = row["choices"]
    if len(choices) < 2 or not all(isinstance(c, str) and c.strip() for c in choices):
        return "'choices' must be a list of at least 2 non-empty strings"
    if not 0 <= row["answer"] < len(choices):
        return f"'answer' is {row['answer']}, not the index of one of the {len(choices)} choices"
    if len(set(choices)) != len(choices):
        return "two choices are the same text, so the question has no single right answer"
    return None


_TYPE_NAMES = {str: "a string", list: "a list", int: "an integer"}


def _field_error(row: Any, fields: dict[str, type]) -> str | None:
    """Why `row` is not an object with these fields of these types (non-empty strings), or None."""
    if not isinstance(row, dict):
        return f"expected a JSON object with {', '.join(fields)}"
    for name, kind in fields.items():
        value = row.get(name)
        if value is None:
            return f"missing '{name}'"
        # bool is an int in Python, but `"answer": true` is a mistake, not index 1.
        if not isinstance(value, kind) or isinstance(value, bool):
            return f"'{name}' must be {_TYPE_NAMES[kind]}, got {type(value).__name__}"
        if kind is str and not value.strip():
            return f"'{name}' is empty"
    return None


# --------------------------------------------------------------------------- scoring


def _continuation_logprobs(
    model: Any, pairs: Sequence[tuple[list[int], list[int]]], batch_size: int, pad_id: int
) -> list[tuple[float, int]]:
    """(sum of log-probabilities, token count) of each continuation given its context.

    Sequences are sorted longest first (the first batch shows at once whether memory suffices, and
    similar lengths waste little padding), right-padded, and masked. With right padding the real
    tokens keep positions 0..n-1, exactly as when run alone, so batching does not change a result.
    """
    import torch

    device = _device(model)
    order = sorted(range(len(pairs)), key=lambda i: len(pairs[i][0]) + len(pairs[i][1]), reverse=True)
    results: list[tuple[float, int]] = [(0.0, 0)] * len(pairs)
    for start in range(0, len(order), batch_size):
        batch = order[start : start + batch_size]
        seqs = [pairs[i][0] + pairs[i][1] for i in batch]
        width = max(len(s) for s in seqs)
        ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(seqs), width), dtype=torch.long)
        for row, seq in enumerate(seqs):
            ids[row, : len(seq)] = torch.tensor(seq)
            mask[row, : len(seq)] = 1
        logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits
        for row, i in enumerate(batch):
            context, continuation = pairs[i]
            # Position t predicts token t + 1, so the continuation is predicted from len(context) - 1 on.
            first = len(context) - 1
            predicted = logits[row, first : first + len(continuation)].float()
            targets = torch.tensor(continuation, device=predicted.device)
            logprobs = torch.log_softmax(predicted, dim=-1).gather(1, targets[:, None])
            results[i] = (float(logprobs.sum()), len(continuation))
    return results


def _device(model: Any) -> Any:
    device = getattr(model, "device", None)
    return device if device is not None else next(model.parameters()).device


class _Evaluating:
    """Eval mode and no autograd for the duration, then the model's previous mode back.

    The check may run between training steps; leaving a model in eval mode would silently turn
    off its dropout for the rest of training.
    """

    def __init__(self, model: Any) -> None:
        import torch

        self.model = model
        self.was_training = bool(getattr(model, "training", False))
        self.no_grad = torch.inference_mode()

    def __enter__(self) -> None:
        self.model.eval()
        self.no_grad.__enter__()

    def __exit__(self, *exc: object) -> None:
        self.no_grad.__exit__(*exc)
        if self.was_training:
            self.model.train()


def _pad_id(tokenizer: Any) -> int:
    """Any id will do: padded positions are masked out and never scored."""
    for candidate in (tokenizer.pad_token_id, tokenizer.eos_token_id):
        if candidate is not None:
            return int(candidate)
    return 0


def _encode_text(tokenizer: Any, text: str, max_length: int | None = None) -> list[int]:
    """Token ids of a passage with exactly one BOS in front when the tokenizer defines one.

    Many tokenizers define a BOS but do not add it (SmolLM2's is `<|im_start|>`); a model's first
    position behaves differently with and without it, so one rule for every text keeps the numbers
    comparable. Base and tuned share the tokenizer, so the rule is the same on both sides.
    """
    ids = list(tokenizer(text).input_ids)
    bos = tokenizer.bos_token_id
    if bos is not None and (not ids or ids[0] != bos):
        ids = [bos, *ids]
    return ids if max_length is None else ids[:max_length]


def text_nll(
    model: Any, tokenizer: Any, texts: Sequence[str], batch_size: int = 8, max_length: int = 512
) -> tuple[np.ndarray, np.ndarray]:
    """Per-text total negative log-likelihood (nats) and number of predicted tokens.

    The first text token is context, not predicted: predicting it from BOS alone is a guess about
    how the text starts, which says more about the BOS token's training than about the text.
    """
    pairs = []
    for i, text in enumerate(texts):
        ids = _encode_text(tokenizer, text, max_length)
        has_bos = tokenizer.bos_token_id is not None
        split = 2 if has_bos else 1  # context: [BOS] + the first text token
        if len(ids) <= split:
            raise UserError(f"text {i} ({text[:40]!r}) has fewer than 2 tokens, so no token of it can be predicted")
        pairs.append((ids[:split], ids[split:]))
    with _Evaluating(model):
        scored = _continuation_logprobs(model, pairs, batch_size, _pad_id(tokenizer))
    return np.array([-s for s, _ in scored], dtype=np.float64), np.array([n for _, n in scored], dtype=np.int64)


def perplexity(
    model: Any, tokenizer: Any, texts: list[str], batch_size: int = 8, max_length: int = 512
) -> tuple[float, np.ndarray]:
    """Corpus perplexity of `texts`, exp(total NLL / total predicted tokens), and each text's mean NLL.

    Texts longer than `max_length` tokens are cut to their first `max_length` tokens. Padding is not
    counted and the first token of each text is context only (see `text_nll`).
    """
    nll, tokens = text_nll(model, tokenizer, texts, batch_size, max_length)
    return math.exp(nll.sum() / tokens.sum()), nll / tokens


def _continuation_ids(tokenizer: Any, prompt: str, context: list[int], continuation: str) -> list[int]:
    """Tokens of `continuation` as they come out when the whole text is tokenized.

    Tokenizing the continuation on its own can differ at the seam (SentencePiece turns a leading
    space into an extra token); the whole text's tokens are used whenever they start with the
    context's, so every choice is scored after the very same context tokens.
    """
    whole = _encode_text(tokenizer, prompt + continuation)
    if whole[: len(context)] == context and len(whole) > len(context):
        return whole[len(context) :]
    return list(tokenizer(continuation, add_special_tokens=False).input_ids)


def choice_prompt(question: str) -> str:
    """The context each choice is scored after."""
    return f"Question: {question}\nAnswer:"


def choice_accuracy(
    model: Any, tokenizer: Any, questions: Sequence[Question], batch_size: int = 8
) -> tuple[float, np.ndarray]:
    """Accuracy on multiple-choice questions and each question's 0/1 result.

    Each choice is scored by the model's mean log-probability per token of the choice text after
    the question (`choice_prompt`); the best-scoring choice is the model's answer. The mean rather
    than the sum keeps longer choices from losing just for being longer.

    Why not the other standard way, listing lettered choices and comparing the letters' logits:
    small models cannot map letters to listed choices, so they score chance whatever they know, and
    the check would be blind. SmolLM2-135M-Instruct on the default set scores 25% with letters
    (through its chat template) and 54% with choice text. The chat template with the choice as the
    assistant's reply scores 62%, but its system prompt makes every one of the four sequences per
    question longer (1.7x the time) and not every model has a template; this plain prompt works
    for any causal LM and is the usual cloze form (as for ARC and MMLU in lm-evaluation-harness).
    """
    pairs, owner = [], []
    for q_index, q in enumerate(questions):
        prompt = choice_prompt(q.question)
        context = _encode_text(tokenizer, prompt)
        for choice in q.choices:
            pairs.append((context, _continuation_ids(tokenizer, prompt, context, " " + choice)))
            owner.append(q_index)
    with _Evaluating(model):
        scored = _continuation_logprobs(model, pairs, batch_size, _pad_id(tokenizer))
    best: list[list[float]] = [[] for _ in questions]
    for q_index, (logprob, n) in zip(owner, scored, strict=True):
        best[q_index].append(logprob / n)
    correct = np.array([int(np.argmax(s) == q.answer) for s, q in zip(best, questions, strict=True)], dtype=np.int64)
    return (float(correct.mean()) if len(correct) else 0.0), correct


# --------------------------------------------------------------------------- the check


def measure(model: Any, tokenizer: Any, general: GeneralSet, batch_size: int = 8) -> dict[str, Any]:
    """Both measures for one model, JSON-serialisable: perplexity and accuracy with per-example values.

    `text_nll` is each text's mean NLL and `text_tokens` its predicted-token count, so a bootstrap
    resample's perplexity is exp(sum(nll * tokens) / sum(tokens)) over the drawn texts.
    """
    started = time.perf_counter()
    nll, tokens = text_nll(model, tokenizer, general.texts, batch_size)
    accuracy, correct = choice_accuracy(model, tokenizer, general.questions, batch_size)
    return {
        "perplexity": math.exp(nll.sum() / tokens.sum()),
        "accuracy": accuracy,
        "text_nll": (nll / tokens).tolist(),
        "text_tokens": tokens.tolist(),
        "question_correct": correct.tolist(),
        "seconds": round(time.perf_counter() - started, 2),
    }


def compare_general(
    base: dict[str, Any],
    tuned: dict[str, Any],
    threshold: float = 0.05,
    resamples: int = 1000,
    seed: int = 0,
    confidence: float = 0.95,
) -> dict[str, dict[str, Any]]:
    """Compare two `measure` results: the change in each measure, its paired-bootstrap interval, and
    whether it regressed — perplexity up by more than `threshold` (relative), or accuracy down by more
    than `threshold` (absolute, in accuracy points: 0.05 is five points)."""
    from tuneloop.evaluate.compare import MeanScores, bootstrap_indices, compare

    def scores(m: dict[str, Any]) -> dict[str, MeanScores]:
        return {
            "general_perplexity": MeanScores(
                "general_perplexity",
                np.asarray(m["text_nll"]),
                higher_is_better=False,
                weights=np.asarray(m["text_tokens"], dtype=float),
                exp_mean=True,
            ),
            "general_accuracy": MeanScores("general_accuracy", np.asarray(m["question_correct"], dtype=float)),
        }

    b, t = scores(base), scores(tuned)
    out = {}
    for name in b:
        indices = bootstrap_indices(len(b[name].per_example), resamples, seed)
        c = compare(b[name], t[name], indices, confidence)
        if name == "general_perplexity":
            change = c.candidate / c.baseline - 1
            regressed, rule = change > threshold, f"perplexity up more than {threshold:.0%}"
        else:
            change = c.candidate - c.baseline
            regressed, rule = -change > threshold, f"accuracy down more than {threshold:.2f}"
        out[name] = {**c.to_json(), "change": change, "regressed": regressed, "rule": rule}
    return out


def forgetting_check(
    base: tuple[Any, Any], tuned: tuple[Any, Any], general: GeneralSet, threshold: float = 0.05, batch_size: int = 8
) -> dict[str, Any]:
    """Measure base and tuned `(model, tokenizer)` on the general set and compare them (`compare_general`)."""
    started = time.perf_counter()
    verdicts = compare_general(measure(*base, general, batch_size), measure(*tuned, general, batch_size), threshold)
    return {
        **verdicts,
        "regressed": any(v["regressed"] for v in verdicts.values()),
        "seconds": round(time.perf_counter() - started, 2),
    }
