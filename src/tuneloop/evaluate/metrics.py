"""Task metrics for `tuneloop eval`: thin wrappers over the reference libraries.

Every metric is computed by the library its users know it from — rouge-score, sacrebleu, scikit-learn,
textstat, jsonschema — so our numbers match theirs. What this module adds is one shape for all of them,
`MetricScores`: the corpus value, one score per example, and `resample(idx)`, the corpus value recomputed
on a bootstrap sample of example indices. The base-vs-tuned comparison draws the same indices for both
models (a paired bootstrap), so `resample` is called thousands of times and must be cheap: corpus
statistics that do not decompose into a per-example mean (BLEU, chrF, macro precision/recall/F1) are
recomputed from cached per-example sufficient statistics or label lists, never from the text.

Perplexity and preference accuracy need the model and live in the model-based evaluator.
"""

from __future__ import annotations

import importlib
import json
import math
import re
import string
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import sacrebleu
import textstat
from jsonschema.exceptions import SchemaError, best_match
from jsonschema.validators import validator_for

from tuneloop.config import _USER_METRIC  # the pattern the config validates 'module:function' with
from tuneloop.errors import UserError
from tuneloop.evaluate import json_fields

# rouge-score (through nltk) and scikit-learn take seconds to import, so they are imported where they are
# used: a report that only prints METRIC_INFO should not pay for them.


@dataclass(frozen=True)
class MetricInfo:
    """What a metric measures, for reports and for checking a config before a long run."""

    description: str
    scale: str
    higher_is_better: bool
    needs_reference: bool
    model_based: bool = False  # computed by the model-based evaluator, not by `compute`


METRIC_INFO: dict[str, MetricInfo] = {
    "rouge1": MetricInfo(
        "ROUGE-1 F-measure: unigram overlap with the reference (rouge-score, Porter stemmer), mean over examples",
        "0–1",
        True,
        True,
    ),
    "rouge2": MetricInfo(
        "ROUGE-2 F-measure: bigram overlap with the reference (rouge-score, Porter stemmer), mean over examples",
        "0–1",
        True,
        True,
    ),
    "rougeL": MetricInfo(
        "ROUGE-L F-measure: longest common subsequence with the reference (rouge-score, Porter stemmer), "
        "mean over examples",
        "0–1",
        True,
        True,
    ),
    "bleu": MetricInfo(
        "corpus BLEU (sacrebleu defaults: 13a tokenizer, exp smoothing); per example: sentence BLEU",
        "0–100",
        True,
        True,
    ),
    "chrf": MetricInfo(
        "corpus chrF (sacrebleu defaults: character 6-grams, beta 2); per example: sentence chrF",
        "0–100",
        True,
        True,
    ),
    "exact_match": MetricInfo(
        "share of predictions equal to the reference, ignoring surrounding whitespace",
        "0–1",
        True,
        True,
    ),
    "json_match": MetricInfo(
        "share of outputs that parse as strict JSON equal in value to the reference: key order and whitespace "
        "do not count",
        "0–1",
        True,
        True,
    ),
    "normalized_exact_match": MetricInfo(
        "share of predictions equal to the reference after SQuAD normalisation "
        "(lowercase, no punctuation, no articles a/an/the, single spaces)",
        "0–1",
        True,
        True,
    ),
    "accuracy": MetricInfo(
        "share of examples whose label (extracted from the output) is the reference label; unparsed outputs are wrong",
        "0–1",
        True,
        True,
    ),
    "precision": MetricInfo(
        "macro-averaged precision over the classes (scikit-learn); per example: correct or not",
        "0–1",
        True,
        True,
    ),
    "recall": MetricInfo(
        "macro-averaged recall over the classes (scikit-learn); per example: correct or not",
        "0–1",
        True,
        True,
    ),
    "f1": MetricInfo(
        "macro-averaged F1 over the classes (scikit-learn); per example: correct or not",
        "0–1",
        True,
        True,
    ),
    "perplexity": MetricInfo(
        "perplexity of the reference answers under the model (model-based evaluator)",
        "≥ 1",
        False,
        True,
        model_based=True,
    ),
    "flesch_kincaid": MetricInfo(
        "Flesch–Kincaid grade level of the output (textstat), mean over examples; lower reads easier",
        "US school grade",
        False,
        False,
    ),
    "json_valid": MetricInfo(
        "share of outputs that, stripped, parse whole as strict JSON (no NaN/Infinity, no code fences)",
        "0–1",
        True,
        False,
    ),
    "json_schema": MetricInfo(
        "share of outputs that parse as strict JSON and validate against the given JSON Schema (jsonschema)",
        "0–1",
        True,
        False,
    ),
    "output_length": MetricInfo(
        "mean output length in whitespace-separated words; informational, neither direction is better in general",
        "words",
        False,
        False,
    ),
    "preference_accuracy": MetricInfo(
        "share of preference pairs where the model scores the chosen answer above the rejected one "
        "(model-based evaluator)",
        "0–1",
        True,
        False,
        model_based=True,
    ),
}

