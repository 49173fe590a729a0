"""The classifier's trainer: Transformers' Trainer through its public hooks.

- the loss: PyTorch's class-weighted cross-entropy (`compute_loss`);
- the optimizer: Trainer's own class and weight-decay split, with the classification head in parameter
  groups of its own at `classify.head_learning_rate` (`create_optimizer`, Trainer's documented hook);
- `KeepBest`: the best validation pass's trainable weights, kept in memory, and early stopping;
- `Checkpoints`: each checkpoint Trainer writes is made crash-safe (flushed, then marked complete, as
  train/checkpoint.py defines) with KeepBest's state beside it, so `tuneloop train --resume` continues
  the run exactly, best weights included.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tuneloop import console
from tuneloop.classifier import head_modules
from tuneloop.config import ProjectConfig
from tuneloop.train import checkpoint


def weighted_loss(logits: Any, labels: Any, weights: Any) -> Any:
    """Cross-entropy, each example weighted by its class: sum(w[y] * CE) / sum(w[y]) (a plain mean without)."""
    import torch.nn.functional as F

    return F.cross_entropy(logits.float(), labels, weight=weights)


def scores(predicted: Any, truth: Any) -> dict[str, float]:
    """Accuracy and macro-F1 (scikit-learn) of predicted class ids against the true ones."""
    from sklearn.metrics import accuracy_score, f1_score

    return {
        "accuracy": float(accuracy_score(truth, predicted)),
        "f1": float(f1_score(truth, predicted, average="macro", zero_division=0)),
    }


def head_parameter_ids(model: Any) -> set[int]:
    """Identities of the classification head's parameters (a PEFT model's head copy included)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return {id(p) for _, module in head_modules(base) for p in module.parameters()}


def parameter_groups(
    named: list[tuple[str, Any]], decay: set[str], head_ids: set[int], weight_decay: float, head_rate: float | None
) -> list[dict[str, Any]]:
    """Optimizer parameter groups: Trainer's split by weight decay, with the head in groups of its own at
    `head_rate` (None: one rate for all). Encoder groups come first, so the rate Trainer logs is the encoder's."""
    groups = []
    for is_head in (False, True):
        for decays in (True, False):
            params = [
                p for n, p in named if p.requires_grad and (id(p) in head_ids) == is_head and (n in decay) == decays
            ]
            if not params:
                continue
            group: dict[str, Any] = {"params": params, "weight_decay": weight_decay if decays else 0.0}
            if is_head and head_rate is not None:
                group["lr"] = head_rate
            groups.append(group)
    return groups


def make_trainer_class() -> type:
    """Trainer with the class-weighted loss and the head's own learning rate. Built lazily (imports torch)."""
    from transformers import Trainer

    class ClassifierTrainer(Trainer):
        def __init__(self, *args: Any, class_weights: Any = None, head_learning_rate: float | None = None, **kwargs):
            super().__init__(*args, **kwargs)
            self.class_weights = class_weights
            self.head_learning_rate = head_learning_rate

        def create_optimizer(self, model=None):
            # Trainer's documented hook: the same optimizer class and decay split, the head at its own rate
            # (its scheduler scales every group's rate alike: warmup and decay apply to both).
            if self.optimizer is None and self.head_learning_rate is not None:
                opt_model = self.model if model is None else model
                groups = parameter_groups(
                    list(opt_model.named_parameters()),
                    set(self.get_decay_parameter_names(opt_model)),
                    head_parameter_ids(opt_model),
                    self.args.weight_decay,
                    self.head_learning_rate,
                )
                optimizer_cls, kwargs = self.get_optimizer_cls_and_kwargs(self.args, opt_model)
                self.optimizer = optimizer_cls(groups, **kwargs)
            return super().create_optimizer(model)

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            labels = inputs.pop("labels")
            outputs = model(**inputs)
            weights = None if self.class_weights is None else self.class_weights.to(outputs.logits.device)
            loss = weighted_loss(outputs.logits, labels, weights)
            return (loss, outputs) if return_outputs else loss

    return ClassifierTrainer


def compute_metrics(prediction: Any) -> dict[str, float]:
    return scores(prediction.predictions.argmax(-1), prediction.label_ids)


