"""Preference tuning: `tuneloop train` with `task.type: preference` and method.name dpo, ipo, simpo, orpo, kto or
reward (kto's own parts, rated answers instead of pairs, are in train/kto.py).

The recipe, top to bottom:
1. read the prepared preference and ranked records; a ranking becomes every better-worse pair of it;
2. render each pair's prompt + answer with the SFT Renderer (data/pairs.py), so each answer is
   weighted exactly as SFT weights an assistant answer, and the prompt is what eval and serving send;
3. load the starting model: the base, or another run's final model (`method.preference.start`, an
   SFT adapter folded in). dpo/ipo: the policy; with LoRA its adapter-off self is the reference (TRL
   disables the adapter), with full training a frozen copy is. simpo and orpo need no reference.
   reward: a sequence-classification head (one score) on it;
4. train with TRL's DPOTrainer (loss `sigmoid` for dpo, `ipo` for ipo), CPOTrainer (loss `simpo`,
   without CPO's NLL term), ORPOTrainer or RewardTrainer (Bradley-Terry), with tuneloop's crash-safe
   checkpoints, exact resume, SIGTERM stop, NaN guard, best checkpoint and metrics.jsonl: TRL's reward
   margins, chosen/rejected log-probabilities and implicit-reward accuracy on validation become
   `eval_reward_margin`, `eval_logp_chosen`, ...;
5. write final/ (an adapter on the base, or a whole model when it started from a run or is a reward
   model), loss.png and summary.json (with the validation pair accuracy of the final weights).

`tuneloop.reward.load_reward_model(run_dir)` turns a reward run into a scoring function for other recipes.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tuneloop import console
from tuneloop.config import RESOLVED_FILENAME, ProjectConfig
from tuneloop.config_preference import DPO_LOSSES, REFERENCE_FREE
from tuneloop.data.formats import Example, RowError
from tuneloop.data.pairs import PairTokens, pairs_of, render_pairs
from tuneloop.data.prepared import load_split
from tuneloop.errors import UserError
from tuneloop.train import checkpoint, kto
from tuneloop.train.callbacks import BestAndEarlyStop, GracefulStop, MetricsFile, Progress
from tuneloop.train.common import (
    TrainResult,
    check_template,
    checkpoint_bytes,
    choose_precision,
    guarded_train,
    record_start,
    run_folder,
    save_atomically,
    save_final,
    subset,
    training_kwargs,
)
from tuneloop.train.guards import StepGuard
from tuneloop.train.resume import check_same_config, check_same_data

# TRL's metric names → metrics.jsonl's (validation rows carry them with the eval_ prefix).
METRIC_NAMES = {
    "rewards/chosen": "reward_chosen",
    "rewards/rejected": "reward_rejected",
    "rewards/accuracies": "reward_accuracy",
    "rewards/margins": "reward_margin",
    "logps/chosen": "logp_chosen",
    "logps/rejected": "logp_rejected",
}
METRIC_NAMES |= {f"eval_{k}": f"eval_{v}" for k, v in METRIC_NAMES.items()}
PREFERENCE_KINDS = ("preference", "ranked")


# --------------------------------------------------------------------------- 1-2. data


def check_kinds(examples: list[Example], split: str, method: str) -> None:
    """Only preference and ranked records train a preference method; kto also trains on unpaired ones."""
    kinds = kto.KINDS if method == "kto" else PREFERENCE_KINDS
    wrong = sorted({e.kind for e in examples if e.kind not in kinds})
    if "unpaired" in wrong:
        raise UserError(
            f"the {split} split holds unpaired records (one answer rated desirable or not): method.name {method} "
            "compares pairs of answers; train rated answers with method.name kto"
        )
    if wrong:
        raise UserError(
            f"the {split} split holds {', '.join(wrong)} examples; preference tuning trains on preference "
            "({prompt, chosen, rejected}) or ranked ({prompt, responses, ranking}) records. Prepare those, or "
            "set task.type and method.name for the data you have"
        )


def render_split(examples: list[Example], tokenizer: Any, cfg: ProjectConfig, split: str) -> list[PairTokens]:
    """The split's pairs rendered with the shared Renderer; over-long and empty pairs are counted, never silent."""
    from tuneloop.data.render import Renderer

    renderer = Renderer(tokenizer)
    pairs = pairs_of(examples)
    items: list[PairTokens] = []
    failed: list[str] = []
    too_long = 0
    for start in range(0, len(pairs), 128):
        chunk = pairs[start : start + 128]
        for pair, result in zip(chunk, render_pairs(renderer, chunk), strict=True):
            if isinstance(result, RowError):
                failed.append(f"{pair.id}: {result}")
                continue
            longest = len(result["prompt_ids"]) + max(len(result["chosen_ids"]), len(result["rejected_ids"]))
            if longest > cfg.data.max_length:
                too_long += 1
                continue
            items.append(result)
    if failed:
        raise UserError(
            f"{len(failed)} {split} pairs cannot be rendered with this model's template:\n  "
            + "\n  ".join(failed[:5])
            + "\nre-run `tuneloop data prepare` with this model so they are rejected with their line numbers"
        )
    if too_long and cfg.data.long == "error":
        raise UserError(
            f"{too_long:,} of {len(pairs):,} {split} pairs are longer than data.max_length {cfg.data.max_length}; "
            "raise data.max_length, or set data.long=drop"
        )
    if too_long:  # a truncated answer would be compared on its beginning only: drop, even with data.long=truncate
        console.warn(f"{too_long:,} {split} pairs are longer than data.max_length {cfg.data.max_length}; dropped")
    console.note(f"{split}: {len(examples):,} records, {len(pairs):,} pairs, {len(items):,} rendered for training")
    return items


