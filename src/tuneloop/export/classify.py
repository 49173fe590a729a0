"""`tuneloop export` for a classifier run: a standalone folder that `transformers.pipeline("text-classification")`
loads, verified against the run's own model before it appears.

Reads top to bottom: the run's `final/` (a complete classifier; a LoRA run was merged when it was saved)
is copied with its tokenizer into a staging folder → a model card and labels.json are written → the
folder is loaded back the way a user would, with `pipeline("text-classification", model=folder)`, and
its label names and every label's probability on the probe texts (test texts first) are compared with
the run's model → verification.json → the staging folder is renamed into place. A failed check
removes it.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from tuneloop import console
from tuneloop.classifier import label_names, probabilities
from tuneloop.config import ProjectConfig
from tuneloop.errors import UserError
from tuneloop.export import _replace

FIXED_PROBES = ["", "Hello!", "This is a longer text, with punctuation; and numbers: 42, 3.14 and 2026."]


@dataclass
class ClassifierCheck:
    """The exported folder through the pipeline against the run's own model."""

    probes: int
    labels_identical: bool
    max_abs_diff: float  # of any label's probability
    top1_agreement: float
    limit_max_abs_diff: float
    passed: bool = False
    problems: list[str] = field(default_factory=list)


@dataclass
class ClassifierExport:
    out: Path
    labels: list[str]
    check: ClassifierCheck
    files: list[str] = field(default_factory=list)


def probe_texts(cfg: ProjectConfig, count: int) -> list[str]:
    """Up to `count` test texts, then fixed ones (an empty text, a short one, punctuation and numbers)."""
    from tuneloop.data.prepared import load_split

    try:
        test, _ = load_split(cfg, "test")
    except UserError:
        test = []
    texts = [e.text for e in test if e.text][:count]
    return texts + FIXED_PROBES


def pipeline_probabilities(folder: Path, texts: list[str], labels: list[str]) -> np.ndarray:
    """Every label's probability for each text, read through `pipeline("text-classification")` as a user would."""
    from transformers import pipeline
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    try:
        classify = pipeline("text-classification", model=str(folder), top_k=None, device="cpu")
    finally:
        hf_logging.enable_progress_bar()
    out = np.zeros((len(texts), len(labels)))
    for i, scores in enumerate(classify(texts, truncation=True)):
        for item in scores:
            if item["label"] not in labels:
                raise UserError(f"the exported model answers label {item['label']!r}, which the run does not have")
            out[i, labels.index(item["label"])] = item["score"]
    return out


