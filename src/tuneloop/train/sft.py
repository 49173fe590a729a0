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

import json
import os
import random
import shutil
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
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
from tuneloop.train.guards import NonFiniteError, StepGuard, non_finite_message
from tuneloop.train.loss import example_losses, token_loss
from tuneloop.train.resume import check_same_config, check_same_data

# Config sections that shape the trained weights; a resume must match them (task and eval may differ).
# bf16 autocast is used on CPU only when its loss on a real batch is this close to fp32's.
BF16_TOLERANCE = 1e-2


@dataclass
class TrainResult:
    run_dir: Path
    status: str  # completed | stopped | early_stopped
    steps: int
    final_dir: Path | None
    summary: dict[str, Any] = field(default_factory=dict)


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


def subset(examples: list[Example], n: int, seed: int) -> list[Example]:
    """A seeded random subset of n examples; for one seed, a smaller subset is always inside a larger one."""
    if n > len(examples):
        raise UserError(
            f"train.examples is {n:,} but the train split has {len(examples):,} examples; "
            "lower train.examples or leave it empty to train on all of them"
        )
    order = list(range(len(examples)))
    random.Random(seed).shuffle(order)
    return [examples[i] for i in sorted(order[:n])]


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


def check_template(manifest: dict, tokenizer: Any) -> None:
    """Refuse to train on data measured with another chat template (or none): lengths and masks would be wrong."""
    import hashlib

    template = getattr(tokenizer, "chat_template", None)
    current = hashlib.sha256(template.encode()).hexdigest() if template else None
    if not manifest.get("tokenized", True):
        console.warn(
            "the prepared data was not measured with a tokenizer, so its lengths and its chat template cannot be "
            "checked against this model's; re-run `tuneloop data prepare` with tokenization to check them"
        )
        return
    if "chat_template_sha256" not in manifest:
        raise UserError(
            "the prepared data's manifest records no chat template hash, so it cannot be checked against this "
            "model's template (it was prepared by an older tuneloop); re-run `tuneloop data prepare`"
        )
    recorded = manifest["chat_template_sha256"]
    if recorded != current:
        if recorded and current:
            what = "a different chat template than this model's"
        elif current:
            what = "no chat template, and this model has one now"
        else:
            what = "a chat template, and this model has none now"
        raise UserError(
            f"the prepared data was measured with {what} (at prepare time: model {manifest.get('model')!r}, "
            f"model.chat_template {manifest.get('chat_template_setting')!r}); "
            "re-run `tuneloop data prepare` with this model and model.chat_template"
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


def cpu_supports_bf16() -> bool:
    import torch

    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def choose_precision(requested: str, model: Any, probe: dict[str, Any] | None) -> tuple[str, str]:
    """(fp32 | bf16 | fp16, reason). On CPU, bf16 only where it is native and matches fp32 on a real batch."""
    import torch

    on_gpu = torch.cuda.is_available()
    if requested != "auto":
        if requested == "fp16" and not on_gpu:
            raise UserError("train.precision=fp16 needs a GPU; on CPU use bf16 (if supported) or fp32")
        if requested == "bf16" and not on_gpu and not cpu_supports_bf16():
            console.warn("this CPU has no native bf16 (avx512_bf16 or AMX): bf16 will be emulated and slow")
        return requested, "set in the config"
    if on_gpu:
        if torch.cuda.is_bf16_supported():
            return "bf16", "GPU supports bf16"
        return "fp16", "GPU without bf16 support"
    if not cpu_supports_bf16():
        return "fp32", "this CPU has no native bf16 (avx512_bf16 or AMX)"
    if probe is None:
        return "fp32", "no batch to check bf16 against fp32"
    with torch.no_grad():
        full = _probe_loss(model, probe)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            half = _probe_loss(model, probe)
    gap = abs(half - full) / max(abs(full), 1e-8)
    if gap <= BF16_TOLERANCE:
        return "bf16", f"native CPU bf16; loss on a real batch within {gap:.2%} of fp32"
    return "fp32", f"bf16 loss differs from fp32 by {gap:.2%} on a real batch (> {BF16_TOLERANCE:.0%})"


def _probe_loss(model: Any, batch: dict[str, Any]) -> float:
    loss_sum, count, _ = token_loss(model, batch)
    return float(loss_sum / max(count, 1))


def load_model(cfg: ProjectConfig) -> tuple[Any, Any]:
    """Base model (4-bit for qlora) and tokenizer (with model.chat_template applied), in train-ready dtype."""
    import torch

    from tuneloop.data.chat_templates import project_model
    from tuneloop.models import quantization_config

    extra: dict[str, Any] = {}
    dtype = cfg.model.dtype
    if dtype == "auto":
        # fp32 master weights for anything trained; a frozen GPU base can live in half precision.
        half = torch.cuda.is_available() and cfg.method.name in ("lora", "dora", "qlora")
        dtype = "auto" if half else "float32"
    if cfg.method.name == "qlora":
        from tuneloop.models import torch_dtype

        compute = torch_dtype("auto")
        extra = {"quantization_config": quantization_config(cfg, compute), "device_map": {"": _device()}}
    model, tokenizer = project_model(cfg, dtype, **extra)
    model.config.use_cache = False  # a KV cache in training disables packed-sequence masks
    return model, tokenizer


def _device() -> str:
    import torch

    return f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}" if torch.cuda.is_available() else "cpu"


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


