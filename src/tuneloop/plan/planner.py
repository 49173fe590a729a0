"""`tuneloop plan`: the plan for one config: memory, time and cost on each GPU, a recommended method, and
the warnings and notes that explain it."""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import get_args

from tuneloop.config import MethodConfig, MethodName, ProjectConfig
from tuneloop.config_preference import PREFERENCE_METHODS
from tuneloop.errors import UserError
from tuneloop.plan import methods
from tuneloop.plan.gpus import GIB, Gpu, gpu_table_path, load_gpus, select_gpus
from tuneloop.plan.memory import CPU_OVERHEAD, GPU_OVERHEAD, Memory, max_batch_size
from tuneloop.plan.methods import GENERATION_MFU, Recipe, Work
from tuneloop.plan.shape import ModelShape, model_shape
from tuneloop.plan.workload import DEFAULT_MFU, DataStats, read_data_stats

# "Fits" keeps 10% of the card free: the CUDA caching allocator fragments, and this is an estimate.
# Full fine-tuning is recommended only where it fits "comfortably", in 75% of the card.
FIT_SHARE = 0.90
COMFORT_SHARE = 0.75
FULL_MIN_EXAMPLES = 10_000
SMALL_DATA = 1_000


@dataclass(frozen=True)
class Setting:
    """Everything besides the method and batch size that the memory estimate depends on."""

    seq_len: int
    trained_fraction: float
    gradient_checkpointing: bool
    gpu_precision: str  # mixed | fp32
    cpu_precision: str
    base_dtype_bytes: int | None
    grad_accum: int = 1  # GRPO samples for all of an optimizer step's micro-batches at once
    auto_precision: bool = False  # train.precision auto

    def memory(self, shape: ModelShape, method: MethodConfig, batch_size: int, device: str) -> Memory:
        """The memory estimate for `method` at `batch_size` on 'gpu' or 'cpu' in this setting."""
        return methods.step_memory(
            shape,
            methods.recipe(method),
            batch_size,
            self.seq_len,
            device=device,
            precision=self.gpu_precision if device == "gpu" else self.cpu_precision,
            trained_fraction=self.trained_fraction,
            gradient_checkpointing=self.gradient_checkpointing,
            base_dtype_bytes=self.base_dtype_bytes,
            grad_accum=self.grad_accum,
        )


@dataclass(frozen=True)
class GpuEstimate:
    """One row of the plan: the chosen config on one GPU."""

    gpu: Gpu
    precision: str
    peak: int
    fits: bool
    max_batch: int
    hours: float | None
    cost: float | None


