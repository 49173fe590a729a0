"""GRPO: `tuneloop train` with `method.name: grpo` — the policy learns from rewards on its own sampled answers.

The recipe, top to bottom:
1. the prompts of the prepared train split (a chat example's turns before its last answer; that answer is
   the reference for exact_match), rendered by the shared Renderer. TRL tokenizes prompt text itself, so
   the text is checked to tokenize back to exactly the renderer's ids: a template that does not round-trip
   is refused rather than trained on a second rendering;
2. the rewards (train/rewards.py) adapted to TRL's batch signature; the guard sees every batch they score;
3. the model wrapped for `method.grpo.adapter` (with LoRA, the adapter-off model is the KL reference);
4. TRL's GRPOTrainer with SFT's run folder, atomic checkpoints, exact-config resume, SIGTERM and NaN guard;
   reward, KL and answer length go to metrics.jsonl at every logging step;
5. the guard: a KL blow-up, answers growing far longer than at the start, or collapse to one answer per
   prompt stops the run with a checkpoint and says why;
6. final/ (adapter or model, with the tokenizer) and summary.json.

TRL's PPO is not offered: TRL 1.x ships no PPOTrainer.
"""

from __future__ import annotations

import json
import os
import warnings
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from tuneloop import console
from tuneloop.config import RESOLVED_FILENAME, ProjectConfig
from tuneloop.data.formats import Example, RowError
from tuneloop.data.prepared import load_split
from tuneloop.errors import UserError
from tuneloop.train import checkpoint, rewards
from tuneloop.train.callbacks import GracefulStop, MetricsFile, Progress
from tuneloop.train.common import (
    TrainResult,
    check_template,
    guarded_train,
    load_model,
    run_folder,
    save_final,
    subset,
    training_kwargs,
)
from tuneloop.train.guards import StepGuard
from tuneloop.train.resume import check_same_config, check_same_data

# What GRPOTrainer logs, under the names metrics.jsonl keeps: TRL's own.
KL, REWARD, LENGTH = "kl", "reward", "completions/mean_length"


# --------------------------------------------------------------------------- 1. prompts


def prompt_rows(examples: list[Example], tokenizer: Any, max_length: int) -> list[dict[str, Any]]:
    """One row per chat example: the rendered prompt text, the last user message, the reference answer, the id."""
    from tuneloop.data.render import Renderer

    renderer = Renderer(tokenizer)
    rows, wrong_kind, too_long, skew = [], 0, 0, []
    for ex in examples:
        if ex.kind != "chat":
            wrong_kind += 1
            continue
        last = max(i for i, m in enumerate(ex.messages) if m["role"] == "assistant")
        messages = ex.messages[:last]
        try:
            ids = renderer.prompt_ids(messages)
        except RowError as e:
            raise UserError(f"{ex.id}: cannot render the prompt: {e}") from None
        if len(ids) > max_length:
            too_long += 1
            continue
        text = tokenizer.decode(ids, skip_special_tokens=False)
        if tokenizer(text=[text])["input_ids"][0] != ids and len(skew) < 3:  # as GRPOTrainer tokenizes it
            skew.append(ex.id)
        user = next(m["content"] for m in reversed(messages) if m["role"] == "user")
        rows.append({"prompt": text, "user": user, "reference": ex.messages[last]["content"], "id": ex.id})
    if wrong_kind:
        raise UserError(
            f"{wrong_kind} train examples are not chat examples: GRPO samples answers to prompts, so it trains on "
            "prompt/completion, messages, alpaca or sharegpt rows (their answer is the exact_match reference)"
        )
    if skew:
        raise UserError(
            f"the rendered prompt of {', '.join(skew)} does not tokenize back to the renderer's ids (the tokenizer "
            "adds or merges tokens), so GRPO would train on prompts the renderer never made; use a model whose "
            "tokenizer round-trips its chat template (ChatML models such as SmolLM2 do)"
        )
    if too_long:
        console.warn(f"{too_long} prompts are longer than data.max_length {max_length} tokens and were left out")
    if not rows:
        raise UserError("no prompt left to train GRPO on; check data.max_length and the prepared train split")
    return rows


