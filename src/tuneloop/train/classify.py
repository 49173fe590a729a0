"""Classification fine-tuning: `tuneloop train` when `task.type: classification`.

The recipe, top to bottom:
1. read the prepared `{text, label}` splits and build the label map: `data.labels` in their order,
   else every label the splits hold, sorted; it is saved in the run (`labels.json`) and in the
   model's config (`id2label`, `label2id`), so an export loads with the same names;
2. load the base as a sequence classifier (`AutoModelForSequenceClassification`: an encoder's
   pooled output, or a decoder's last token, feeds a new linear head);
3. apply the strategy (`method.name`): `features` trains the head only; `last_k` the top
   `classify.last_k` blocks, what sits above them (pooler, final norm) and the head; `full` every
   weight; `lora` PEFT adapters on the blocks' linear layers plus the head;
4. weigh the classes (`train.class_weights`) or oversample the small ones (`classify.resample`);
5. train with Transformers' Trainer, the loss PyTorch's weighted cross-entropy
   (sum of w[y]·CE over the batch / sum of w[y]); validation measures loss, accuracy and macro-F1,
   and the best validation pass's weights become `final/`;
6. write `final/` (a complete classifier: a LoRA run is merged), labels.json, metrics, summary.

Checkpoints every `train.save_every` steps (and on SIGTERM or Ctrl-C) make a run resumable:
`tuneloop train --resume` continues it with the same losses an uninterrupted run logs.
"""

from __future__ import annotations

import json
import os
import random
import resource
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tuneloop import console
from tuneloop.classifier import fit_probe, head_inputs, head_modules, max_tokens, probabilities
from tuneloop.config import ProjectConfig
from tuneloop.data.formats import Example
from tuneloop.data.prepared import load_split
from tuneloop.errors import UserError
from tuneloop.train import checkpoint
from tuneloop.train.callbacks import MetricsFile, Progress
from tuneloop.train.classify_trainer import (
    Checkpoints,
    KeepBest,
    compute_metrics,
    make_trainer_class,
    scores,
    training_arguments,
)

LABELS_FILE = "labels.json"


@dataclass
class ClassifyResult:
    run_dir: Path
    status: str  # completed | early_stopped | stopped
    steps: int
    final_dir: Path | None  # None when stopped
    summary: dict[str, Any] = field(default_factory=dict)


# --------------------------------------------------------------------------- 1. data and labels


def check_rows(examples: list[Example], split: str) -> None:
    """Every row of a classification task is `{text, label}`; anything else is refused, naming its kind."""
    wrong = Counter(e.kind for e in examples if e.kind != "classification")
    if wrong:
        found = ", ".join(f"{n:,} {kind}" for kind, n in wrong.items())
        raise UserError(
            f"the {split} split holds {found} rows, but task.type is classification, which trains on "
            '{"text", "label"} rows only; give classification rows (data.format: classification) and re-run '
            "`tuneloop data prepare`"
        )


def label_list(cfg: ProjectConfig, splits: dict[str, list[Example]]) -> list[str]:
    """The label ↔ id map as a list (id = position): data.labels in their order, else the labels found, sorted."""
    if cfg.data.labels:
        return list(cfg.data.labels)
    return sorted({e.label for examples in splits.values() for e in examples if e.label is not None})


def class_weights(setting: Any, labels: list[str], train_labels: list[str]) -> list[float] | None:
    """Per class id, the weight of its examples in the loss; None when every class weighs the same.

    'auto' is scikit-learn's 'balanced': n / (classes × count), over the classes train holds (a class
    absent from train weighs 1: it has no example to weigh).
    """
    if setting == "none":
        return None
    if isinstance(setting, dict):
        unknown = sorted(set(setting) - set(labels))
        if unknown:
            raise UserError(
                f"train.class_weights names {', '.join(unknown)}, which the data does not hold; its labels are "
                f"{', '.join(labels)}"
            )
        return [float(setting.get(label, 1.0)) for label in labels]
    import numpy as np
    from sklearn.utils.class_weight import compute_class_weight

    present = sorted(set(train_labels))
    balanced = compute_class_weight("balanced", classes=np.array(present), y=np.array(train_labels))
    by_label = dict(zip(present, balanced.tolist(), strict=True))
    return [float(by_label.get(label, 1.0)) for label in labels]