@dataclass
class Plan:
    """The answer of `tuneloop plan`."""

    shape: ModelShape
    method: str
    recipe: Recipe
    trainable: int
    batch_size: int
    grad_accum: int
    setting: Setting
    seq_len_source: str
    tokens: int | None
    tokens_source: str
    flops_per_token: int
    mfu: float
    gpu_memory: Memory
    cpu_memory: Memory
    cpu_ram: int | None
    rows: list[GpuEstimate]
    recommendation: str
    reason: str
    gpus_file: Path
    sampling: list[Work] = field(default_factory=list)  # GRPO's generation, before each step's training
    warnings: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def make_plan(
    cfg: ProjectConfig,
    *,
    model: str | None = None,
    method: str | None = None,
    gpus: list[str] | None = None,
    batch_size: int | None = None,
    seq_len: int | None = None,
    mfu: float | None = None,
    gpus_file: Path | None = None,
) -> Plan:
    """Estimate memory, time and cost of training `cfg` (with these overrides) on each GPU, and recommend a method."""
    if method is not None and method not in get_args(MethodName):
        raise UserError(f"--method {method} is not a method; choose from {', '.join(get_args(MethodName))}")
    method_cfg = cfg.method.model_copy(update={"name": method}) if method else cfg.method
    if (batch_size is not None and batch_size < 1) or (seq_len is not None and seq_len < 1):
        raise UserError("--batch-size and --seq-len must be at least 1")
    if mfu is not None and not 0 < mfu <= 1:
        raise UserError(f"--mfu is a fraction of the GPU's peak, between 0 and 1 (e.g. 0.35), not {mfu}")
    check_method(cfg, method_cfg.name)
    recipe = methods.recipe(method_cfg)
    table_path = gpu_table_path(cfg, gpus_file)
    chosen_gpus = select_gpus(load_gpus(table_path), gpus)
    shape = model_shape(model or cfg.model.name, cfg.model.revision, cfg.model.trust_remote_code)
    data = read_data_stats(cfg)
    batch = batch_size or cfg.train.batch_size
    seq, seq_source = _seq_len(cfg, data, seq_len, recipe)
    setting = _setting(cfg, data, seq)
    utilisation = mfu or DEFAULT_MFU[recipe.trains.name]
    training, sampling, tokens_source = methods.work(cfg, data, shape, recipe, batch, seq, utilisation)
    tokens = training.tokens if training is not None else None
    flops = methods.training_flops(shape, recipe, setting.gradient_checkpointing)
    rows = [
        estimate_gpu(shape, method_cfg, batch, setting, g, tokens, flops, utilisation, sampling) for g in chosen_gpus
    ]
    recommendation, reason = recommend(shape, method_cfg, batch, setting, chosen_gpus, data)
    plan = Plan(
        shape=shape,
        method=method_cfg.name,
        recipe=recipe,
        trainable=methods.trainable(shape, recipe),
        batch_size=batch,
        grad_accum=cfg.train.grad_accum,
        setting=setting,
        seq_len_source=seq_source,
        tokens=tokens,
        tokens_source=tokens_source,
        flops_per_token=flops,
        mfu=utilisation,
        gpu_memory=setting.memory(shape, method_cfg, batch, "gpu"),
        cpu_memory=setting.memory(shape, method_cfg, batch, "cpu"),
        cpu_ram=_physical_memory(),
        rows=rows,
        recommendation=recommendation,
        reason=reason,
        gpus_file=table_path,
        sampling=sampling,
    )
    plan.warnings = _warnings(cfg, data, tokens)
    if setting.gpu_precision == "fp32":
        plan.warnings.append(
            "train.precision is fp32: GPU hours use the table's 16-bit tensor-core peak, and fp32 runs several "
            "times slower; set train.precision=auto to train in bf16/fp16"
        )
    elif fp32 := [r.gpu.name for r in rows if r.precision == "fp32"]:
        plan.warnings.append(
            f"GRPO trains in fp32 on {', '.join(fp32)} (no bf16; train.precision auto picks fp32 there): its hours "
            "use the table's 16-bit peak, and fp32 runs several times slower; set train.precision=fp16 for them"
        )
    plan.notes = _notes(plan, data, model)
    return plan


def check_method(cfg: ProjectConfig, method: str) -> None:
    """`tuneloop plan` sizes causal language models; a --method must suit the task's data."""
    if cfg.task.type == "classification" or method in ("features", "last_k"):
        raise UserError(
            "tuneloop plan sizes causal language-model runs (SFT, preference and GRPO), not classifiers "
            "(task.type classification); a classifier's encoder is small: time it with `tuneloop train --set "
            "train.max_steps=5` and read the run's summary.json"
        )
    if (cfg.task.type == "preference") != (method in PREFERENCE_METHODS):
        wanted = ", ".join(PREFERENCE_METHODS)
        why = (
            f"a preference task trains with {wanted}"
            if cfg.task.type == "preference"
            else (f"{method} trains on preference pairs (task.type preference); this is a {cfg.task.type} task")
        )
        raise UserError(f"--method {method} does not suit this project: {why}; pick a method for its data")