def save_atomically(trainer: Any, save: Callable[[], None]) -> None:
    """Run Trainer's checkpoint save (`save`) into a staging folder, then fsync it, rename it into place and
    mark it complete, so a crash mid-save never leaves a checkpoint that looks usable. Every trainer of
    tuneloop (`keep_last` set on it) saves through this."""
    checkpoints = Path(trainer.args.output_dir)
    step = trainer.state.global_step
    staging = checkpoint.staging_dir(checkpoints) if trainer.args.should_save else checkpoints / checkpoint.STAGING
    trainer.accelerator.wait_for_everyone()  # every rank writes its RNG state into the staging folder
    trainer.args.output_dir = str(staging)
    try:
        save()
    finally:
        trainer.args.output_dir = str(checkpoints)
    trainer.accelerator.wait_for_everyone()
    best = trainer.state.best_global_step
    trainer.state.best_model_checkpoint = str(checkpoints / f"{checkpoint.PREFIX}{best}") if best else None
    if trainer.args.should_save:
        staged = staging / f"{checkpoint.PREFIX}{step}"
        trainer.state.save_to_json(str(staged / "trainer_state.json"))  # with the real best path
        checkpoint.commit(staged, checkpoints, step, {"best_step": best, "best_metric": trainer.state.best_metric})
        best_dir = checkpoints / f"{checkpoint.PREFIX}{best}" if best else None
        checkpoint.rotate(checkpoints, trainer.keep_last, best_dir)
    trainer.accelerator.wait_for_everyone()


def training_arguments(
    cfg: ProjectConfig, run_dir: Path, precision: str, layout: str, has_val: bool, resuming: bool = False
) -> Any:
    from transformers import TrainingArguments

    return TrainingArguments(**training_kwargs(cfg, run_dir, precision, layout, has_val, resuming))


def training_kwargs(
    cfg: ProjectConfig, run_dir: Path, precision: str, layout: str, has_val: bool, resuming: bool = False
) -> dict[str, Any]:
    """TrainingArguments' settings for a run (a TRL trainer's config takes the same ones plus its own)."""
    t = cfg.train
    # Trainer's own save/eval schedule; best-checkpoint saves are forced by BestAndEarlyStop.
    return dict(
        output_dir=str(run_dir / "checkpoints"),
        per_device_train_batch_size=t.batch_size,
        per_device_eval_batch_size=t.batch_size,
        gradient_accumulation_steps=t.grad_accum,
        num_train_epochs=t.epochs,
        max_steps=t.max_steps or -1,
        learning_rate=t.learning_rate,
        lr_scheduler_type=t.lr_scheduler,
        warmup_steps=t.warmup_ratio,  # a float < 1 is a ratio of the total steps
        weight_decay=t.weight_decay,
        max_grad_norm=t.max_grad_norm,
        bf16=precision == "bf16",
        fp16=precision == "fp16",
        use_cpu=not _cuda(),
        seed=t.seed,
        data_seed=t.seed,
        logging_steps=t.log_every,
        logging_first_step=True,
        eval_strategy="steps" if has_val else "no",
        eval_on_start=has_val and not resuming,  # the base model's validation loss is the zero point
        eval_steps=t.eval_every,
        save_strategy="steps",
        save_steps=t.save_every,
        save_total_limit=None,  # retention is ours: it never deletes the newest or the best
        train_sampling_strategy="group_by_length" if layout == "length_grouped" else "random",
        remove_unused_columns=False,
        report_to=[r for r in t.report_to if r != "tensorboard"],
        disable_tqdm=True,
        dataloader_num_workers=0,
        ddp_backend="gloo" if not _cuda() and int(os.environ.get("WORLD_SIZE", "1")) > 1 else None,
        ddp_find_unused_parameters=False,
        average_tokens_across_devices=True,
        include_num_input_tokens_seen="no",
        save_only_model=False,
        logging_nan_inf_filter=False,
    )


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


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


