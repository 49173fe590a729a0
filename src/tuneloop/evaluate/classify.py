"""`tuneloop eval` for a classification task: did the classifier get better than the base model's features?

Reads top to bottom: load the test split (and record that it was looked at, as every evaluation does)
→ the base: a linear probe, scikit-learn's logistic regression fitted on the train split's features
from the frozen base model (what its new head would read: the pooled encoder output or a decoder's
last token) → each run's `final/` classifier → per system the label probabilities of every test text
→ accuracy, macro precision / recall / F1, per-class precision / recall / F1 with percentile-bootstrap
intervals, the confusion matrix, expected calibration error and its reliability diagram → each run
against the base by paired bootstrap (compare.py) → metrics.json, outputs.jsonl, report.md/html.
"""

from __future__ import annotations

import gc
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tuneloop import console
from tuneloop.classifier import head_inputs, label_names, probabilities
from tuneloop.config import ProjectConfig
from tuneloop.data.formats import Example
from tuneloop.data.prepared import load_split
from tuneloop.errors import UserError
from tuneloop.evaluate.compare import MeanScores, bootstrap_indices, compare
from tuneloop.evaluate.provenance import check_no_test_overlap, split_row_hashes
from tuneloop.evaluate.runner import EvalResult, _default_out_dir, _now, load_test, record_test_use, test_uses
from tuneloop.runs import check_same_base

BASE = "base (linear probe)"
ECE_BINS = 15  # equal-width confidence bins, as Guo et al. (2017) measured calibration
LABEL_METRICS = ("accuracy", "precision", "recall", "f1")  # the task.metrics a classifier reports (macro averages)


# --------------------------------------------------------------------------- scores


def calibration(probs: np.ndarray, truth: np.ndarray, bins: int = ECE_BINS) -> dict[str, Any]:
    """Expected calibration error of the top label's probability, and the reliability diagram's bins.

    ECE = Σ over bins of (bin share of examples) × |accuracy in the bin − mean confidence in the bin|.
    """
    confidence = probs.max(1)
    correct = probs.argmax(1) == truth
    which = np.minimum((confidence * bins).astype(int), bins - 1)
    rows, ece = [], 0.0
    for b in range(bins):
        inside = which == b
        n = int(inside.sum())
        if n:
            acc, conf = float(correct[inside].mean()), float(confidence[inside].mean())
            ece += n / len(truth) * abs(acc - conf)
            rows.append({"low": b / bins, "high": (b + 1) / bins, "n": n, "accuracy": acc, "confidence": conf})
    return {"ece": ece, "bins": rows}


@dataclass
class LabelScores:
    """A corpus-level label metric (macro F1, precision, recall or ECE) that the paired bootstrap resamples."""

    name: str
    truth: np.ndarray
    probs: np.ndarray
    labels: np.ndarray  # the class ids the macro average runs over: those the test set holds
    higher_is_better: bool = True

    @property
    def value(self) -> float:
        return self.resample(np.arange(len(self.truth)))

    def resample(self, idx: np.ndarray) -> float:
        from sklearn.metrics import precision_recall_fscore_support

        truth, probs = self.truth[idx], self.probs[idx]
        if self.name == "ece":
            return calibration(probs, truth)["ece"]
        p, r, f, _ = precision_recall_fscore_support(
            truth, probs.argmax(1), labels=self.labels, average="macro", zero_division=0
        )
        return float({"precision": p, "recall": r, "f1": f}[self.name])


def system_scores(probs: np.ndarray, truth: np.ndarray) -> dict[str, Any]:
    """Every metric of one system as resamplable scores (accuracy per example; the rest per corpus)."""
    present = np.unique(truth)
    scores: dict[str, Any] = {"accuracy": MeanScores("accuracy", (probs.argmax(1) == truth).astype(float))}
    for name in ("precision", "recall", "f1"):
        scores[name] = LabelScores(name, truth, probs, present)
    scores["ece"] = LabelScores("ece", truth, probs, present, higher_is_better=False)
    return scores