def oversample(items: list[dict[str, Any]], seed: int) -> list[dict[str, Any]]:
    """Repeat examples of the smaller classes (seeded draws) until each has as many as the largest."""
    by_class: dict[int, list[dict[str, Any]]] = {}
    for item in items:
        by_class.setdefault(item["labels"], []).append(item)
    largest = max(len(v) for v in by_class.values())
    rng = random.Random(seed)
    out = list(items)
    for label in sorted(by_class):
        members = by_class[label]
        out += [rng.choice(members) for _ in range(largest - len(members))]
    rng.shuffle(out)
    return out


def tokenize(examples: list[Example], tokenizer: Any, label_ids: dict[str, int], max_length: int) -> list[dict]:
    """Token ids (cut at max_length, counted) and the class id of every example."""
    encoded = tokenizer([e.text for e in examples], truncation=True, max_length=max_length)
    items = []
    for i, e in enumerate(examples):
        item = {k: encoded[k][i] for k in encoded}
        item["labels"] = label_ids[e.label]
        item["text"] = e.text  # for a logistic head's features; the Trainer gets the items without it
        items.append(item)
    cut = sum(1 for item in items if len(item["input_ids"]) >= max_length)
    if cut:
        console.warn(f"{cut:,} of {len(items):,} texts reach {max_length} tokens: the longer ones were cut there")
    return items


# --------------------------------------------------------------------------- 2-3. model and strategy


def head_names(model: Any) -> list[str]:
    """Names of the modules above the backbone that hold weights: the classification head."""
    return [name for name, _ in head_modules(model)]


def block_list(model: Any) -> tuple[str, int]:
    """(qualified name, length) of the module list holding the transformer blocks."""
    import torch

    from tuneloop.train.methods import block_count

    blocks = block_count(model)
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.ModuleList) and len(module) == blocks:
            return name, len(module)
    raise UserError(
        f"cannot find the transformer blocks of this {type(model).__name__} (no list of {blocks} layers); "
        "use method.name full or features"
    )


def trainable_names(model: Any, strategy: str, k: int) -> set[str]:
    """The parameters a strategy trains (before any adapter): head; + top k blocks and above; or all."""
    names = [name for name, _ in model.named_parameters()]
    if strategy == "full":
        return set(names)
    heads = tuple(f"{h}." for h in head_names(model))
    chosen = {n for n in names if n.startswith(heads)}
    if strategy == "features":
        return chosen
    blocks, count = block_list(model)
    if k > count:
        raise UserError(f"classify.last_k is {k} but the model has {count} blocks; set it to at most {count}")
    top = tuple(f"{blocks}.{i}." for i in range(count - k, count))
    past_blocks = False
    for n in names:
        in_blocks = n.startswith(f"{blocks}.")
        past_blocks = past_blocks or in_blocks
        # Parameters registered after the blocks (BERT's pooler, a decoder's final norm) sit above them.
        if n.startswith(top) or (past_blocks and not in_blocks):
            chosen.add(n)
    return chosen


def load_classifier(cfg: ProjectConfig, labels: list[str]) -> tuple[Any, Any]:
    """The configured base as a sequence classifier over `labels`, in float32, and its tokenizer."""
    import torch

    from tuneloop.models import load_sequence_classifier

    torch.manual_seed(cfg.train.seed)  # the new head's initialisation is part of the run
    return load_sequence_classifier(
        cfg.model.name, labels, revision=cfg.model.revision, trust_remote_code=cfg.model.trust_remote_code
    )