def _seq_len(cfg: ProjectConfig, data: DataStats | None, asked: int | None, recipe: Recipe) -> tuple[int, str]:
    if asked:
        return asked, "--seq-len"
    answer = recipe.completion
    if data is not None and data.longest:
        if answer:  # GRPO: the longest record bounds the prompt; the answer is sampled up to its limit
            return data.longest + answer, (
                f"the longest prepared example ({data.longest}: it bounds the prompt) + method.grpo."
                f"max_completion_length {answer}: the longest prompt with the longest answer sets the peak"
            )
        typical = f" (p90 is {data.p90}; pass --seq-len for a typical batch)" if data.p90 else ""
        what = "pair (prompt + its longer answer)" if recipe.family == "preference" else "example"
        return data.longest, f"the longest prepared {what}: a batch of long examples sets the peak{typical}"
    if answer:
        return cfg.data.max_length + answer, f"data.max_length + method.grpo.max_completion_length {answer}"
    return cfg.data.max_length, "data.max_length (no prepared lengths)"


def _setting(cfg: ProjectConfig, data: DataStats | None, seq_len: int) -> Setting:
    precision = cfg.train.precision
    fraction = data.trained_fraction if data is not None else None
    dtype = cfg.model.dtype
    return Setting(
        seq_len=seq_len,
        trained_fraction=fraction if fraction is not None else 1.0,
        gradient_checkpointing=cfg.train.gradient_checkpointing,
        gpu_precision="fp32" if precision == "fp32" else "mixed",
        cpu_precision="mixed" if precision in ("bf16", "fp16") else "fp32",
        base_dtype_bytes=None if dtype == "auto" else (4 if dtype == "float32" else 2),
        grad_accum=cfg.train.grad_accum,
        auto_precision=precision == "auto",
    )


def estimate_gpu(
    shape: ModelShape,
    method: MethodConfig,
    batch: int,
    setting: Setting,
    gpu: Gpu,
    tokens: int | None,
    flops: int,
    mfu: float,
    sampling: list[Work] | None = None,
) -> GpuEstimate:
    """Peak memory, whether it fits, the largest batch that fits, hours and dollars on one GPU.

    Hours cover `tokens` of training at `flops` per token and utilisation `mfu`, plus the `sampling` work."""
    if setting.auto_precision and not gpu.bf16 and methods.recipe(method).family == "grpo":
        setting = replace(setting, gpu_precision="fp32")  # train/grpo.py: auto is bf16 where the GPU has it, else fp32
    peak = setting.memory(shape, method, batch, "gpu").peak
    limit = FIT_SHARE * gpu.memory_bytes
    biggest = max_batch_size(lambda b: setting.memory(shape, method, b, "gpu").peak, int(limit))
    parts = [Work("training", tokens, flops, mfu), *(sampling or [])] if tokens is not None else []
    hours = methods.hours_of(parts, gpu.tflops) if parts and biggest else None
    precision = "fp32" if setting.gpu_precision == "fp32" else ("bf16" if gpu.bf16 else "fp16")
    return GpuEstimate(
        gpu=gpu,
        precision=precision,
        peak=peak,
        fits=peak <= limit,
        max_batch=biggest,
        hours=hours,
        cost=hours * gpu.usd_per_hour if hours is not None else None,
    )


