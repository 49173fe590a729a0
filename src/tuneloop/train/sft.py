"""Supervised fine-tuning: `tuneloop train`.

The recipe, top to bottom:
1. read the prepared splits and check they match the model (chat template hash);
2. render every example with the same Renderer that `tuneloop data inspect` shows, so only the
   assistant tokens (and their end-of-turn token) are trained, with per-message weights;
3. load the model and wrap it for the method (PEFT for adapters, bitsandbytes for qlora);
4. choose the precision and the batch layout from the machine and the data, and say why;
5. train with Transformers' Trainer: a loss summed over trained tokens and divided by their count
   in the whole accumulated batch (so gradient accumulation equals the larger batch exactly),
   crash-safe checkpoints, exact resume, NaN guard, early stopping, overfitting alarm;
6. write the final adapter or model with its tokenizer and chat template, loss.png and summary.json.
"""

from __future__ import annotations

import os
import shutil
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tuneloop import console
from tuneloop.config import RESOLVED_FILENAME, ProjectConfig
from tuneloop.data.batching import Collator, choose_layout, shared_prefix_length
from tuneloop.data.formats import Example, RowError
from tuneloop.data.prepared import load_split
from tuneloop.errors import UserError
from tuneloop.train import checkpoint
from tuneloop.train.callbacks import BestAndEarlyStop, GracefulStop, MetricsFile, OverfitAlarm, Progress
from tuneloop.train.common import (
    TrainResult,
    check_template,
    checkpoint_bytes,
    choose_precision,
    guarded_train,
    load_model,
    record_start,
    run_folder,
    save_atomically,
    save_final,
    subset,
    training_arguments,
)
from tuneloop.train.guards import StepGuard
from tuneloop.train.loss import example_losses, token_loss
from tuneloop.train.resume import check_same_config, check_same_data

# The evaluation stage's part in training, passed in by the caller (training never imports a sibling
# stage): a factory for the function run on the model at every evaluation, and the direction of a metric.
Evaluator = Callable[[Any], dict[str, float]]
EvaluatorFactory = Callable[[ProjectConfig, list[Example], Any], Evaluator | None]
MetricDirection = Callable[[str], bool]


def loss_direction(metric: str) -> bool:
    """Direction of the metrics training measures by itself: loss falls, token_accuracy rises."""
    if metric not in ("loss", "token_accuracy"):
        raise UserError(
            f"train.metric {metric!r} is measured by the evaluation stage; pass train(higher_is_better=...)"
        )
    return metric == "token_accuracy"


# --------------------------------------------------------------------------- 1-2. data


def check_kinds(examples: list[Example], split: str) -> None:
    """Refuse examples that supervised fine-tuning must not train on (preference pairs, ranked answers, labels)."""
    from collections import Counter

    from tuneloop.data.render import TRAINED_BY

    wrong = Counter(e.kind for e in examples if e.kind in TRAINED_BY)
    if wrong:
        found = ", ".join(f"{n:,} {kind}" for kind, n in wrong.items())
        how = "; ".join(f"{kind} rows are trained by {TRAINED_BY[kind]}" for kind in wrong)
        raise UserError(
            f"the {split} split holds {found} examples, which `tuneloop train` (supervised fine-tuning) does not "
            f"train: {how}. Train on chat, prompt/completion, alpaca, sharegpt or text rows instead"
        )