def reward_rows(items: list[PairTokens]) -> list[dict[str, Any]]:
    """A reward model scores whole conversations: each answer's ids follow the prompt's."""
    return [
        {
            "id": i["id"],
            "chosen_ids": i["prompt_ids"] + i["chosen_ids"],
            "rejected_ids": i["prompt_ids"] + i["rejected_ids"],
        }
        for i in items
    ]


def sequences(row: PairTokens) -> dict[str, list[int]]:
    """A rendered pair in the columns CPOTrainer and ORPOTrainer build in their `tokenize_row`: each side's
    prompt + answer ids, its attention mask, and its labels (-100 on the prompt, so only the answer counts)."""
    prompt = row["prompt_ids"]
    out = {"prompt_input_ids": prompt, "prompt_attention_mask": [1] * len(prompt)}
    for side in ("chosen", "rejected"):
        answer = row[f"{side}_ids"]
        out[f"{side}_input_ids"] = prompt + answer
        out[f"{side}_attention_mask"] = [1] * (len(prompt) + len(answer))
        out[f"{side}_labels"] = [-100] * len(prompt) + answer
    return out


class PairCollator:
    """TRL's collator for the pairs, plus the batch's example ids (for the NaN guard's message)."""

    def __init__(self, inner: Callable[[list[dict[str, Any]]], dict[str, Any]], drop: tuple[str, ...] = ()) -> None:
        self.inner = inner
        self.drop = {"id", *drop}

    def __call__(self, rows: list[dict[str, Any]]) -> dict[str, Any]:
        batch = self.inner([{k: v for k, v in row.items() if k not in self.drop} for row in rows])
        batch["example_ids"] = [row["id"] for row in rows]
        return batch


# --------------------------------------------------------------------------- 3. the starting model