def record_start(cfg: ProjectConfig, run_dir: Path, manifest: dict, used: set[str] | None) -> None:
    """What a new run folder records before training: config, data hashes, environment, base model, registry row."""
    from tuneloop import registry, runs

    cfg.save_resolved(run_dir)
    (run_dir / "data-manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    registry.write_row_hashes(run_dir, cfg.path(cfg.data.prepared_dir), used)
    runs.record_environment(run_dir, cfg.root)
    runs.write_base_model(cfg, run_dir)
    registry.record(cfg, run_dir)


def run_folder(cfg: ProjectConfig, resume: Path | None) -> tuple[Path, Path | None]:
    """(run folder, checkpoint to resume from or None)."""
    from tuneloop import runs
    from tuneloop.models import refuse_pickled_weights

    if resume is None:
        if int(os.environ.get("WORLD_SIZE", "1")) > 1:
            return _shared_run_dir(cfg), None
        return runs.new_run_dir(cfg), None
    run_dir = Path(resume)
    last = checkpoint.latest(run_dir / "checkpoints")
    if last is None:
        raise UserError(f"{run_dir} has no complete checkpoint to resume from; start a new run instead")
    refuse_pickled_weights(last, "the checkpoint to resume")
    console.note(f"resuming {run_dir.name} from {last.name}")
    return run_dir, last


def _shared_run_dir(cfg: ProjectConfig) -> Path:
    # Under torchrun every process must agree on one folder: rank 0 creates it, the others read its name.
    import torch.distributed as dist

    from tuneloop import runs

    if not dist.is_initialized():
        backend = "nccl" if _cuda() else "gloo"
        dist.init_process_group(backend)
    name = [str(runs.new_run_dir(cfg)) if dist.get_rank() == 0 else None]
    dist.broadcast_object_list(name, src=0)
    return Path(name[0])


def checkpoint_bytes(model: Any, trainable: int, method: str) -> int:
    """Rough size of one checkpoint: saved weights plus AdamW's two moments per trainable parameter."""
    weights = trainable * 4 if method != "full" else sum(p.numel() * p.element_size() for p in model.parameters())
    return weights + trainable * 8 + 1_000_000


def save_final(trainer: Any, tokenizer: Any, run_dir: Path, state: Any, merge: bool = False) -> Path:
    """final/: the best checkpoint's weights when evaluations ran, else the last step's; with the tokenizer.

    `merge` folds a LoRA-family adapter into its weights first, so final/ is a whole model (for an adapter
    trained on top of another run's model, which the configured base alone would not reproduce).
    Called on every rank: under FSDP or DeepSpeed, saving gathers shards from all of them.
    """
    best = state.best_global_step
    if best and best != state.global_step and state.best_model_checkpoint:
        console.note(f"final weights come from the best checkpoint (step {best}, {state.best_metric:.4f})")
        trainer._load_best_model()
    out, tmp = run_dir / "final", run_dir / "final.tmp"
    if trainer.args.should_save:
        shutil.rmtree(tmp, ignore_errors=True)
    trainer.accelerator.wait_for_everyone()
    if merge:
        if trainer.args.should_save:
            merged = trainer.accelerator.unwrap_model(trainer.model).merge_and_unload()
            merged.save_pretrained(str(tmp), safe_serialization=True)
    else:
        trainer.save_model(str(tmp))  # safetensors; only the main process writes
    if trainer.args.should_save:
        tokenizer.save_pretrained(str(tmp))  # carries the chat template used in training
        step = best if best and state.best_model_checkpoint else state.global_step
        (tmp / "tuneloop.json").write_text(json.dumps({"step": step, "best_metric": state.best_metric}, indent=2))
        (tmp / "training_args.bin").unlink(missing_ok=True)  # a pickle; the resolved config says it all
        checkpoint.fsync_tree(tmp)
        shutil.rmtree(out, ignore_errors=True)
        os.replace(tmp, out)
    trainer.accelerator.wait_for_everyone()
    return out


def guarded_train(trainer: Any, stop: Any, resume_from: Path | None, checkpoints: Path, needed: int) -> float:
    """Run `trainer.train` with the stop signals installed; a non-finite loss or a full disk becomes a
    UserError naming the last good checkpoint. Returns the seconds it took. Every recipe trains through this."""
    started = time.perf_counter()
    stop.install()
    try:
        trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
    except NonFiniteError as e:
        raise UserError(non_finite_message(e, checkpoint.latest(checkpoints))) from None
    except OSError as e:
        if not checkpoint.is_disk_full(e):
            raise
        raise UserError(checkpoint.disk_full_message(checkpoints, "a checkpoint", needed)) from None
    finally:
        stop.uninstall()
    return time.perf_counter() - started