# How many failing example ids a metric lists in its details; the count is always complete.
_MAX_LISTED = 5


@dataclass
class MetricScores:
    """One metric on one model's outputs: the corpus value, per-example scores and a bootstrap hook.

    `per_example` holds the sentence-level variant for corpus metrics (sentence BLEU/chrF), 0/1
    correctness for accuracy-type metrics (also for precision/recall/F1, which do not decompose),
    and the metric itself for averaged metrics. `details` holds only JSON-serialisable values.
    """

    name: str
    value: float
    per_example: np.ndarray
    higher_is_better: bool
    details: dict[str, Any] = field(default_factory=dict)
    # The corpus statistic on a resample, for metrics that are not a mean of `per_example`.
    _resample: Callable[[np.ndarray], float] | None = field(default=None, repr=False, compare=False)

    def resample(self, idx: np.ndarray) -> float:
        """The corpus value recomputed on the examples at `idx` (indices may repeat, as in a bootstrap)."""
        idx = np.asarray(idx, dtype=np.int64)
        if self._resample is not None:
            return self._resample(idx)
        return float(self.per_example[idx].mean())


def needs_reference(name: str) -> bool:
    """Whether metric `name` compares outputs with reference answers (user metrics never require them)."""
    if name in METRIC_INFO:
        return METRIC_INFO[name].needs_reference
    if _USER_METRIC.match(name):
        return False
    raise ValueError(f"unknown metric {name!r}")


def normalize_answer(text: str) -> str:
    """SQuAD answer normalisation: lowercase, drop punctuation and articles, fold whitespace."""
    text = text.lower()
    text = "".join(ch for ch in text if ch not in string.punctuation)
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


def extract_label(text: str, labels: list[str]) -> str | None:
    """The label a model output names, or None when it names none of `labels`.

    An output that is exactly a label (ignoring case and surrounding whitespace) is that label;
    otherwise the label whose first whole-word occurrence comes earliest in the text wins, so
    "negative, not positive" reads as negative whatever the order of `labels` (a longer label wins
    a tie, so "very positive" beats "very"). Whole words only: "positively" does not name "positive".
    """
    cleaned = text.strip().lower()
    for label in labels:
        if cleaned == label.strip().lower():
            return label
    best: tuple[int, int, str] | None = None
    for label in labels:
        word = label.strip()
        if not word:
            continue
        found = re.search(rf"(?<!\w){re.escape(word)}(?!\w)", text, flags=re.IGNORECASE)
        if found and (best is None or (found.start(), -len(word)) < best[:2]):
            best = (found.start(), -len(word), label)
    return best[2] if best else None