def apply_strategy(model: Any, cfg: ProjectConfig) -> Any:
    """Freeze what the strategy does not train; for lora, wrap in PEFT adapters (head trained in full)."""
    strategy = cfg.method.name
    if strategy == "lora":
        import peft

        from tuneloop.train.methods import LORA_TARGETS, linear_names

        lora = cfg.method.lora
        targets = cfg.method.lora.target_modules
        if targets in ("auto", "all-linear"):
            model_type = getattr(model.config, "model_type", "")
            targets = LORA_TARGETS.get(model_type) if targets == "auto" else None
            targets = targets or linear_names(model)
        config = peft.LoraConfig(
            r=lora.r,
            lora_alpha=lora.alpha,
            lora_dropout=lora.dropout,
            target_modules=list(targets),
            modules_to_save=head_names(model),
            task_type="SEQ_CLS",
        )
        return peft.get_peft_model(model, config)
    keep = trainable_names(model, strategy, cfg.classify.last_k)
    for name, param in model.named_parameters():
        param.requires_grad_(name in keep)
    return model


def logistic_head(model: Any, cfg: ProjectConfig) -> Any | None:
    """The linear layer a `features` run fits by logistic regression: the head, when it is one linear layer
    (BERT's classifier, a decoder's score) and classify.head is logistic; None means train the head by
    gradient descent (DistilBERT's and RoBERTa's two-layer heads, or classify.head: linear)."""
    if cfg.method.name != "features" or cfg.classify.head != "logistic":
        return None
    return linear_head(model)


def linear_head(model: Any) -> Any | None:
    """The classification head when it is one linear layer (BERT's classifier, a decoder's score), else None."""
    import torch

    heads = head_modules(model)
    if len(heads) != 1:
        return None
    return heads[0][1] if isinstance(heads[0][1], torch.nn.Linear) else None


def warm_start_head(model: Any, cfg: ProjectConfig) -> Any | None:
    """The head a last_k, lora or full run starts from a fitted probe (classify.warm_start: probe), or None."""
    if cfg.method.name == "features" or cfg.classify.warm_start != "probe":
        return None
    head = linear_head(model)
    if head is None:
        console.note("classify.warm_start probe needs a one-layer head; this model's head starts from random weights")
    return head


def fit_logistic_head(
    head: Any, model: Any, tokenizer: Any, items: list[dict], texts: list[str], weights: list[float] | None, cfg
) -> int:
    """Fit the head on the frozen model's features of the train texts; return the L-BFGS iterations."""
    import numpy as np
    import torch

    features = head_inputs(model, tokenizer, texts, max_tokens(model, cfg.data.max_length))
    targets = np.array([item["labels"] for item in items])
    has_bias = head.bias is not None  # a decoder's score layer has none
    weight, bias, iterations = fit_probe(features, targets, head.out_features, weights, cfg.train.seed, has_bias)
    with torch.no_grad():
        head.weight.copy_(torch.as_tensor(weight, dtype=head.weight.dtype))
        if has_bias:
            head.bias.copy_(torch.as_tensor(bias, dtype=head.bias.dtype))
    return iterations


def validation_row(model: Any, tokenizer: Any, texts: list[str], targets: list[int], step: int) -> dict[str, Any]:
    """A metrics.jsonl row like the Trainer's: validation loss, accuracy and macro-F1 of the model as it is."""
    import numpy as np

    probs = probabilities(model, tokenizer, texts)
    picked = probs[np.arange(len(targets)), targets]
    row = {"step": step, "epoch": 1.0, "time": round(time.time(), 3)}
    row["eval_loss"] = float(-np.log(np.clip(picked, 1e-12, None)).mean())
    return row | {f"eval_{k}": v for k, v in scores(probs.argmax(1), np.array(targets)).items()}


# --------------------------------------------------------------------------- the run