def render_split(examples: list[Example], tokenizer: Any, cfg: ProjectConfig, split: str) -> list[dict[str, Any]]:
    """Render with the shared Renderer; over-long and untrainable examples are counted, never silent."""
    from tuneloop.data.render import Renderer

    renderer = Renderer(tokenizer)
    items: list[dict[str, Any]] = []
    too_long, untrained, failed, warned = 0, 0, [], 0
    max_length = cfg.data.max_length
    for start in range(0, len(examples), 256):
        chunk = examples[start : start + 256]
        for ex, result in zip(chunk, renderer.render_many(chunk), strict=True):
            if isinstance(result, RowError):
                failed.append(f"{ex.id}: {result}")
                continue
            warned += bool(result.warnings)
            ids, weights = result.input_ids, result.weights
            if len(ids) > max_length:
                too_long += 1
                if cfg.data.long != "truncate":
                    continue
                ids, weights = ids[:max_length], weights[:max_length]
            if not any(w > 0 for w in weights[1:]):
                untrained += 1
                continue
            items.append({"id": ex.id, "input_ids": ids, "weights": weights})
    if failed:
        raise UserError(
            f"{len(failed)} {split} examples cannot be rendered with this model's template:\n  "
            + "\n  ".join(failed[:5])
            + "\nre-run `tuneloop data prepare` with this model so they are rejected with their line numbers"
        )
    if too_long and cfg.data.long == "error":
        raise UserError(
            f"data.max_length {max_length} truncates {too_long:,} of {len(examples):,} {split} examples "
            f"({too_long / len(examples):.1%}); raise data.max_length, or set data.long=drop"
        )
    if too_long:
        action = "truncated" if cfg.data.long == "truncate" else "dropped"
        console.warn(f"{too_long:,} {split} examples are longer than data.max_length {max_length} and were {action}")
    if untrained:
        console.warn(f"{untrained:,} {split} examples have no trained tokens after truncation and were dropped")
    if warned:
        console.warn(
            f"{warned:,} {split} examples: the template does not end assistant turns with {renderer.end_of_turn}"
        )
    console.note(f"{split}: {len(examples):,} examples in, {len(items):,} rendered for training")
    return items


# --------------------------------------------------------------------------- 3-4. model, precision


# --------------------------------------------------------------------------- 5. the loss and the trainer


def make_trainer_class() -> type:
    """The one Trainer subclass: our loss, our evaluation, atomic checkpoints. Built lazily (imports torch)."""
    import torch
    from transformers import Trainer

    class SFTTrainer(Trainer):
        loss_is_scaled_for_ga = True  # we divide by trained tokens across the whole accumulated batch

        def __init__(self, *args: Any, keep_last: int, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            # Makes Trainer count trained tokens over all micro-batches of a step (`num_items_in_batch`).
            self.model_accepts_loss_kwargs = True
            self.keep_last = keep_last
            self.step_example_ids: list[str] = []
            self.tokens = {"trained": 0, "real": 0, "computed": 0}
            self._ids_step = -1
            self.generation_metrics = None  # set by train(): metrics on generated validation answers
            self.guard = StepGuard(self)
            self.add_callback(self.guard)

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            if self._ids_step != self.state.global_step:
                self.step_example_ids, self._ids_step = [], self.state.global_step
            self.step_example_ids += inputs["example_ids"]
            if num_items_in_batch is None:
                # Without the step's token count, a per-micro-batch mean summed over grad_accum micro-batches
                # is not the step's mean: refuse rather than train on a silently different loss.
                raise RuntimeError(
                    "Trainer did not pass num_items_in_batch to compute_loss; the loss cannot be normalised over "
                    "the whole accumulated step. This Transformers version is not supported: use constraints.txt"
                )
            loss_sum, count, _ = token_loss(model, inputs)
            loss = loss_sum / num_items_in_batch
            if self.args.average_tokens_across_devices and self.args.world_size > 1:
                loss = loss * self.args.world_size  # DDP averages gradients; the token count is already global
            self.guard.check_loss(loss, self.state.global_step + 1, self.step_example_ids)
            if model.training:
                self.tokens["trained"] += int(count)
                self.tokens["real"] += int(inputs["tokens"])
                self.tokens["computed"] += int(inputs["padded_tokens"])
            return (loss, None) if return_outputs else loss

        def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix="eval"):
            """Token-weighted validation loss and next-token accuracy on the trained tokens."""
            loader = self.get_eval_dataloader(eval_dataset)
            model = self.model
            model.eval()
            totals = torch.zeros(3, dtype=torch.float64)
            with torch.no_grad(), self.accelerator.autocast():
                for batch in loader:
                    # Per example, so that gathering drops the rows Accelerate repeats to even out the
                    # processes' last batches: every validation example counts exactly once.
                    stats = example_losses(model, self._prepare_inputs(batch))
                    totals += self.accelerator.gather_for_metrics(stats).sum(0).cpu()
            loss_sum, count, correct = totals.tolist()
            metrics = {
                f"{metric_key_prefix}_loss": loss_sum / max(count, 1),
                f"{metric_key_prefix}_token_accuracy": correct / max(count, 1),
            }
            if self.generation_metrics is not None:  # greedy, so every rank gets the same values
                extra = self.generation_metrics(self.accelerator.unwrap_model(model))
                metrics.update({f"{metric_key_prefix}_{k}": v for k, v in extra.items()})
            self.log(metrics)
            self.control = self.callback_handler.on_evaluate(self.args, self.state, self.control, metrics)
            return metrics

        def _save_checkpoint(self, model, trial):
            save_atomically(self, lambda: super(SFTTrainer, self)._save_checkpoint(model, trial))

    return SFTTrainer