def compute(
    name: str,
    *,
    ids: list[str],
    prompts: list[str],
    predictions: list[str],
    references: list[str] | None,
    labels: list[str] | None = None,
    schema: dict | None = None,
    search_path: Path | None = None,
) -> MetricScores:
    """Score `predictions` with metric `name` (a METRIC_INFO name or a user metric 'module:function').

    `ids`, `prompts`, `predictions` and `references` are parallel lists, one entry per test example;
    `references` may be None when the split has none. `labels` are the allowed classification labels
    (default: the distinct references), `schema` the JSON Schema for json_schema, and `search_path`
    a folder put on sys.path while a user metric is imported and called (usually the project root).

    Raises UserError for what the user can fix (a reference metric without references, a failing
    user metric, a bad schema) and ValueError for caller mistakes (unknown or model-based metric,
    lists of different lengths).
    """
    n = len(predictions)
    lengths = {"ids": len(ids), "prompts": len(prompts), "predictions": n}
    if references is not None:
        lengths["references"] = len(references)
    if len(set(lengths.values())) != 1:
        raise ValueError(f"metric {name}: inputs differ in length: {lengths}")
    if n == 0:
        raise ValueError(f"metric {name}: no examples to score")

    if _USER_METRIC.match(name):
        scores = _user_metric(name, ids, prompts, predictions, references, search_path)
        scores.details["n"] = n
        return scores
    if name not in METRIC_INFO:
        raise ValueError(f"unknown metric {name!r}; known: {', '.join(METRIC_INFO)}, or 'module:function'")
    info = METRIC_INFO[name]
    if info.model_based:
        raise ValueError(
            f"metric {name} needs the model: it is computed by the model-based evaluator, not by metrics.compute"
        )

    refs: list[str] = []
    if info.needs_reference:
        # A split without references arrives as None or as empty strings, depending on the format.
        if references is None or all(not (r or "").strip() for r in references):
            raise UserError(
                f"metric {name} needs reference answers, but the test split has none; "
                "drop it from task.metrics or add references"
            )
        refs = [r or "" for r in references]

    if name in ("rouge1", "rouge2", "rougeL"):
        scores = _rouge(name, predictions, refs)
    elif name in ("bleu", "chrf"):
        scores = _sacrebleu(name, predictions, refs)
    elif name in ("exact_match", "normalized_exact_match"):
        scores = _exact_match(name, predictions, refs)
    elif name in ("accuracy", "precision", "recall", "f1"):
        scores = _classification(name, predictions, refs, labels)
    elif name == "flesch_kincaid":
        scores = _mean_of(name, [textstat.flesch_kincaid_grade(p) for p in predictions])
    elif name == "json_match":
        per_example, details = json_fields.json_match(ids, predictions, refs)
        scores = MetricScores(name, float(per_example.mean()), per_example, True, details)
    elif name == "json_valid":
        scores = _json_valid(ids, predictions)
    elif name == "json_schema":
        scores = _json_schema(ids, predictions, schema)
    elif name == "output_length":
        scores = _mean_of(name, [len(p.split()) for p in predictions])
    else:  # every non-model METRIC_INFO name is dispatched above; this guards the table and the code drifting
        raise AssertionError(f"metric {name} is listed in METRIC_INFO but has no implementation")

    scores.details["n"] = n
    if info.needs_reference:
        scores.details["empty_references"] = sum(not r.strip() for r in refs)
    return scores


def _mean_of(name: str, values: list[float]) -> MetricScores:
    """A metric whose corpus value is the mean of its per-example values (so resampling is a mean too)."""
    per_example = np.asarray(values, dtype=np.float64)
    return MetricScores(name, float(per_example.mean()), per_example, METRIC_INFO[name].higher_is_better, {})


def _rouge(name: str, predictions: list[str], references: list[str]) -> MetricScores:
    """ROUGE F-measure per example, averaged: how rouge-score and its users report a corpus."""
    from rouge_score import rouge_scorer

    # rouge-score's default tokenizer keeps only [a-z0-9] tokens, so text in other scripts scores 0;
    # we keep the library's behaviour so the numbers match everyone else's.
    scorer = rouge_scorer.RougeScorer([name], use_stemmer=True)
    # score(target, prediction): the reference comes first.
    fmeasures = [scorer.score(ref, pred)[name].fmeasure for pred, ref in zip(predictions, references, strict=True)]
    return _mean_of(name, fmeasures)