# --------------------------------------------------------------------------- 2. rewards, the guard's eyes


def load_rewards(cfg: ProjectConfig, watcher: Watcher) -> list[Any]:
    """method.grpo.rewards as TRL reward functions, each named after its reward."""
    settings = cfg.method.grpo
    if not settings.rewards:
        raise UserError(
            "method.grpo.rewards is empty: name at least one reward (json_valid, json_schema, exact_match, "
            "json_fields, length, or module:function)"
        )
    schema = None
    if "json_schema" in settings.rewards:
        if not cfg.eval.json_schema:
            raise UserError("reward json_schema validates against eval.json_schema: set it to a JSON Schema file")
        try:
            schema = json.loads(cfg.path(cfg.eval.json_schema).read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise UserError(f"cannot read eval.json_schema {cfg.eval.json_schema}: {e}") from None
    limit = settings.max_chars
    loaded = [rewards.load(spec, schema=schema, max_chars=limit, root=cfg.root) for spec in settings.rewards]
    return [
        batch_reward(spec, reward, watcher if i == 0 else None)
        for i, (spec, reward) in enumerate(zip(settings.rewards, loaded, strict=True))
    ]


def batch_reward(spec: str, reward: rewards.Reward, watcher: Watcher | None = None) -> Any:
    """TRL's signature, fn(prompts, completions, **columns) -> list[float], around one of our rewards.

    The first reward also shows every batch to the guard's `watcher`.
    """

    def score(prompts: list[str], completions: list[str], user: list[str], reference: list[str], id: list[str], **_):
        if watcher is not None:
            watcher.see(id, completions)
        values = []
        for i, completion in enumerate(completions):
            try:
                values.append(float(reward(user[i], completion, reference[i])))
            except Exception as e:  # a user's reward failing is their error to fix, with the example named
                raise UserError(f"reward {spec} failed on {id[i]}: {type(e).__name__}: {e}") from None
        return values

    score.__name__ = reward.__name__
    return score


class Watcher:
    """What the guard needs from each scored batch: the example ids, and how many prompts got K identical answers."""

    def __init__(self) -> None:
        self.example_ids: list[str] = []
        self.collapsed_share: float | None = None

    def see(self, ids: list[str], completions: list[str]) -> None:
        groups: dict[str, set[str]] = defaultdict(set)
        counts: dict[str, int] = defaultdict(int)
        for example_id, completion in zip(ids, completions, strict=True):
            groups[example_id].add(completion.strip())
            counts[example_id] += 1
        several = [k for k in groups if counts[k] > 1]
        self.collapsed_share = sum(len(groups[k]) == 1 for k in several) / len(several) if several else None
        self.example_ids = list(dict.fromkeys(ids))


# --------------------------------------------------------------------------- 5. the guard


@dataclass
class Stop:
    reason: str
    step: int


class RewardHackingGuard(TrainerCallback):
    """Stops training with a checkpoint on a KL blow-up, length explosion or collapse (method.grpo.guard)."""

    def __init__(self, cfg: ProjectConfig, watcher: Watcher, start_length: float | None) -> None:
        self.settings = cfg.method.grpo.guard
        self.watcher = watcher
        self.start_length = start_length  # the mean answer length at the run's first step (kept across resumes)
        self.collapsed_steps = 0
        self.stop: Stop | None = None

    def on_step_end(self, args, state, control, **kwargs):
        share, limit = self.watcher.collapsed_share, self.settings.max_collapsed_share
        if share is None or limit is None:
            return
        self.collapsed_steps = self.collapsed_steps + 1 if share > limit else 0
        if self.collapsed_steps >= self.settings.window:
            self._trip(
                control,
                state.global_step,
                f"collapse: for {self.collapsed_steps} steps, more than {limit:.0%} of prompts got "
                f"{args.num_generations} identical answers ({share:.0%} at the last step), so the group comparison "
                "GRPO learns from is gone (method.grpo.guard.max_collapsed_share)",
            )

    def on_log(self, args, state, control, logs=None, **kwargs):
        logs = logs or {}
        kl, length = logs.get(KL), logs.get(LENGTH)
        if length is not None and self.start_length is None:
            self.start_length = float(length)
        if kl is not None and self.settings.max_kl is not None and kl > self.settings.max_kl:
            self._trip(
                control,
                state.global_step,
                f"KL blow-up: the mean per-token KL to the reference is {kl:.4g}, above method.grpo.guard.max_kl "
                f"{self.settings.max_kl:g}; the policy has run far from the model it started as",
            )
        growth = self.settings.max_length_growth
        if length is not None and growth is not None and self.start_length and length > growth * self.start_length:
            self._trip(
                control,
                state.global_step,
                f"length explosion: answers average {length:.1f} tokens, over {growth:g} times the "
                f"{self.start_length:.1f} of the first step (method.grpo.guard.max_length_growth); the policy may be "
                "padding its answers to game the reward",
            )

    def _trip(self, control: Any, step: int, reason: str) -> None:
        if self.stop is None:
            self.stop = Stop(reason, step)
            console.warn(f"step {step}: {reason}; saving a checkpoint and stopping")
        control.should_save = True
        control.should_training_stop = True


def first_length(metrics_path: Path) -> float | None:
    """The mean answer length of the run's first logged step (a resumed run compares with its true start)."""
    if not metrics_path.is_file():
        return None
    for line in metrics_path.read_text().splitlines():
        row = json.loads(line) if line.strip() else {}
        if LENGTH in row:
            return float(row[LENGTH])
    return None


def start_model(cfg: ProjectConfig, start: Path) -> tuple[Any, Any]:
    """(model, tokenizer) of the start run's final/, its adapter folded in: GRPO's policy and reference."""
    import yaml

    from tuneloop import runs

    saved = start / RESOLVED_FILENAME
    if not saved.is_file():
        raise UserError(f"method.grpo.start {start} is not a run folder (no {RESOLVED_FILENAME}); give a run's folder")
    base = (yaml.safe_load(saved.read_text()) or {}).get("model", {}).get("name")
    if base != cfg.model.name:
        raise UserError(
            f"method.grpo.start {start} was trained on {base!r}, not on this project's model {cfg.model.name!r}"
        )
    console.note(f"starting from {start / 'final'} (its adapter folded into the base)")
    model, tokenizer = runs.load_final(cfg, start)
    model = runs.merged_for_inference(model)
    model.config.use_cache = False
    return model.float(), tokenizer


# --------------------------------------------------------------------------- 4. the trainer


class PromptOrder(TrainerCallback):
    """Each epoch's prompt order as an uninterrupted run has it, also after `--resume`.

    GRPOTrainer draws every epoch's order from one generator of its RepeatSampler, seeded once with
    train.seed, and the sampler has no set_epoch: a process resumed in epoch e would draw epoch 0's
    order again (the Trainer's own samplers are reseeded per epoch, which is why SFT and DPO resume
    exactly). At each epoch's start this reseeds the generator and replays the e orders before it, so
    epoch e gets the order an uninterrupted run draws. The sampler draws one permutation per epoch
    (trl 1.16, RepeatSampler.__iter__); within the resumed epoch the Trainer then skips the batches
    already trained, as usual. Generation is not buffered across a checkpoint: tuneloop leaves
    num_iterations at 1 and steps_per_generation at train.grad_accum, so every optimizer step samples anew.
    """

    def on_epoch_begin(self, args, state, control, train_dataloader=None, **kwargs):
        import torch

        sampler = _repeat_sampler(train_dataloader)
        if sampler is None or not sampler.shuffle:
            return
        epoch = int(state.epoch + 1e-6)  # the epoch about to run: a whole number at an epoch's end
        sampler.generator.manual_seed(sampler.seed)
        for _ in range(epoch):
            torch.randperm(sampler.num_samples, generator=sampler.generator)


def _repeat_sampler(loader: Any) -> Any:
    """TRL's RepeatSampler under the (accelerate-wrapped) train dataloader, or None."""
    from trl.trainer.utils import RepeatSampler

    batches = getattr(loader, "batch_sampler", None)
    sharded = getattr(batches, "batch_sampler", None)  # accelerate's BatchSamplerShard under several processes
    for candidate in (getattr(batches, "sampler", None), getattr(sharded, "sampler", None)):
        if isinstance(candidate, RepeatSampler):
            return candidate
    return None


def make_trainer_class() -> type:
    """GRPOTrainer with our NaN guard on the loss and atomic checkpoints. Built lazily (imports TRL)."""
    from trl import GRPOTrainer

    from tuneloop.train.common import save_atomically

    class Trainer(GRPOTrainer):
        def __init__(self, *args: Any, keep_last: int, watcher: Watcher, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.keep_last = keep_last
            self.watcher = watcher
            self.guard = StepGuard(self)
            self.add_callback(self.guard)

        @property
        def step_example_ids(self) -> list[str]:
            return self.watcher.example_ids

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            loss = super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
            self.guard.check_loss(loss, self.state.global_step + 1, self.step_example_ids)
            return loss

        def _save_checkpoint(self, model, trial):
            def save() -> None:
                super(Trainer, self)._save_checkpoint(model, trial)
                # TRL writes a model card beside the checkpoint, into the staging folder, which must hold only it.
                (Path(self.args.output_dir) / "README.md").unlink(missing_ok=True)

            save_atomically(self, save)

    return Trainer


def grpo_arguments(cfg: ProjectConfig, run_dir: Path, precision: str, resuming: bool) -> Any:
    """GRPOConfig: SFT's TrainingArguments settings, with train.batch_size prompts (each K answers) per micro-batch."""
    from trl import GRPOConfig

    g = cfg.method.grpo
    settings = training_kwargs(cfg, run_dir, precision, "random", has_val=False, resuming=resuming)
    settings.update(
        per_device_train_batch_size=cfg.train.batch_size * g.num_generations,
        per_device_eval_batch_size=cfg.train.batch_size * g.num_generations,
        num_generations=g.num_generations,
        max_completion_length=g.max_completion_length,
        temperature=g.temperature,
        beta=g.beta,
        reward_weights=g.weights,
        gradient_checkpointing=False,  # `wrap` applies train.gradient_checkpointing, as for SFT
        log_completions=False,
        shuffle_dataset=True,
    )
    return GRPOConfig(**settings)


# --------------------------------------------------------------------------- the run


def train(cfg: ProjectConfig, *, resume: Path | None = None, run_dir: Path | None = None) -> TrainResult:
    """Run GRPO for `cfg` (method.name grpo). `resume` continues a run folder from its last checkpoint."""
    import datasets
    import torch
    from transformers import PrinterCallback
    from transformers.utils import logging as hf_logging

    from tuneloop import registry, runs
    from tuneloop.generate import stop_token_ids
    from tuneloop.train.common import checkpoint_bytes
    from tuneloop.train.methods import count_parameters, wrap

    hf_logging.set_verbosity_error()
    warnings.filterwarnings("ignore", category=FutureWarning, module="transformers|peft|trl")
    warnings.filterwarnings("ignore", category=UserWarning, module="trl")
    if resume is not None:
        check_same_config(cfg, Path(resume) / RESOLVED_FILENAME)
    rank0 = int(os.environ.get("RANK", "0")) == 0
    settings = cfg.method.grpo

    examples, manifest = load_split(cfg, "train")
    if resume is not None:
        check_same_data(manifest, Path(resume))
    if not examples:
        raise UserError(f"the train split in {cfg.path(cfg.data.prepared_dir)} is empty; nothing to train on")
    if cfg.train.examples is not None:
        examples = subset(examples, cfg.train.examples, cfg.data.seed)
    watcher = Watcher()
    reward_funcs = load_rewards(cfg, watcher)  # before the model loads: a reward that cannot load fails fast
    adapted = cfg.model_copy(deep=True)  # the adapter decides how the model loads and wraps, as method.name does
    adapted.method.name = settings.adapter
    model, tokenizer = start_model(cfg, Path(cfg.path(settings.start))) if settings.start else load_model(adapted)
    check_template(manifest, tokenizer)
    rows = prompt_rows(examples, tokenizer, cfg.data.max_length)

    torch.manual_seed(cfg.train.seed)  # adapter initialisation is part of the run's randomness
    model = wrap(model, adapted, cfg.train.gradient_checkpointing)
    model.generation_config.eos_token_id = stop_token_ids(model, tokenizer)  # the template's end of turn ends answers
    params = count_parameters(model)
    console.note(f"method grpo ({settings.adapter}): {params.describe()}; {len(rows):,} prompts")
    precision = cfg.train.precision if cfg.train.precision != "auto" else ("bf16" if _cuda_bf16() else "fp32")
    run_dir, resume_from = (run_dir, None) if run_dir is not None and resume is None else run_folder(cfg, resume)
    if rank0 and resume_from is None:
        from tuneloop.train.common import record_start

        record_start(cfg, run_dir, manifest, {e.id for e in examples} if cfg.train.examples is not None else None)
    checkpoints = run_dir / "checkpoints"
    needed = checkpoint_bytes(model, params.trainable, settings.adapter)
    metrics_file = MetricsFile(run_dir / runs.METRICS)
    if rank0:
        checkpoint.remove_incomplete(checkpoints)
        checkpoint.check_disk(checkpoints, needed)
        if resume_from is not None and (dropped := metrics_file.rewind(checkpoint.step_of(resume_from))):
            console.note(f"dropped {dropped} metrics rows logged after {resume_from.name}: they are trained again")

    guard = RewardHackingGuard(cfg, watcher, first_length(metrics_file.path))
    stop = GracefulStop()
    trainer = make_trainer_class()(
        model=model,
        reward_funcs=reward_funcs,
        args=grpo_arguments(cfg, run_dir, precision, resume_from is not None),
        train_dataset=datasets.Dataset.from_list(rows),
        processing_class=tokenizer,
        callbacks=[PromptOrder(), metrics_file, Progress(), guard, stop],
        keep_last=cfg.train.keep_last,
        watcher=watcher,
    )
    stop.accelerator = trainer.accelerator
    trainer.remove_callback(PrinterCallback)

    elapsed = guarded_train(trainer, stop, resume_from, checkpoints, needed)
    state = trainer.state

    stopped = stop.signal is not None
    status = "guard_stopped" if guard.stop else "stopped" if stopped else "completed"
    merge = settings.start is not None  # an adapter on another run's model: final/ is the whole model
    final_dir = None if stopped or guard.stop else save_final(trainer, tokenizer, run_dir, state, merge=merge)
    summary = {
        "status": status,
        "steps": state.global_step,
        "max_steps": state.max_steps,
        "method": "grpo",
        "adapter": settings.adapter,
        "parameters": {"trainable": params.trainable, "total": params.total},
        "precision": {"chosen": precision, "why": "set in the config" if cfg.train.precision != "auto" else "auto"},
        "examples": {"train": len(rows), "val": 0},
        "rewards": settings.rewards,
        "last": _last_logged(state.log_history),
        "this_session": {"seconds": round(elapsed, 2)},
        "final": str(final_dir.relative_to(run_dir)) if final_dir else None,
        "signal": stop.signal if stopped else None,
        "guard": {"reason": guard.stop.reason, "step": guard.stop.step} if guard.stop else None,
    }
    if rank0:
        runs.write_summary(run_dir, summary)
        runs.plot_losses(run_dir)
        registry.record(cfg, run_dir)
    if guard.stop:
        saved = checkpoint.latest(checkpoints)
        raise UserError(
            f"GRPO stopped at step {guard.stop.step}: {guard.stop.reason}. The state at the stop is saved in {saved} "
            "for inspection; start again with a lower train.learning_rate or a larger method.grpo.beta, or change "
            "the rewards so that the shortcut no longer pays"
        )
    if stopped:
        console.note(f"stopped by {stop.signal} at step {state.global_step}; continue: `tuneloop train --resume`")
    return TrainResult(run_dir, status, state.global_step, final_dir, summary)


def _last_logged(history: list[dict[str, Any]]) -> dict[str, float]:
    """Reward, KL and answer length at the last step that logged them."""
    last: dict[str, float] = {}
    for row in history:
        last.update({k: row[k] for k in (REWARD, KL, LENGTH, "loss") if k in row})
    return last


def _cuda_bf16() -> bool:
    import torch

    return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