def load_start(cfg: ProjectConfig) -> tuple[Any, Any]:
    """(model, tokenizer) training starts from: the base, or `method.preference.start`'s final model merged."""
    from tuneloop import runs
    from tuneloop.data.chat_templates import project_model, project_tokenizer
    from tuneloop.models import load_sequence_classifier

    start = cfg.method.preference.start
    if cfg.method.name == "reward":
        import torch

        torch.manual_seed(cfg.train.seed)  # the new head's start, which `tuneloop eval` scores as the base
        model, _ = load_sequence_classifier(cfg.model.name, ["reward"], cfg.model.revision, cfg.model.trust_remote_code)
        tokenizer = project_tokenizer(cfg)
        model.config.pad_token_id = tokenizer.pad_token_id
        return model, tokenizer
    if start is None:
        model, tokenizer = project_model(cfg, "float32")
        model.config.use_cache = False
        return model, tokenizer
    run = cfg.path(start)
    if not (run / RESOLVED_FILENAME).is_file():
        raise UserError(f"method.preference.start: {run} is not a run folder (no {RESOLVED_FILENAME})")
    runs.check_same_base(cfg, run)
    model, run_tokenizer = runs.load_final(cfg, run)
    model = runs.merged_for_inference(model)
    tokenizer = project_tokenizer(cfg)
    if getattr(run_tokenizer, "chat_template", None) != getattr(tokenizer, "chat_template", None):
        raise UserError(
            f"run {run.name} was trained with another chat template than model.chat_template gives now; "
            "set model.chat_template as that run had it"
        )
    console.note(f"starting from run {run.name}: its final model is the policy's start and the reference")
    model.config.use_cache = False
    return model, tokenizer


def adapter_config(cfg: ProjectConfig, model: Any) -> Any:
    """PEFT config for method.preference.adapter (lora/dora, method.lora settings), or None for full training."""
    from tuneloop.train.methods import peft_config

    adapter = cfg.method.preference.adapter
    if adapter == "full":
        return None
    as_sft = cfg.model_copy(deep=True)
    as_sft.method.name = adapter
    config = peft_config(as_sft, model)
    if cfg.method.name == "reward":
        config.task_type = "SEQ_CLS"  # PEFT then trains the new score head in full beside the adapter
    return config


# --------------------------------------------------------------------------- 4. the trainer


def make_trainer_class(method: str) -> type:
    """TRL's trainer for `method` with tuneloop's checkpoints and NaN guard. Built lazily (imports TRL)."""
    from transformers import Trainer
    from trl import DPOTrainer, KTOTrainer, RewardTrainer

    base = {"reward": RewardTrainer, "kto": KTOTrainer}.get(method, DPOTrainer)
    if method in REFERENCE_FREE:
        from trl.experimental.cpo import CPOTrainer
        from trl.experimental.orpo import ORPOTrainer

        base = CPOTrainer if method == "simpo" else ORPOTrainer

    class PreferenceTrainer(base):  # type: ignore[misc, valid-type]
        def __init__(self, *args: Any, keep_last: int, **kwargs: Any) -> None:
            self.keep_last = keep_last
            self.step_example_ids: list[str] = []
            self._ids_step = -1
            super().__init__(*args, **kwargs)
            self.guard = StepGuard(self)
            self.add_callback(self.guard)

        if base in (DPOTrainer, KTOTrainer):

            def _prepare_dataset(self, dataset, *args, **kwargs):
                # The pairs (or kto's rated answers) arrive tokenized by tuneloop's Renderer. DPOTrainer and
                # KTOTrainer 1.16 have no public switch for pre-tokenized rows: their preparation would re-render
                # the text with their own template call and tokenize prompt + answer joined, which is what the
                # shared Renderer exists to avoid. kto's KL columns are added in train/kto.py (`ordered_rows`).
                return dataset

        if method in REFERENCE_FREE:

            def tokenize_row(self, feature, model=None):
                # CPOTrainer and ORPOTrainer map this over the dataset to tokenize text; the pairs arrive
                # rendered, so it only lays the ids out in their columns.
                return sequences(feature)

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            ids = inputs.pop("example_ids", [])
            if model.training and self._ids_step != self.state.global_step:
                self.step_example_ids, self._ids_step = [], self.state.global_step
            if model.training:
                self.step_example_ids += ids
            out = super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
            if model.training:
                loss = out[0] if return_outputs else out
                self.guard.check_loss(loss, self.state.global_step + 1, self.step_example_ids)
            return out

        def _save_checkpoint(self, model, trial):
            # Trainer's save, staged and committed atomically; TRL's override only adds a model card, which
            # would land beside the checkpoint in the staging folder.
            save_atomically(self, lambda: Trainer._save_checkpoint(self, model, trial))

    return PreferenceTrainer