def _sacrebleu(name: str, predictions: list[str], references: list[str]) -> MetricScores:
    """Corpus BLEU or chrF from per-sentence sufficient statistics, which also give sentence scores.

    A corpus score is a function of the summed per-sentence statistics, so a bootstrap resample is a
    sum of cached rows, not a re-tokenisation. sacrebleu 2.x has no public API for this; we use the
    pair its own bootstrap uses (`_extract_corpus_statistics`, `_compute_score_from_stats`, see
    sacrebleu.significance), and the tests pin the results to `corpus_bleu`/`corpus_chrf`.
    """
    if name == "bleu":
        corpus_metric: Any = sacrebleu.BLEU()
        # sacrebleu.sentence_bleu's settings: effective order, so short sentences are not all zero.
        sentence_metric: Any = sacrebleu.BLEU(effective_order=True)
    else:
        corpus_metric = sacrebleu.CHRF()
        sentence_metric = sacrebleu.CHRF()
    stats = np.asarray(corpus_metric._extract_corpus_statistics(predictions, [references]), dtype=np.int64)

    def corpus_score(rows: np.ndarray) -> float:
        # Python ints, as sacrebleu's own summation produces, so the score is bit-identical.
        return float(corpus_metric._compute_score_from_stats(rows.sum(axis=0).tolist()).score)

    per_example = np.array([sentence_metric._compute_score_from_stats(row.tolist()).score for row in stats])
    return MetricScores(
        name,
        corpus_score(stats),
        per_example,
        True,
        {"signature": str(corpus_metric.get_signature())},
        _resample=lambda idx: corpus_score(stats[idx]),
    )


def _exact_match(name: str, predictions: list[str], references: list[str]) -> MetricScores:
    """Exact match, on trimmed text or on SQuAD-normalised text."""
    norm = normalize_answer if name == "normalized_exact_match" else str.strip
    return _mean_of(name, [float(norm(p) == norm(r)) for p, r in zip(predictions, references, strict=True)])


def _classification(name: str, predictions: list[str], references: list[str], labels: list[str] | None) -> MetricScores:
    """Accuracy or macro precision/recall/F1 (scikit-learn) on labels extracted from the outputs.

    The classes are those that occur in the references or among the parsed predictions (scikit-learn's
    own default), fixed once so every bootstrap resample computes the same statistic. An unparsed
    output is encoded as -1, a class of its own that is never right and never averaged over.
    """
    from sklearn.metrics import accuracy_score, f1_score, precision_recall_fscore_support, precision_score, recall_score

    allowed = list(labels) if labels else sorted(set(references))
    extracted = [extract_label(p, allowed) for p in predictions]
    present = set(references) | {e for e in extracted if e is not None}
    # Allowed labels first, in their configured order; reference labels outside that list still count.
    classes = [c for c in allowed if c in present] + sorted(present - set(allowed))
    code = {c: i for i, c in enumerate(classes)}
    y_true = np.array([code[r] for r in references], dtype=np.int64)
    y_pred = np.array([code[e] if e is not None else -1 for e in extracted], dtype=np.int64)
    class_ids = list(range(len(classes)))

    precision, recall, f1, support = precision_recall_fscore_support(
        y_true, y_pred, labels=class_ids, average=None, zero_division=0
    )
    per_class = {
        c: {"precision": float(p), "recall": float(r), "f1": float(f), "support": int(s)}
        for c, p, r, f, s in zip(classes, precision, recall, f1, support, strict=True)
    }
    details = {"classes": classes, "per_class": per_class, "unparsed": sum(e is None for e in extracted)}
    per_example = (y_true == y_pred).astype(np.float64)
    if name == "accuracy":
        return MetricScores(name, float(accuracy_score(y_true, y_pred)), per_example, True, details)

    macro = {"precision": precision_score, "recall": recall_score, "f1": f1_score}[name]

    def corpus_score(idx: np.ndarray | slice) -> float:
        return float(macro(y_true[idx], y_pred[idx], labels=class_ids, average="macro", zero_division=0))

    return MetricScores(name, corpus_score(slice(None)), per_example, True, details, _resample=corpus_score)


def _reject_constant(token: str) -> Any:
    """json.loads accepts NaN and Infinity by default; strict JSON does not."""
    raise ValueError(f"{token} is not valid JSON")


def _parse_json(text: str) -> tuple[Any, str | None]:
    """(value, None) if the whole stripped text is strict JSON, else (None, the parser's complaint)."""
    try:
        return json.loads(text.strip(), parse_constant=_reject_constant), None
    except ValueError as err:  # JSONDecodeError is a ValueError
        return None, str(err)