def recommend(
    shape: ModelShape, method: MethodConfig, batch: int, setting: Setting, gpus: list[Gpu], data: DataStats | None
) -> tuple[str, str]:
    """(method, why): full when it fits comfortably and there are ≥10k examples, else LoRA, else QLoRA.

    For preference and GRPO runs the answer is the adapter (method.preference.adapter, method.grpo.adapter),
    which has no QLoRA."""
    field_name = methods.recipe(method).adapter_field
    choose = f" (set {field_name})" if field_name else ""

    def where(name: str, share: float) -> list[Gpu]:
        m = methods.with_adapter(method, name)
        return [g for g in gpus if setting.memory(shape, m, batch, "gpu").peak <= share * g.memory_bytes]

    def cheapest(found: list[Gpu]) -> str:
        return min(found, key=lambda g: g.usd_per_hour).name

    rows = data.train_rows if data is not None else None
    full = where("full", COMFORT_SHARE)
    if full and rows is not None and rows >= FULL_MIN_EXAMPLES:
        return "full", (
            f"full fine-tuning fits comfortably (cheapest: {cheapest(full)}) and {rows:,} training examples "
            f"(≥ {FULL_MIN_EXAMPLES:,}) are enough to move every weight without overfitting{choose}"
        )
    lora = where("lora", FIT_SHARE)
    if lora:
        if not full:
            why = "full fine-tuning does not fit comfortably on any GPU considered"
        elif rows is None:
            why = "the data size is unknown (run `tuneloop data prepare`)"
        else:
            why = f"{rows:,} training examples are fewer than {FULL_MIN_EXAMPLES:,}: an adapter overfits less"
        return "lora", f"{why}; LoRA fits (cheapest: {cheapest(lora)}){choose}"
    qlora = where("qlora", FIT_SHARE) if not field_name else []
    if qlora:
        return "qlora", f"LoRA's 16-bit base does not fit; QLoRA's 4-bit base does (cheapest: {cheapest(qlora)})"
    return "none", (
        f"nothing fits at batch size {batch}: set train.gradient_checkpointing=true, lower --batch-size (raise "
        "train.grad_accum to keep the effective batch), use a GPU with more memory, or a smaller model"
    )


def _physical_memory() -> int | None:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):  # not a POSIX system that reports it
        return None


def _warnings(cfg: ProjectConfig, data: DataStats | None, tokens: int | None) -> list[str]:
    out = []
    prepare = "run `tuneloop data prepare` first"
    if data is None:
        guess = "the token count assumes every example is as long" if tokens is not None else "no time or cost"
        out.append(
            f"no prepared data in {cfg.path(cfg.data.prepared_dir)}: sequence length is data.max_length and "
            f"{guess}; {prepare} for real numbers"
        )
        return out
    if not data.tokenized:
        out.append(
            "the data was prepared without tokenizing (--no-tokenize): lengths and token counts are unknown; "
            "rerun `tuneloop data prepare` without --no-tokenize"
        )
    if data.train_rows < SMALL_DATA:
        out.append(
            f"only {data.train_rows:,} training examples; fine-tuning usually needs at least {SMALL_DATA:,} for a "
            "reliable gain: add data, or prefer LoRA and expect a small, noisy improvement"
        )
    if data.val_rows == 0:
        out.append(
            "no validation split: training cannot pick the best checkpoint or stop early; set data.split.val "
            "(e.g. --set data.split.val=0.1 --set data.split.train=0.8) or data.val, and rerun `tuneloop data prepare`"
        )
    return out


def _notes(plan: Plan, data: DataStats | None, model: str | None) -> list[str]:
    s, r = plan.setting, plan.recipe
    held = "weights + reference + optimizer" if r.reference == "copy" else "weights + optimizer"
    transient = "16-bit weight copies + activations + logits" + (", generation" if plan.sampling else "")
    notes = [
        f"model shape: {plan.shape.source}",
        f"memory = {held} + max(gradients, {transient}) + overhead: backward frees each layer's activations as it "
        "creates its gradients"
        + ("; sampling runs before the forward, after the gradients are freed" if plan.sampling else ""),
        f"{r.method}: {methods.describe(r)}",
        _method_note(r.trains.name, r.fp32_weights),
        "activations: what autograd keeps for a Llama-style block with memory-efficient (SDPA) attention"
        + (", recomputing each layer (gradient checkpointing)" if s.gradient_checkpointing else ""),
        f"sequence length {s.seq_len}: {plan.seq_len_source}",
        _logits_note(plan, data),
        f"overhead: {GPU_OVERHEAD / GIB:g} GiB per GPU for the CUDA context; {CPU_OVERHEAD / GIB:.2f} GiB on CPU",
        "on CPU, glibc's allocator may keep freed activation memory, so peak RSS can exceed the estimate by up to "
        "the activations; MALLOC_MMAP_THRESHOLD_=65536 makes it return large blocks",
        f"fits: peak within {FIT_SHARE:.0%} of the GPU's memory; max batch is the largest integer batch size that "
        "fits (memory grows linearly with it), for one GPU without sharding",
        f"time: tokens × {plan.flops_per_token / methods.model_for(plan.shape, r).parameters:g}N FLOPs ÷ (peak TFLOPS "
        f"× MFU {plan.mfu:g}); padding and evaluation passes are not counted",
        f"GPU memory, TFLOPS and prices are editable assumptions from {plan.gpus_file}",
    ]
    if plan.sampling:
        notes.insert(-1, _generation_note(plan))
    if data is not None and data.model and model and data.model != model:
        notes.append(f"token counts come from the data prepared with {data.model}'s tokenizer")
    return notes