def trainer_config(
    cfg: ProjectConfig, run_dir: Path, precision: str, has_val: bool, resuming: bool, kto_weights: Any = None
) -> Any:
    """DPOConfig, KTOConfig or RewardConfig: the SFT recipe's TrainingArguments plus the method's own settings."""
    from trl import DPOConfig, RewardConfig

    common = training_kwargs(cfg, run_dir, precision, "padded", has_val, resuming)
    common["train_sampling_strategy"] = "random"
    common["average_tokens_across_devices"] = False  # TRL's losses are means over pairs, not token sums
    if cfg.method.name == "kto":
        return kto.trainer_config(cfg, common, kto_weights)
    if cfg.method.name == "reward":
        return RewardConfig(**common, max_length=None, disable_dropout=True)
    preference = cfg.method.preference
    if cfg.method.name == "simpo":
        from trl.experimental.cpo import CPOConfig

        # cpo_alpha 0: SimPO's loss alone, without CPO's NLL term on the chosen answer
        return CPOConfig(
            **common,
            beta=preference.beta,
            loss_type="simpo",
            simpo_gamma=preference.simpo_gamma,
            cpo_alpha=0.0,
            max_length=cfg.data.max_length,
            is_encoder_decoder=False,
            disable_dropout=True,
        )
    if cfg.method.name == "orpo":
        from trl.experimental.orpo import ORPOConfig

        return ORPOConfig(
            **common,
            beta=preference.beta,
            max_length=cfg.data.max_length,
            is_encoder_decoder=False,
            disable_dropout=True,
        )
    return DPOConfig(
        **common,
        beta=cfg.method.preference.beta,
        loss_type=[DPO_LOSSES[cfg.method.name]],
        max_length=None,  # over-long pairs were dropped and counted when rendered
        disable_dropout=True,  # policy and reference must see the same network at step 0
        precompute_ref_log_probs=False,
    )


def collator(method: str, pad_id: int) -> PairCollator:
    if method == "kto":
        return PairCollator(kto.collator(pad_id))
    if method == "reward":
        from trl.trainer.reward_trainer import DataCollatorForPreference as RewardCollator

        return PairCollator(RewardCollator(pad_token_id=pad_id))
    if method in REFERENCE_FREE:
        from trl.experimental.utils import DPODataCollatorWithPadding

        inner = DPODataCollatorWithPadding(pad_token_id=pad_id, is_encoder_decoder=False)  # labels pad with -100
        return PairCollator(inner, drop=("prompt_ids", "chosen_ids", "rejected_ids"))
    from trl.trainer.dpo_trainer import DataCollatorForPreference

    return PairCollator(DataCollatorForPreference(pad_token_id=pad_id))


# --------------------------------------------------------------------------- the run