def train(cfg: ProjectConfig, *, run_dir: Path | None = None, resume: Path | None = None) -> ClassifyResult:
    """Train a classifier for `cfg` (task.type classification) on the prepared splits; write a run folder.

    `resume` is a run folder to continue from its last complete checkpoint (the same config and data);
    `run_dir` an empty folder to start a new run in (default: a fresh one under output.dir).
    """
    from transformers.utils import logging as hf_logging

    from tuneloop import registry, runs
    from tuneloop.config import RESOLVED_FILENAME
    from tuneloop.train.methods import count_parameters
    from tuneloop.train.resume import check_same_config, check_same_data

    hf_logging.set_verbosity_error()
    if resume is not None:
        check_same_config(cfg, Path(resume) / RESOLVED_FILENAME, RESUME_SECTIONS)
    train_examples, manifest = load_split(cfg, "train")
    val_examples, _ = load_split(cfg, "val")
    test_examples, _ = load_split(cfg, "test")
    if resume is not None:
        check_same_data(manifest, Path(resume))
    if not train_examples:
        raise UserError(f"the train split in {cfg.path(cfg.data.prepared_dir)} is empty; nothing to train on")
    for name, examples in (("train", train_examples), ("val", val_examples)):
        check_rows(examples, name)
    labels = label_list(cfg, {"train": train_examples, "val": val_examples, "test": test_examples})
    if len({e.label for e in train_examples}) < 2:
        raise UserError("the train split holds one label only; a classifier needs examples of at least two")
    label_ids = {label: i for i, label in enumerate(labels)}
    resume_from = resume_point(Path(resume), labels) if resume is not None else None

    model, tokenizer = load_classifier(cfg, labels)
    limit = max_tokens(model, cfg.data.max_length)
    train_items = tokenize(train_examples, tokenizer, label_ids, limit)
    val_items = tokenize(val_examples, tokenizer, label_ids, limit) if val_examples else []
    if cfg.classify.resample == "oversample":
        before = len(train_items)
        train_items = oversample(train_items, cfg.train.seed)
        console.note(f"oversampled the smaller classes: {before:,} → {len(train_items):,} train examples")
    train_counts = Counter(e.label for e in train_examples)
    weights = class_weights(cfg.train.class_weights, labels, [e.label for e in train_examples])
    warm = warm_start_head(model, cfg)
    warm_iterations = checkpoint.info(resume_from).get("warm_start_iterations") if resume_from else None
    if warm is not None and resume_from is None:  # before the strategy: a LoRA head's trained copy is made from it
        console.note(f"warm start: fitting the head by logistic regression on {len(train_items):,} frozen features")
        texts = [item["text"] for item in train_items]
        warm_iterations = fit_logistic_head(warm, model, tokenizer, train_items, texts, weights, cfg)
    model = apply_strategy(model, cfg)
    params = count_parameters(model)
    console.note(f"method {cfg.method.name}: {params.describe()}")
    if not val_items:
        console.warn("no validation split: no best checkpoint or early stopping; final/ is the last step")

    if resume is None:
        run_dir = run_dir if run_dir is not None else runs.new_run_dir(cfg)
        cfg.save_resolved(run_dir)
        (run_dir / "data-manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
        (run_dir / LABELS_FILE).write_text(json.dumps({"labels": labels}, indent=2) + "\n")
        registry.write_row_hashes(run_dir, cfg.path(cfg.data.prepared_dir), None)
        runs.record_environment(run_dir, cfg.root)
        runs.write_base_model(cfg, run_dir)
        registry.record(cfg, run_dir)
    else:
        run_dir = Path(resume)

    started = time.perf_counter()
    head = logistic_head(model, cfg)
    if head is not None:
        outcome = _fit_features(head, model, tokenizer, train_items, val_items, weights, cfg, run_dir)
    else:
        fit = Fit(train_items, val_items, weights, resume_from, {"warm_start_iterations": warm_iterations})
        outcome = _descend(model, tokenizer, fit, cfg, run_dir)
    elapsed = time.perf_counter() - started
    final_dir = save_final(model, tokenizer, run_dir, labels) if outcome.status != "stopped" else None
    summary = {
        "status": outcome.status,
        "task": "classification",
        "steps": outcome.steps,
        "max_steps": outcome.max_steps,
        "method": cfg.method.name,
        "strategy": _describe_strategy(cfg, head is not None),
        "parameters": {"trainable": params.trainable, "total": params.total},
        "labels": labels,
        "examples": {"train": len(train_items), "val": len(val_items)},
        "train_label_counts": {label: train_counts.get(label, 0) for label in labels},
        "class_weights": dict(zip(labels, weights, strict=True)) if weights is not None else None,
        "resample": cfg.classify.resample,
        "head_learning_rate": _head_rate(cfg),
        "warm_start": {"probe_iterations": warm_iterations} if warm is not None else None,
        "max_tokens": limit,
        "best": {"metric": f"eval_{cfg.train.metric}", "value": outcome.best, "step": outcome.best_step},
        "this_session": {"seconds": round(elapsed, 2), "resumed_from": resume_from.name if resume_from else None},
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "final": str(final_dir.relative_to(run_dir)) if final_dir else None,
        "signal": outcome.signal,
    }
    runs.write_summary(run_dir, summary)
    runs.plot_losses(run_dir)
    registry.record(cfg, run_dir)
    if outcome.signal:
        console.note(f"stopped by {outcome.signal} at step {outcome.steps}; continue: `tuneloop train --resume`")
    return ClassifyResult(run_dir, outcome.status, outcome.steps, final_dir, summary)


# The config sections a resumed classifier run must share with the run it continues (train's length and
# logging may change, as for any resume).
RESUME_SECTIONS = ("model", "data", "method", "train", "classify")


def resume_point(run_dir: Path, labels: list[str]) -> Path:
    """The last complete checkpoint of `run_dir`, checked: safetensors weights, the same label map."""
    from tuneloop.models import refuse_pickled_weights

    last = checkpoint.latest(run_dir / "checkpoints")
    if last is None:
        raise UserError(
            f"{run_dir} has no complete checkpoint to resume from (a features run with a logistic head fits in one "
            "go and keeps none); start a new run instead"
        )
    refuse_pickled_weights(last, "the checkpoint to resume")
    saved = json.loads((run_dir / LABELS_FILE).read_text())["labels"] if (run_dir / LABELS_FILE).is_file() else None
    if saved != labels:
        raise UserError(
            f"the run being resumed classifies into {saved}, the data now into {labels}; re-prepare the data it was "
            "trained on, or start a new run without --resume"
        )
    console.note(f"resuming {run_dir.name} from {last.name}")
    return last


@dataclass
class Outcome:
    """How training went, whichever way the head was fitted."""

    status: str  # completed | early_stopped | stopped (by a signal; resume continues it)
    steps: int  # optimizer steps, or L-BFGS iterations for a logistic head
    max_steps: int
    best: float | None
    best_step: int | None
    signal: str | None = None


@dataclass
class Fit:
    """What gradient descent trains on, and where it starts."""

    train_items: list[dict]
    val_items: list[dict]
    weights: list[float] | None
    resume_from: Path | None  # a checkpoint
    record: dict[str, Any]  # kept in every checkpoint's marker, beside KeepBest's state


def _descend(model, tokenizer, fit: Fit, cfg: ProjectConfig, run_dir: Path) -> Outcome:
    """Gradient descent with Transformers' Trainer; the best validation pass's weights are restored.

    Checkpoints every train.save_every steps (and on SIGTERM or Ctrl-C) make the run resumable.
    """
    import torch
    from transformers import DataCollatorWithPadding, PrinterCallback

    from tuneloop import runs
    from tuneloop.train.callbacks import GracefulStop

    best = KeepBest(cfg.train.metric, cfg.train.metric != "loss", cfg.train.early_stopping_patience)
    best.model = model
    checkpoints = run_dir / "checkpoints"
    metrics_file = MetricsFile(run_dir / runs.METRICS)
    checkpoint.remove_incomplete(checkpoints)
    if fit.resume_from is not None:
        best.load(fit.resume_from, checkpoint.info(fit.resume_from))
        if dropped := metrics_file.rewind(checkpoint.step_of(fit.resume_from)):
            console.note(f"dropped {dropped} metrics rows logged after {fit.resume_from.name}: they are trained again")
    stop = GracefulStop()
    saver = Checkpoints(best, cfg.train.keep_last, fit.record)
    trainer = make_trainer_class()(
        model=model,
        args=training_arguments(cfg, run_dir, bool(fit.val_items), fit.resume_from is not None),
        train_dataset=_tensors_only(fit.train_items),
        eval_dataset=_tensors_only(fit.val_items) or None,
        data_collator=DataCollatorWithPadding(tokenizer),
        processing_class=tokenizer,
        compute_metrics=compute_metrics,
        callbacks=[metrics_file, Progress(), best.callback, saver.callback, stop],
        class_weights=torch.tensor(fit.weights) if fit.weights is not None else None,
        head_learning_rate=_head_rate(cfg),
    )
    trainer.remove_callback(PrinterCallback)
    stop.install()
    try:
        trainer.train(resume_from_checkpoint=str(fit.resume_from) if fit.resume_from else None)
    finally:
        stop.uninstall()
    state = trainer.state
    if stop.signal is not None:
        return Outcome("stopped", state.global_step, state.max_steps, best.best, best.best_step, stop.signal)
    if best.weights is not None and best.best_step != state.global_step:
        console.note(f"final weights come from the best validation pass (step {best.best_step}, {best.best:.4f})")
    best.restore()
    status = "early_stopped" if state.global_step < state.max_steps else "completed"
    return Outcome(status, state.global_step, state.max_steps, best.best, best.best_step)


def _head_rate(cfg: ProjectConfig) -> float | None:
    """The head's own learning rate, when the encoder trains too (features trains the head alone)."""
    return None if cfg.method.name == "features" else cfg.classify.head_learning_rate


def _tensors_only(items: list[dict]) -> list[dict]:
    return [{k: v for k, v in item.items() if k != "text"} for item in items]


def _fit_features(head, model, tokenizer, train_items, val_items, weights, cfg, run_dir: Path) -> Outcome:
    """`features` with a one-layer head: logistic regression on the frozen features, to convergence.

    The train texts go through the frozen model once; the head's weights are the fitted coefficients.
    Validation is measured before (the untrained head) and after, into metrics.jsonl like the Trainer's.
    """
    from tuneloop import runs
    from tuneloop.classifier import PROBE_ITERATIONS

    texts = [item["text"] for item in train_items]
    val_texts, val_targets = [item["text"] for item in val_items], [item["labels"] for item in val_items]
    rows = [validation_row(model, tokenizer, val_texts, val_targets, 0)] if val_items else []
    console.note(f"fitting the head by logistic regression on {len(texts):,} train texts' frozen features")
    iterations = fit_logistic_head(head, model, tokenizer, train_items, texts, weights, cfg)
    if iterations >= PROBE_ITERATIONS:
        console.warn(f"the logistic head did not converge in {PROBE_ITERATIONS} iterations; it is used as it is")
    if val_items:
        rows.append(validation_row(model, tokenizer, val_texts, val_targets, iterations))
    with (run_dir / runs.METRICS).open("a") as f:
        f.writelines(json.dumps(row) + "\n" for row in rows)
    value = rows[-1][f"eval_{cfg.train.metric}"] if val_items else None
    return Outcome("completed", iterations, PROBE_ITERATIONS, value, iterations if val_items else None)


def _describe_strategy(cfg: ProjectConfig, logistic: bool) -> str:
    return {
        "features": "frozen encoder, " + ("logistic-regression head" if logistic else "linear head by gradient"),
        "last_k": f"top {cfg.classify.last_k} blocks and the head",
        "lora": f"LoRA r={cfg.method.lora.r} on the blocks, full head",
        "full": "every weight",
    }[cfg.method.name]


def save_final(model: Any, tokenizer: Any, run_dir: Path, labels: list[str]) -> Path:
    """final/: a complete classifier (LoRA merged in), its tokenizer and labels.json, renamed into place."""
    import shutil

    if hasattr(model, "merge_and_unload"):
        model = model.merge_and_unload()
    out, tmp = run_dir / "final", run_dir / "final.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(str(tmp), safe_serialization=True)
    tokenizer.save_pretrained(str(tmp))
    (tmp / LABELS_FILE).write_text(json.dumps({"labels": labels}, indent=2) + "\n")
    checkpoint.fsync_tree(tmp)
    shutil.rmtree(out, ignore_errors=True)
    os.replace(tmp, out)
    return out