def export_classifier(cfg: ProjectConfig, run_dir: Path, out: Path | None = None) -> ClassifierExport:
    """Copy, load back through the pipeline, verify, and move the classifier into `out` (default run/export)."""
    from tuneloop.models import load_sequence_classifier, refuse_pickled_weights

    final = run_dir / "final"
    if not (run_dir / "labels.json").is_file() or not final.is_dir():
        raise UserError(f"{run_dir} is not a finished classifier run (no labels.json or final/); train it first")
    refuse_pickled_weights(final, "the run's final model")
    labels = json.loads((run_dir / "labels.json").read_text())["labels"]
    out = out or run_dir / "export"
    staging = out.parent / f".{out.name}.tmp-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        shutil.copytree(final, staging, dirs_exist_ok=True)  # the classifier, its tokenizer and labels.json
        model, tokenizer = load_sequence_classifier(str(final))
        if label_names(model) != labels:
            raise UserError(f"{final}/config.json's labels differ from {run_dir / 'labels.json'}: the run is damaged")
        texts = probe_texts(cfg, cfg.export.probes)
        reference = probabilities(model, tokenizer, texts)
        exported = pipeline_probabilities(staging, texts, labels)
        check = _judge(reference, exported, labels, label_names_of(staging), cfg.export.max_abs_diff)
        if not check.passed:
            raise UserError("the exported classifier does not match the run: " + "; ".join(check.problems))
        _write_card(cfg, run_dir, staging, labels, check)
        (staging / "verification.json").write_text(
            json.dumps({"created": _now(), "run": str(run_dir), "pipeline": asdict(check)}, indent=2) + "\n"
        )
        _replace(staging, out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    console.note(f"exported {run_dir.name}: pipeline('text-classification', model='{out}')")
    return ClassifierExport(out, labels, check, sorted(p.name for p in out.iterdir()))


def label_names_of(folder: Path) -> list[str]:
    config = json.loads((folder / "config.json").read_text())
    return [config["id2label"][str(i)] for i in range(len(config["id2label"]))]


def _judge(reference: np.ndarray, exported: np.ndarray, labels: list[str], saved: list[str], limit: float):
    diff = float(np.abs(reference - exported).max()) if reference.size else 0.0
    agree = float((reference.argmax(1) == exported.argmax(1)).mean()) if reference.size else 1.0
    check = ClassifierCheck(len(reference), saved == labels, diff, agree, limit)
    if not check.labels_identical:
        check.problems.append(f"its labels {saved} differ from the run's {labels}")
    if diff > limit:
        check.problems.append(f"a label probability differs by {diff:.3g} (limit export.max_abs_diff {limit:g})")
    if agree < 1.0:
        check.problems.append(f"its top label differs on {1 - agree:.1%} of the probe texts")
    check.passed = not check.problems
    return check


def _write_card(cfg: ProjectConfig, run_dir: Path, folder: Path, labels: list[str], check: ClassifierCheck) -> None:
    """README.md: base model and licence, method, labels, the evaluation's figures, the verification."""
    from tuneloop import models

    summary = json.loads((run_dir / "summary.json").read_text()) if (run_dir / "summary.json").is_file() else {}
    base = json.loads((run_dir / "base-model.json").read_text()) if (run_dir / "base-model.json").is_file() else {}
    licence = models.read_licence(Path(base["folder"])) if base.get("folder") else "unknown"
    lines = [
        "---",
        f"license: {licence}",
        "pipeline_tag: text-classification",
        "---",
        "",
        f"# {run_dir.name}",
        "",
        f"{cfg.task.objective}",
        "",
        f"A text classifier fine-tuned by tuneloop from `{base.get('name', cfg.model.name)}` "
        f"(licence: {licence}) with the `{summary.get('method', '?')}` strategy ({summary.get('strategy', '')}).",
        "",
        f"Labels (id order): {', '.join(labels)}.",
        "",
        "```python",
        "from transformers import pipeline",
        'classify = pipeline("text-classification", model="path/to/this/folder", top_k=None)',
        "```",
        "",
        "## Evaluation",
        "",
    ]
    metrics_path = run_dir / "eval" / "metrics.json"
    if metrics_path.is_file():
        r = json.loads(metrics_path.read_text())
        for metric, c in (r.get("comparisons") or {}).get(run_dir.name, {}).items():
            lines.append(
                f"- {metric}: {c['candidate']:.4f} (base {c['baseline']:.4f}; change [{c['ci_low']:+.4f}, "
                f"{c['ci_high']:+.4f}], {c['verdict']})"
            )
        lines.append(f"- on {r['test']['examples']} test examples; the base is {r['base']['what']}")
    else:
        lines.append("Not evaluated.")
    lines += [
        "",
        "## Verification",
        "",
        f"Loaded back with `pipeline('text-classification')` on {check.probes} probe texts: largest difference of "
        f"a label probability from the run's own model {check.max_abs_diff:.3g} (limit {check.limit_max_abs_diff:g}), "
        f"top label identical on {check.top1_agreement:.0%}, labels identical: {check.labels_identical}.",
    ]
    (folder / "README.md").write_text("\n".join(lines) + "\n", encoding="utf-8")


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def describe(result: ClassifierExport) -> list[str]:
    """The lines `tuneloop export` prints for a classifier."""
    c = result.check
    return [
        f"verified  pipeline('text-classification') on {c.probes} probe texts: max |Δprobability| "
        f"{c.max_abs_diff:.3g} (limit {c.limit_max_abs_diff:g}), top label identical {c.top1_agreement:.0%}",
        f"labels    {', '.join(result.labels)}",
        f"export    {result.out}  ({', '.join(result.files)})",
    ]