def per_class(
    probs: np.ndarray, truth: np.ndarray, labels: list[str], indices: np.ndarray, confidence: float
) -> list[dict[str, Any]]:
    """Precision, recall and F1 of each label with percentile-bootstrap intervals over the test examples."""
    from sklearn.metrics import precision_recall_fscore_support

    ids = np.arange(len(labels))
    pred = probs.argmax(1)
    point = precision_recall_fscore_support(truth, pred, labels=ids, zero_division=0)
    draws = np.array(
        [precision_recall_fscore_support(truth[i], pred[i], labels=ids, zero_division=0)[:3] for i in indices]
    )  # (resamples, 3, labels)
    tail = (1 - confidence) / 2 * 100
    low, high = np.percentile(draws, tail, axis=0), np.percentile(draws, 100 - tail, axis=0)
    rows = []
    for k, label in enumerate(labels):
        row: dict[str, Any] = {"label": label, "support": int(point[3][k]), "predicted": int((pred == k).sum())}
        for m, name in enumerate(("precision", "recall", "f1")):
            row[name] = {"value": float(point[m][k]), "ci": [float(low[m][k]), float(high[m][k])]}
        rows.append(row)
    return rows


# --------------------------------------------------------------------------- systems


def linear_probe(cfg: ProjectConfig, labels: list[str], test_texts: list[str]) -> np.ndarray:
    """The base: logistic regression on the frozen base model's features of the train split (the same fit
    as the `features` strategy's logistic head, without class weights)."""
    from tuneloop.classifier import fit_probe
    from tuneloop.models import load_sequence_classifier

    train, _ = load_split(cfg, "train")
    known = {label: i for i, label in enumerate(labels)}
    train = [e for e in train if e.label in known]
    model, tokenizer = load_sequence_classifier(
        cfg.model.name, labels, revision=cfg.model.revision, trust_remote_code=cfg.model.trust_remote_code
    )
    console.note(f"base: fitting a linear probe on {len(train):,} train texts' features from {cfg.model.name}")
    features = head_inputs(model, tokenizer, [e.text for e in train], cfg.data.max_length)
    test_features = head_inputs(model, tokenizer, test_texts, cfg.data.max_length)
    targets = np.array([known[e.label] for e in train])
    weight, bias, _ = fit_probe(features, targets, len(labels), None, cfg.eval.seed)
    logits = test_features @ weight.T + bias
    logits -= logits.max(1, keepdims=True)
    return np.exp(logits) / np.exp(logits).sum(1, keepdims=True)


def run_labels(run_dir: Path) -> list[str]:
    """The label map a classifier run saved (labels.json), or a clear error for any other run."""
    path = run_dir / "labels.json"
    if not path.is_file():
        raise UserError(
            f"{run_dir} is not a classifier run (no labels.json); evaluate runs trained with task.type classification"
        )
    return json.loads(path.read_text())["labels"]


def run_probabilities(cfg: ProjectConfig, run_dir: Path, texts: list[str]) -> np.ndarray:
    from tuneloop.models import load_sequence_classifier, refuse_pickled_weights

    final = run_dir / "final"
    if not final.is_dir():
        raise UserError(f"{run_dir} has no final/ classifier; train it again with `tuneloop train`")
    refuse_pickled_weights(final, "the run's final model")
    model, tokenizer = load_sequence_classifier(str(final))
    if label_names(model) != run_labels(run_dir):
        raise UserError(f"{final}/config.json's id2label does not match {run_dir / 'labels.json'}: the run is damaged")
    return probabilities(model, tokenizer, texts, cfg.data.max_length)


# --------------------------------------------------------------------------- the evaluation