# --------------------------------------------------------------------------- the run


def train(
    cfg: ProjectConfig,
    *,
    resume: Path | None = None,
    run_dir: Path | None = None,
    model: Any = None,
    tokenizer: Any = None,
    evaluator: EvaluatorFactory | None = None,
    higher_is_better: MetricDirection = loss_direction,
) -> TrainResult:
    """Run supervised fine-tuning for `cfg`.

    `resume` is a run folder to continue from its last checkpoint; `run_dir` is an empty folder, made by
    the caller, to start a new run in (default: a fresh one under output.dir). `evaluator` and
    `higher_is_better` come from the evaluation stage (`tuneloop.evaluate.runner.training_evaluator` and
    `.higher_is_better`); without them only loss and token_accuracy are measured during training.
    """
    import torch
    from transformers import PrinterCallback
    from transformers.integrations import TensorBoardCallback
    from transformers.utils import logging as hf_logging

    from tuneloop import registry, runs
    from tuneloop.train.budget import apply as budget_steps
    from tuneloop.train.methods import count_parameters, wrap

    hf_logging.set_verbosity_error()
    console.err.quiet = int(os.environ.get("RANK", "0")) != 0  # one process speaks under torchrun
    warnings.filterwarnings("ignore", category=FutureWarning, module="transformers|peft")
    if resume is not None:
        check_same_config(cfg, Path(resume) / RESOLVED_FILENAME)
    rank0 = int(os.environ.get("RANK", "0")) == 0
    if evaluator is None and (cfg.train.eval_metrics or cfg.train.track_forgetting):
        raise UserError(
            "train.eval_metrics and train.track_forgetting are measured by the evaluation stage; "
            "pass train(evaluator=tuneloop.evaluate.runner.training_evaluator) or run `tuneloop train`"
        )
    metric_rises = higher_is_better(cfg.train.metric)

    train_examples, manifest = load_split(cfg, "train")
    val_examples, _ = load_split(cfg, "val")
    if resume is not None:
        check_same_data(manifest, Path(resume))
    if not train_examples:
        raise UserError(f"the train split in {cfg.path(cfg.data.prepared_dir)} is empty; nothing to train on")
    check_kinds(train_examples, "train")
    check_kinds(val_examples, "val")
    if cfg.train.examples is not None:
        train_examples = subset(train_examples, cfg.train.examples, cfg.data.seed)
    if cfg.train.val_examples is not None and cfg.train.val_examples < len(val_examples):
        val_examples = subset(val_examples, cfg.train.val_examples, cfg.data.seed)
    if model is None:
        model, tokenizer = load_model(cfg)
    check_template(manifest, tokenizer)
    train_items = render_split(train_examples, tokenizer, cfg, "train")
    val_items = render_split(val_examples, tokenizer, cfg, "val") if val_examples else []
    if not train_items:
        raise UserError("no train example has any trained token left; check data.max_length and the rejects report")
    if not val_items:
        console.warn("no validation split: no early stopping, best checkpoint or overfitting alarm")

    torch.manual_seed(cfg.train.seed)  # adapter initialisation is part of the run's randomness
    base_type = getattr(model.config, "model_type", "")
    model = wrap(model, cfg, cfg.train.gradient_checkpointing)
    params = count_parameters(model)
    console.note(f"method {cfg.method.name}: {params.describe()}")

    virtual = cfg.method.prompt.num_virtual_tokens if cfg.method.name == "prompt_tuning" else 0
    can_pack = cfg.method.name not in ("prompt_tuning", "prefix_tuning")
    lengths = [len(i["input_ids"]) for i in train_items]
    shared = shared_prefix_length(train_items)
    layout = choose_layout(
        cfg.train.batching, lengths, cfg.train.batch_size, model.config, can_pack, shared, cfg.data.max_length
    )
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    share = layout.layout == "shared_prefix"
    collator = Collator(pad_id, packed=layout.layout == "packed" or share, prefix_tokens=virtual, share_prefix=share)
    probe = collator(train_items[: cfg.train.batch_size])
    precision, why = choose_precision(cfg.train.precision, model, probe)
    console.note(f"precision {precision} ({why}); batches {layout.layout} ({layout.reason})")
    cfg, budget = budget_steps(cfg, resume, model, collator, train_items, val_items, precision, token_loss)
    run_dir, resume_from = (run_dir, None) if run_dir is not None and resume is None else run_folder(cfg, resume)
    console.note(f"model type {base_type or 'unknown'}; run folder {run_dir}")

    if rank0 and resume_from is None:
        used = {e.id for e in train_examples} if cfg.train.examples is not None else None
        record_start(cfg, run_dir, manifest, used)
    checkpoints = run_dir / "checkpoints"
    needed = checkpoint_bytes(model, params.trainable, cfg.method.name)
    metrics_file = MetricsFile(run_dir / runs.METRICS)
    if rank0:
        checkpoint.remove_incomplete(checkpoints)
        checkpoint.check_disk(checkpoints, needed)
        if resume_from is not None and (dropped := metrics_file.rewind(checkpoint.step_of(resume_from))):
            console.note(f"dropped {dropped} metrics rows logged after {resume_from.name}: they are trained again")

    args = training_arguments(cfg, run_dir, precision, layout.layout, bool(val_items), resume_from is not None)
    stop = GracefulStop()
    callbacks = [
        metrics_file,
        Progress(),
        BestAndEarlyStop(cfg.train.metric, metric_rises, cfg.train.early_stopping_patience),
        OverfitAlarm(cfg.train.overfit_patience),
        stop,
    ]
    if "tensorboard" in cfg.train.report_to:
        board = TensorBoardCallback()
        board.logging_dir = str(run_dir / "tensorboard")
        callbacks.append(board)
    trainer = make_trainer_class()(
        model=model,
        args=args,
        train_dataset=train_items,
        eval_dataset=val_items or None,
        data_collator=collator,
        processing_class=tokenizer,
        callbacks=callbacks,
        keep_last=cfg.train.keep_last,
    )
    stop.accelerator = trainer.accelerator
    if val_items and evaluator is not None:
        trainer.generation_metrics = evaluator(cfg, val_examples, tokenizer)
    trainer.remove_callback(PrinterCallback)  # Progress prints instead

    elapsed = guarded_train(trainer, stop, resume_from, checkpoints, needed)
    state = trainer.state

    stopped = stop.signal is not None
    early = not stopped and state.global_step < state.max_steps
    status = "stopped" if stopped else ("early_stopped" if early else "completed")
    try:
        final_dir = None if stopped else save_final(trainer, tokenizer, run_dir, state)
    except OSError as e:
        if not checkpoint.is_disk_full(e):
            raise
        shutil.rmtree(run_dir / "final.tmp", ignore_errors=True)
        raise UserError(checkpoint.disk_full_message(checkpoints, "final/", needed)) from None
    kinds = ("trained", "real", "computed")
    counted = torch.tensor([trainer.tokens[k] for k in kinds], dtype=torch.float64)
    tokens = dict(zip(kinds, trainer.accelerator.reduce(counted, "sum").int().tolist(), strict=True))
    summary = {
        "status": status,
        "steps": state.global_step,
        "max_steps": state.max_steps,
        "method": cfg.method.name,
        "processes": trainer.args.world_size,
        "parameters": {"trainable": params.trainable, "total": params.total},
        "precision": {"chosen": precision, "why": why},
        "batching": {"layout": layout.layout, "why": layout.reason, "padding_fraction": layout.padding_fraction},
        "examples": {"train": len(train_items), "val": len(val_items)},
        "best": {"metric": f"eval_{cfg.train.metric}", "value": state.best_metric, "step": state.best_global_step},
        "this_session": {
            "seconds": round(elapsed, 2),
            "trained_tokens": tokens["trained"],
            "trained_tokens_per_second": round(tokens["trained"] / max(elapsed, 1e-9), 2),
            "tokens": tokens["real"],
            "computed_tokens": tokens["computed"],
            "padding_fraction": round(1 - tokens["real"] / max(tokens["computed"], 1), 4),
        },
        "final": str(final_dir.relative_to(run_dir)) if final_dir else None,
        "signal": stop.signal if stopped else None,
        "time_budget": budget.to_json() if budget else None,
    }
    if rank0:
        runs.write_summary(run_dir, summary)
        runs.plot_losses(run_dir)
        registry.record(cfg, run_dir)
        if stopped:
            console.note(f"stopped by {stop.signal} at step {state.global_step}; continue: `tuneloop train --resume`")
    return TrainResult(run_dir, status, state.global_step, final_dir, summary)