def _json_valid(ids: list[str], predictions: list[str]) -> MetricScores:
    """1 where the output is strict JSON as a whole: a fenced ```json block does not count."""
    errors = [_parse_json(p)[1] for p in predictions]
    failed = [{"id": i, "error": e} for i, e in zip(ids, errors, strict=True) if e is not None]
    scores = _mean_of("json_valid", [float(e is None) for e in errors])
    scores.details = {"invalid": len(failed), "first_invalid": failed[:_MAX_LISTED]}
    return scores


def _json_schema(ids: list[str], predictions: list[str], schema: dict | None) -> MetricScores:
    """1 where the output is strict JSON that validates against `schema` (any draft jsonschema knows)."""
    if schema is None:
        raise UserError("metric json_schema needs a JSON Schema to validate against, but none was given")
    validator_class = validator_for(schema)
    try:
        validator_class.check_schema(schema)
    except SchemaError as err:
        raise UserError(f"metric json_schema: the schema is not a valid JSON Schema: {err.message}") from err
    validator = validator_class(schema)

    per_example, failed, invalid_json = [], [], 0
    for example_id, prediction in zip(ids, predictions, strict=True):
        value, error = _parse_json(prediction)
        if error is not None:
            invalid_json += 1
        else:
            best = best_match(validator.iter_errors(value))
            error = None if best is None else f"schema: {best.message}"
        per_example.append(float(error is None))
        if error is not None:
            failed.append({"id": example_id, "error": error})
    scores = _mean_of("json_schema", per_example)
    scores.details = {
        "invalid_json": invalid_json,
        "schema_failures": len(failed) - invalid_json,
        "first_failures": failed[:_MAX_LISTED],
    }
    return scores


@contextmanager
def _on_sys_path(path: Path | None) -> Iterator[None]:
    """Put `path` first on sys.path for the duration, so a project's own module can be imported."""
    if path is None:
        yield
        return
    entry = str(path)
    sys.path.insert(0, entry)
    try:
        yield
    finally:
        if entry in sys.path:
            sys.path.remove(entry)  # removes the first occurrence: ours


def _user_metric(
    name: str,
    ids: list[str],
    prompts: list[str],
    predictions: list[str],
    references: list[str] | None,
    search_path: Path | None,
) -> MetricScores:
    """A metric 'module:function' from the user's project: fn(prompt, prediction, reference) -> float.

    The corpus value is the mean over examples. The function may set an attribute
    `higher_is_better = False` for a metric where lower is better (the default is higher).
    """
    module_name, function_name = name.split(":")
    where = f" (looked up from {search_path} and sys.path)" if search_path else ""
    # The search path stays in place while the function runs: it may import project modules lazily.
    with _on_sys_path(search_path):
        importlib.invalidate_caches()  # the module may have been written after Python cached the folder listing
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as err:
            raise UserError(f"metric {name}: cannot import module {module_name!r}{where}: {err}") from err
        except Exception as err:
            raise UserError(f"metric {name}: importing {module_name!r} failed: {type(err).__name__}: {err}") from err
        fn = getattr(module, function_name, None)
        if not callable(fn):
            raise UserError(f"metric {name}: module {module_name!r} has no function {function_name!r}")

        values = []
        for i, example_id in enumerate(ids):
            reference = references[i] if references is not None else None
            try:
                result = fn(prompts[i], predictions[i], reference)
            except Exception as err:
                raise UserError(f"metric {name} failed on example {example_id}: {type(err).__name__}: {err}") from err
            try:
                value = float(result)
            except (TypeError, ValueError) as err:
                raise UserError(
                    f"metric {name} failed on example {example_id}: returned {result!r}, expected a number"
                ) from err
            if not math.isfinite(value):
                raise UserError(
                    f"metric {name} failed on example {example_id}: returned {value}, expected a finite number"
                )
            values.append(value)

    per_example = np.asarray(values, dtype=np.float64)
    higher_is_better = bool(getattr(fn, "higher_is_better", True))
    return MetricScores(name, float(per_example.mean()), per_example, higher_is_better, {})