def train(cfg: ProjectConfig, *, resume: Path | None = None, run_dir: Path | None = None) -> TrainResult:
    """Train `cfg`'s preference method (dpo, ipo, simpo, orpo, kto or reward) on the prepared pairs (or rated answers).

    `resume` is a run folder to continue from its last checkpoint; `run_dir` an empty folder to start a new
    run in (default: a fresh one under output.dir).
    """
    import torch
    from datasets import Dataset
    from transformers import PrinterCallback
    from transformers.utils import logging as hf_logging

    from tuneloop import registry, runs
    from tuneloop.train.methods import count_parameters

    hf_logging.set_verbosity_error()
    console.err.quiet = int(os.environ.get("RANK", "0")) != 0
    warnings.filterwarnings("ignore", category=FutureWarning, module="transformers|peft|trl")
    warnings.filterwarnings("ignore", category=UserWarning, module="trl")
    rank0 = int(os.environ.get("RANK", "0")) == 0
    method = cfg.method.name
    if resume is not None:
        check_same_config(cfg, Path(resume) / RESOLVED_FILENAME)

    train_examples, manifest = load_split(cfg, "train")
    val_examples, _ = load_split(cfg, "val")
    if resume is not None:
        check_same_data(manifest, Path(resume))
    if not train_examples:
        raise UserError(f"the train split in {cfg.path(cfg.data.prepared_dir)} is empty; nothing to train on")
    check_kinds(train_examples, "train", method)
    check_kinds(val_examples, "val", method)
    if cfg.train.examples is not None:
        train_examples = subset(train_examples, cfg.train.examples, cfg.data.seed)
    if cfg.train.val_examples is not None and cfg.train.val_examples < len(val_examples):
        val_examples = subset(val_examples, cfg.train.val_examples, cfg.data.seed)
    model, tokenizer = load_start(cfg)
    check_template(manifest, tokenizer)
    render = kto.render_split if method == "kto" else render_split
    train_items: list[Any] = render(train_examples, tokenizer, cfg, "train")
    val_items: list[Any] = render(val_examples, tokenizer, cfg, "val") if val_examples else []
    what = "answer" if method == "kto" else "pair"
    if not train_items:
        raise UserError(f"no train {what} is left to train on; check data.max_length and the rejects report")
    if not val_items:
        console.warn(f"no validation {what}s: no validation metrics, best checkpoint or early stopping")
    kto_weights = kto.loss_weights(cfg, train_items) if method == "kto" else None
    if method == "reward":
        train_rows, val_rows = reward_rows(train_items), reward_rows(val_items)
    elif method == "kto":
        size, seed = cfg.train.batch_size, cfg.train.seed
        train_rows = kto.ordered_rows(train_items, size, seed, shuffle=True)
        val_rows = kto.ordered_rows(val_items, size, seed, shuffle=False)
    else:
        train_rows, val_rows = [dict(i) for i in train_items], [dict(i) for i in val_items]

    precision, why = choose_precision(cfg.train.precision, model, None)
    console.note(f"precision {precision} ({why})")
    run_dir, resume_from = (run_dir, None) if run_dir is not None and resume is None else run_folder(cfg, resume)
    console.note(f"method {method}; run folder {run_dir}")
    if rank0 and resume_from is None:
        used = {e.id for e in train_examples} if cfg.train.examples is not None else None
        record_start(cfg, run_dir, manifest, used)

    reference = None
    peft = adapter_config(cfg, model)
    if peft is None and (method in DPO_LOSSES or method == "kto"):
        import copy

        reference = copy.deepcopy(model).eval().requires_grad_(False)  # the starting point, frozen
    args = trainer_config(cfg, run_dir, precision, bool(val_rows), resume_from is not None, kto_weights)
    stop = GracefulStop()
    names = kto.METRIC_NAMES if method == "kto" else METRIC_NAMES
    metrics_file = MetricsFile(run_dir / runs.METRICS, names=names)
    checkpoints = run_dir / "checkpoints"
    if rank0:
        checkpoint.remove_incomplete(checkpoints)
        if resume_from is not None and (dropped := metrics_file.rewind(checkpoint.step_of(resume_from))):
            console.note(f"dropped {dropped} metrics rows logged after {resume_from.name}: they are trained again")
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    callbacks = [
        metrics_file,
        Progress(names),
        BestAndEarlyStop(cfg.train.metric, cfg.train.metric != "loss", cfg.train.early_stopping_patience),
        stop,
    ]
    extra = {"ref_model": reference} if method in DPO_LOSSES or method == "kto" else {}
    torch.manual_seed(cfg.train.seed)
    trainer = make_trainer_class(method)(
        model=model,
        args=args,
        train_dataset=Dataset.from_list(train_rows),
        eval_dataset=Dataset.from_list(val_rows) if val_rows else None,
        data_collator=collator(method, pad_id),
        processing_class=tokenizer,
        callbacks=callbacks,
        peft_config=peft,
        keep_last=cfg.train.keep_last,
        **extra,
    )
    stop.accelerator = trainer.accelerator
    trainer.remove_callback(PrinterCallback)
    params = count_parameters(trainer.model)
    console.note(f"{method} ({cfg.method.preference.adapter}): {params.describe()}")
    needed = checkpoint_bytes(trainer.model, params.trainable, cfg.method.preference.adapter)
    if rank0:
        checkpoint.check_disk(checkpoints, needed)

    elapsed = guarded_train(trainer, stop, resume_from, checkpoints, needed)
    state = trainer.state

    stopped = stop.signal is not None
    early = not stopped and state.global_step < state.max_steps
    status = "stopped" if stopped else ("early_stopped" if early else "completed")
    # A whole model when the adapter sits on weights the configured base alone would not give back.
    merge = peft is not None and (method == "reward" or cfg.method.preference.start is not None)
    final_dir = None if stopped else save_final(trainer, tokenizer, run_dir, state, merge=merge)
    summary = {
        "status": status,
        "steps": state.global_step,
        "max_steps": state.max_steps,
        "method": method,
        "adapter": cfg.method.preference.adapter,
        "beta": cfg.method.preference.beta if method != "reward" else None,
        "start": cfg.method.preference.start,
        "processes": trainer.args.world_size,
        "parameters": {"trainable": params.trainable, "total": params.total},
        "precision": {"chosen": precision, "why": why},
        "examples": {f"train_{what}s": len(train_items), f"val_{what}s": len(val_items)},
        "best": {"metric": f"eval_{cfg.train.metric}", "value": state.best_metric, "step": state.best_global_step},
        "validation": final_validation(state, method),
        **({"kto_weights": {"desirable": kto_weights[0], "undesirable": kto_weights[1]}} if kto_weights else {}),
        "this_session": {"seconds": round(elapsed, 2)},
        "final": str(final_dir.relative_to(run_dir)) if final_dir else None,
        "signal": stop.signal if stopped else None,
    }
    if rank0:
        runs.write_summary(run_dir, summary)
        runs.plot_losses(run_dir)
        registry.record(cfg, run_dir)
        if stopped:
            console.note(f"stopped by {stop.signal} at step {state.global_step}; continue: `tuneloop train --resume`")
    return TrainResult(run_dir, status, state.global_step, final_dir, summary)


def final_validation(state: Any, method: str) -> dict[str, float] | None:
    """Validation metrics of the weights in final/ (the best evaluation's when one was kept, else the last)."""
    evals = [h for h in state.log_history if "eval_loss" in h]
    if not evals:
        return None
    step = state.best_global_step or evals[-1]["step"]
    row = next((h for h in reversed(evals) if h["step"] == step), evals[-1])
    if method == "reward":
        keys = {"eval_loss": "loss", "eval_accuracy": "pair_accuracy", "eval_margin": "reward_margin"}
    elif method == "kto":
        keys = kto.final_metric_names()
    else:
        keys = {
            "eval_loss": "loss",
            "eval_rewards/accuracies": "reward_accuracy",
            "eval_rewards/margins": "reward_margin",
            "eval_logps/chosen": "logp_chosen",
            "eval_logps/rejected": "logp_rejected",
        }
    return {"step": row["step"], **{ours: row[theirs] for theirs, ours in keys.items() if theirs in row}}