def _logits_note(plan: Plan, data: DataStats | None) -> str:
    r, fraction = plan.recipe, plan.setting.trained_fraction
    source = " (from the data report)" if data is not None and data.trained_fraction else " (assumed: no report)"
    if r.lm_head == "none":
        return "logits: none of vocabulary size; the reward head gives one score per sequence"
    if r.lm_head == "chunked":
        return (
            "logits: TRL's chunked LM head scores the trained positions tile by tile, never holding all their "
            "vocabulary-sized logits" + (source if not r.completion else " (the sampled answers)")
        )
    if r.family == "preference":
        return "logits at every position: the loss takes a log-softmax over the whole sequence (TRL's CPO/ORPO)"
    return f"logits only at trained positions: {fraction:.0%} of tokens" + source


def _generation_note(plan: Plan) -> str:
    """How much of the time sampling takes (the same share on every GPU), and how to speed it up."""
    training = Work("training", plan.tokens or 0, plan.flops_per_token, plan.mfu)
    total = methods.hours_of([training, *plan.sampling], 1.0)
    decoding = methods.hours_of([w for w in plan.sampling if w.what == "decoding"], 1.0)
    share = decoding / total if total else 0.0
    verdict = "generation dominates" if share > 0.5 else "generation is a large part" if share > 0.2 else "generation"
    return (
        f"{verdict}: decoding the answers is {share:.0%} of the estimated time (2N FLOPs per generated token at an "
        f"assumed {GENERATION_MFU:g} of peak: token-by-token decoding is bound by memory bandwidth, not FLOPS; "
        "prefill at the training MFU); on GPUs TRL can sample with vLLM (GRPOConfig use_vllm), several times "
        "faster, which tuneloop does not switch on"
    )


def _method_note(method: str, fp32_base: bool = False) -> str:
    if fp32_base and method in ("lora", "dora"):
        what = "adapter and magnitude" if method == "dora" else "adapter"
        return (
            f"{method}: frozen base in fp32, 4 B/param (preference runs load the model so) + 16 B per {what} parameter"
        )
    per_param = {
        "full": "full: fp32 master weights 4 B + gradients 4 B + AdamW 8 B per parameter, + 2 B 16-bit copies in "
        "mixed precision",
        "lora": "lora: frozen base 2 B/param on GPU (4 B on CPU) + 16 B per adapter parameter",
        "dora": "dora: frozen base 2 B/param on GPU (4 B on CPU) + 16 B per adapter and magnitude parameter",
        "qlora": "qlora: 4-bit NF4 linear layers ~0.52 B/param (double quantisation; 0.56 B without), other "
        "parameters fp32, + 16 B per adapter parameter",
        "prompt_tuning": "prompt_tuning: fp32 frozen base 4 B/param + 16 B per virtual-token parameter",
        "prefix_tuning": "prefix_tuning: fp32 frozen base 4 B/param + 16 B per prefix parameter",
    }
    return per_param[method]