def evaluate(
    cfg: ProjectConfig, run_dirs: list[Path], *, private: bool = False, out_dir: Path | None = None
) -> EvalResult:
    """Evaluate the base's linear probe and each classifier run on the test set; write the report."""
    from tuneloop import registry
    from tuneloop.evaluate import classify_report

    examples, test_sha, source = load_test(cfg, private)
    examples = examples[: cfg.eval.max_examples] if cfg.eval.max_examples else examples
    labels = _shared_labels(run_dirs)
    truth = _truth(examples, labels)
    unknown_metrics = [m for m in cfg.task.metrics if m not in LABEL_METRICS]
    if unknown_metrics:
        raise UserError(
            f"task.metrics {', '.join(unknown_metrics)} score generated text; a classifier reports "
            f"{', '.join(LABEL_METRICS)} (set task.metrics to those)"
        )
    test_hashes = None if private else split_row_hashes(cfg.path(cfg.data.prepared_dir))
    for d in run_dirs:
        check_same_base(cfg, d)
        if test_hashes is not None:
            check_no_test_overlap(d, test_hashes, len(test_hashes))
    uses = record_test_use(cfg, test_sha, [d.name for d in run_dirs], private)
    console.note(f"test set: {len(examples)} examples from the {source} (evaluated {uses} time(s) so far)")
    if uses >= cfg.eval.test_reuse_warning:
        console.warn(
            f"this test set has been evaluated {uses} times; choices made by looking at it overfit it. "
            "Select models on validation, and keep a private test set (eval.private_test) for the final verdict"
        )

    texts = [e.text or "" for e in examples]
    systems = {BASE: linear_probe(cfg, labels, texts)}
    gc.collect()
    for d in run_dirs:
        console.note(f"classifying with {d.name}")
        systems[d.name] = run_probabilities(cfg, d, texts)
        gc.collect()

    indices = bootstrap_indices(len(examples), cfg.eval.bootstrap, cfg.eval.seed)
    scores = {name: system_scores(probs, truth) for name, probs in systems.items()}
    shown = [*cfg.task.metrics, "ece"]
    comparisons = {
        name: {m: compare(scores[BASE][m], scores[name][m], indices, cfg.eval.confidence).to_json() for m in shown}
        for name in systems
        if name != BASE
    }
    report = {
        "created": _now(),
        "task": "classification",
        "test": {
            "source": source,
            "sha256": test_sha,
            "examples": len(examples),
            "private": private,
            "evaluations": uses,
            "history": test_uses(cfg, test_sha),
        },
        "labels": labels,
        "base": {"what": "logistic regression on the frozen base model's features of the train split"},
        "systems": list(systems),
        "runs": {d.name: str(d) for d in run_dirs},
        "metrics": {name: {m: {"value": s[m].value} for m in shown} for name, s in scores.items()},
        "per_class": {
            name: per_class(probs, truth, labels, indices, cfg.eval.confidence) for name, probs in systems.items()
        },
        "confusion": {name: _confusion(probs, truth, len(labels)) for name, probs in systems.items()},
        "calibration": {name: calibration(probs, truth) for name, probs in systems.items()},
        "comparisons": comparisons,
        "confidence": cfg.eval.confidence,
        "bootstrap": cfg.eval.bootstrap,
    }
    out_dir = out_dir or _default_out_dir(cfg, run_dirs)
    out_dir.mkdir(parents=True, exist_ok=True)
    _write_outputs(out_dir / "outputs.jsonl", examples, labels, systems)
    (out_dir / "metrics.json").write_text(json.dumps(report, indent=2) + "\n")
    classify_report.write(out_dir, report, cfg, run_dirs)
    for d in run_dirs:
        registry.record(cfg, d)
    return EvalResult(out_dir, report, scores)


def _shared_labels(run_dirs: list[Path]) -> list[str]:
    if not run_dirs:
        raise UserError("no run to evaluate: train a classifier first with `tuneloop train`")
    labels = run_labels(run_dirs[0])
    for d in run_dirs[1:]:
        if run_labels(d) != labels:
            raise UserError(f"{d.name} and {run_dirs[0].name} have different label maps; compare runs of one label set")
    return labels


def _truth(examples: list[Example], labels: list[str]) -> np.ndarray:
    known = {label: i for i, label in enumerate(labels)}
    unknown = sorted({e.label for e in examples if e.label not in known}, key=str)
    if any(e.kind != "classification" for e in examples):
        raise UserError("the test set holds rows other than {text, label}; re-run `tuneloop data prepare`")
    if unknown:
        raise UserError(
            f"the test set has labels the runs were not trained on: {', '.join(map(str, unknown))}; "
            f"their labels are {', '.join(labels)}. Retrain on data that holds them, or remove those rows"
        )
    return np.array([known[e.label] for e in examples])


def _confusion(probs: np.ndarray, truth: np.ndarray, k: int) -> list[list[int]]:
    """Rows: the true label; columns: the predicted one (scikit-learn's convention)."""
    from sklearn.metrics import confusion_matrix

    return confusion_matrix(truth, probs.argmax(1), labels=list(range(k))).tolist()


def _write_outputs(path: Path, examples: list[Example], labels: list[str], systems: dict[str, np.ndarray]) -> None:
    with path.open("w", encoding="utf-8") as f:
        for i, e in enumerate(examples):
            row = {"id": e.id, "text": e.text, "label": e.label, "predictions": {}}
            for name, probs in systems.items():
                row["predictions"][name] = {
                    "label": labels[int(probs[i].argmax())],
                    "probabilities": {label: round(float(p), 6) for label, p in zip(labels, probs[i], strict=True)},
                }
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