class KeepBest:
    """Trainer callback: copy the trainable weights at each best validation pass; stop after `patience` without one.

    The weights stay in memory (a classifier is small); `Checkpoints` writes them beside each checkpoint, so a
    resumed run still knows its best pass.
    """

    def __init__(self, metric: str, higher: bool, patience: int | None) -> None:
        from transformers import TrainerCallback

        self.key, self.higher, self.patience = f"eval_{metric}", higher, patience
        self.best: float | None = None
        self.best_step: int | None = None
        self.weights: dict[str, Any] | None = None
        self.since = 0
        self.model: Any = None
        owner = self

        class _Callback(TrainerCallback):
            def on_evaluate(self, args, state, control, metrics=None, **kwargs):
                owner.seen(state, control, metrics or {})

        self.callback = _Callback()

    def seen(self, state: Any, control: Any, metrics: dict[str, float]) -> None:
        value = metrics.get(self.key)
        if value is None or state.global_step == 0:
            return  # step 0 is the untrained head: a reference point, not a candidate
        if self.best is None or (value > self.best if self.higher else value < self.best):
            self.best, self.best_step, self.since = value, state.global_step, 0
            self.weights = {n: p.detach().clone() for n, p in self.model.named_parameters() if p.requires_grad}
            return
        self.since += 1
        if self.patience is not None and self.since >= self.patience:
            console.note(f"early stopping at step {state.global_step}: {self.key} has not improved for {self.since}")
            control.should_training_stop = True

    def restore(self) -> None:
        import torch

        if self.weights is None:
            return
        params = dict(self.model.named_parameters())
        with torch.no_grad():
            for name, value in self.weights.items():
                params[name].copy_(value)

    def state(self) -> dict[str, Any]:
        """What a checkpoint records of the search so far (the weights go beside it, in BEST_WEIGHTS)."""
        return {"best_metric": self.best, "best_step": self.best_step, "evals_since_best": self.since}

    def load(self, folder: Path, state: dict[str, Any]) -> None:
        """Continue from a checkpoint's record and best weights (a resume)."""
        from safetensors.torch import load_file

        self.best, self.best_step, self.since = state["best_metric"], state["best_step"], state["evals_since_best"]
        weights = folder / BEST_WEIGHTS
        self.weights = load_file(str(weights)) if weights.is_file() else None


BEST_WEIGHTS = "best-weights.safetensors"  # in a checkpoint: the trainable weights of the best validation pass


class Checkpoints:
    """Trainer callback: after Trainer writes `checkpoint-<step>/`, add KeepBest's best weights, flush the
    folder to disk and mark it complete (train/checkpoint.py: resume only trusts marked checkpoints), then
    keep the newest `keep_last`. Trainer's on_save event is its public hook for this."""

    def __init__(self, best: KeepBest, keep_last: int, record: dict[str, Any] | None = None) -> None:
        from transformers import TrainerCallback

        owner = self

        class _Callback(TrainerCallback):
            def on_save(self, args, state, control, **kwargs):
                owner.saved(Path(args.output_dir), state.global_step)

        self.best, self.keep_last, self.record, self.callback = best, keep_last, record or {}, _Callback()

    def saved(self, checkpoints: Path, step: int) -> None:
        from safetensors.torch import save_file

        folder = checkpoints / f"{checkpoint.PREFIX}{step}"
        if self.best.weights is not None:
            save_file({n: t.contiguous() for n, t in self.best.weights.items()}, str(folder / BEST_WEIGHTS))
        checkpoint.mark_complete(folder, step, {**self.record, **self.best.state()})
        checkpoint.rotate(checkpoints, self.keep_last, None)


def training_arguments(cfg: ProjectConfig, run_dir: Path, has_val: bool, resuming: bool = False) -> Any:
    """Trainer's settings from the train section (a resumed run does not re-measure step 0)."""
    import torch
    from transformers import TrainingArguments

    t = cfg.train
    on_gpu = torch.cuda.is_available()
    precision = t.precision
    if precision == "auto":  # a CPU classifier of this size trains in fp32; a GPU in bf16 where it can
        precision = "bf16" if on_gpu and torch.cuda.is_bf16_supported() else ("fp16" if on_gpu else "fp32")
    return TrainingArguments(
        output_dir=str(run_dir / "checkpoints"),
        per_device_train_batch_size=t.batch_size,
        per_device_eval_batch_size=max(t.batch_size, 32),
        gradient_accumulation_steps=t.grad_accum,
        num_train_epochs=t.epochs,
        max_steps=t.max_steps or -1,
        learning_rate=t.learning_rate,
        lr_scheduler_type=t.lr_scheduler,
        warmup_steps=t.warmup_ratio,
        weight_decay=t.weight_decay,
        max_grad_norm=t.max_grad_norm,
        bf16=precision == "bf16",
        fp16=precision == "fp16",
        use_cpu=not on_gpu,
        seed=t.seed,
        data_seed=t.seed,
        logging_steps=t.log_every,
        logging_first_step=True,
        eval_strategy="steps" if has_val else "no",
        eval_on_start=has_val and not resuming,  # the untrained model's validation figures are the zero point
        eval_steps=t.eval_every,
        save_strategy="steps",  # for resume; the best weights are kept in memory (KeepBest) and in each checkpoint
        save_steps=t.save_every,
        save_total_limit=None,  # retention is Checkpoints': only complete checkpoints count
        report_to=[r for r in t.report_to if r != "tensorboard"],
        disable_tqdm=True,
        dataloader_num_workers=0,
        remove_unused_columns=False,
    )
