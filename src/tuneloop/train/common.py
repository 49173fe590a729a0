"""What every training recipe shares: the run folder and what it records at the start, the precision
choice, TrainingArguments' settings, atomic checkpoints, the guarded `trainer.train` call and the final save.

The recipes (sft.py, preference.py, grpo.py) differ in their data and their Trainer; a run folder, a
checkpoint and a stop signal behave the same in all of them because they all go through these functions.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tuneloop import console
from tuneloop.config import ProjectConfig
from tuneloop.data.formats import Example
from tuneloop.errors import UserError
from tuneloop.train import checkpoint
from tuneloop.train.guards import NonFiniteError, non_finite_message
from tuneloop.train.loss import token_loss

# bf16 autocast is used on CPU only when its loss on a real batch is this close to fp32's.
BF16_TOLERANCE = 1e-2


@dataclass
class TrainResult:
    run_dir: Path
    status: str  # completed | stopped | early_stopped
    steps: int
    final_dir: Path | None
    summary: dict[str, Any] = field(default_factory=dict)


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


# --------------------------------------------------------------------------- model, precision


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


# --------------------------------------------------------------------------- checkpoints, arguments, run folder


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
