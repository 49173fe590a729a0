"""What one training step runs for each method, in the terms of the SFT estimate (memory.py, workload.py).

SFT (full, lora, qlora, dora, prompt/prefix tuning) runs each example once through the model with
gradients. The preference methods and GRPO, as tuneloop trains them (train/preference.py and
train/grpo.py on TRL 1.16), run more, and `method.preference.adapter` / `method.grpo.adapter` (full,
lora or dora) decides which weights train, with the SFT method of that name's bytes and FLOPs:

- dpo, ipo (DPOTrainer): each pair's chosen and rejected answers, each after the prompt, run as 2
  sequences through the policy with gradients and through the reference without. With lora/dora the
  reference is the policy with its adapter off (no second copy of the weights); with full it is a
  frozen copy (+ the weights' bytes again: 4 per parameter, fp32). tuneloop turns TRL's
  `precompute_ref_log_probs` off, so the reference forward runs at every step: FLOPs per token are the
  policy's 6N (full) or 4N (adapter) plus 2N. Log-probabilities come from TRL's chunked LM head.
- kto (KTOTrainer): one rated answer per row (a pair gives a desirable and an undesirable row), 1
  sequence through the policy with gradients; then, without gradients, the policy on a mismatched "KL"
  answer (its batch neighbour's) and the reference on both: 6N or 4N + 3 × 2N per token. The
  reference as for dpo. train.batch_size counts answers.
- simpo (CPOTrainer), orpo (ORPOTrainer): no reference; 2 sequences per pair; 6N or 4N per token.
  Their loss takes a log-softmax of full-vocabulary logits at every position (trained fraction 1).
- reward (RewardTrainer): a sequence-classification model, the base without its LM head (N minus the
  head's own parameters, plus one score row of h); 2 sequences per pair; no vocabulary-sized logits.
- Every preference method loads the model in fp32, a frozen LoRA base too (4 bytes per parameter).
  train.batch_size counts pairs. The data report measures each record with its longest answer, so 2 ×
  that per pair is an upper bound on its tokens; a ranking of k answers trains k(k-1)/2 pairs.
- grpo (GRPOTrainer): per optimizer step, train.batch_size × grad_accum prompts are each answered
  K = method.grpo.num_generations times, up to C = max_completion_length tokens, in one generate call
  (TRL's generation batch: batch × K × grad_accum sequences, whose KV cache is memory.py's
  generation term); then each micro-batch of batch × K sequences of prompt + answer runs through the
  policy with gradients and, when method.grpo.beta > 0, through the reference without (adapter off,
  or with full a second fp32 copy TRL loads). Work per prompt, with P its prompt tokens:
    prefill    K × P tokens × 2N FLOPs, at the training MFU (one batched forward);
    decoding   K × C tokens × 2N FLOPs, at GENERATION_MFU: each new token reads every weight, so a
               GPU decoding a batch of B sequences reaches at most about B ÷ (peak FLOPS ÷ memory
               bandwidth) of its peak (B/156 on an A100), and transformers' generate adds per-token
               overhead; vLLM (TRL's use_vllm) batches and pages the cache and is several times faster;
    training   K × (P + C) tokens × (6N or 4N, + 2N for the reference).
  Answers are assumed to run to C (an upper bound: most stop at the end of their turn earlier).
  P is the prepared records' mean of tokens minus trained tokens (the prompt before the answer).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal

from tuneloop.config import MethodConfig, ProjectConfig
from tuneloop.config_preference import DPO_LOSSES, PREFERENCE_METHODS, REFERENCE_FREE
from tuneloop.plan.memory import LmHead, Memory, estimate_memory, generation_bytes
from tuneloop.plan.shape import ModelShape, trainable_parameters
from tuneloop.plan.workload import DataStats, flops_per_token, training_tokens

# Assumed share of the GPU's peak FLOPS that token-by-token sampling reaches with transformers' generate
# (see the module docstring): an editable assumption, like workload.DEFAULT_MFU.
GENERATION_MFU = 0.05
Reference = Literal["none", "adapter_off", "copy"]


@dataclass(frozen=True)
class Recipe:
    """What one training step of a method runs, in SFT terms."""

    method: str  # method.name
    trains: MethodConfig  # the SFT method whose weights train (the adapter for preference and GRPO runs)
    sequences: int  # sequences per example through the policy with gradients (2 per pair, K per GRPO prompt)
    reference: Reference
    lm_head: LmHead
    fp32_weights: bool  # the model loads in fp32 whatever the device (the preference methods)
    completion: int = 0  # GRPO: the longest sampled answer, in tokens
    forwards: int = 0  # forward passes without gradients per trained sequence (the reference's, KTO's KL answers)

    @property
    def family(self) -> Literal["sft", "preference", "grpo"]:
        if self.method in PREFERENCE_METHODS:
            return "preference"
        return "grpo" if self.method == "grpo" else "sft"

    @property
    def adapter_field(self) -> str | None:
        """The config field that picks which weights train, for methods where method.name does not."""
        return {"preference": "method.preference.adapter", "grpo": "method.grpo.adapter"}.get(self.family)


def recipe(method: MethodConfig) -> Recipe:
    """The recipe tuneloop trains `method` with."""
    name = method.name
    if name in PREFERENCE_METHODS:
        adapter = method.preference.adapter
        reference: Reference = "none"
        if name in (*DPO_LOSSES, "kto"):
            reference = "copy" if adapter == "full" else "adapter_off"
        head: LmHead = "none" if name == "reward" else "logits" if name in REFERENCE_FREE else "chunked"
        sequences, forwards = (1, 3) if name == "kto" else (2, 1 if reference != "none" else 0)
        return Recipe(name, _as(method, adapter), sequences, reference, head, True, forwards=forwards)
    if name == "grpo":
        g = method.grpo
        ref: Reference = "none" if g.beta == 0 else "copy" if g.adapter == "full" else "adapter_off"
        forwards = 1 if ref != "none" else 0
        return Recipe(
            name, _as(method, g.adapter), g.num_generations, ref, "chunked", False, g.max_completion_length, forwards
        )
    return Recipe(name, method, 1, "none", "logits", fp32_weights=False)


def with_adapter(method: MethodConfig, adapter: str) -> MethodConfig:
    """`method` training `adapter` (full, lora, ...): method.name for SFT, else the method's adapter field."""
    if method.name in PREFERENCE_METHODS:
        return method.model_copy(update={"preference": method.preference.model_copy(update={"adapter": adapter})})
    if method.name == "grpo":
        return method.model_copy(update={"grpo": method.grpo.model_copy(update={"adapter": adapter})})
    return method.model_copy(update={"name": adapter})


def _as(method: MethodConfig, name: str) -> MethodConfig:
    return method.model_copy(update={"name": name})


def model_for(shape: ModelShape, r: Recipe) -> ModelShape:
    """The model the recipe trains: a reward model swaps the LM head for a one-score head."""
    if r.method != "reward":
        return shape
    return replace(
        shape,
        parameters=shape.parameters - shape.head_parameters + shape.hidden,
        modules=tuple(m for m in shape.modules if not m.head),
        head_parameters=0,
    )


def trainable(shape: ModelShape, r: Recipe) -> int:
    """Parameters the recipe trains (an adapter on a reward model trains its new score head in full too)."""
    score = shape.hidden if r.method == "reward" and r.trains.name != "full" else 0
    return trainable_parameters(model_for(shape, r), r.trains) + score


def step_memory(
    shape: ModelShape,
    r: Recipe,
    batch_size: int,
    seq_len: int,
    *,
    device: str,
    precision: str,
    trained_fraction: float,
    gradient_checkpointing: bool,
    base_dtype_bytes: int | None,
    grad_accum: int = 1,
) -> Memory:
    """Peak memory of one step of recipe `r` at `batch_size` examples (pairs, prompts) of `seq_len` tokens."""
    model = model_for(shape, r)
    if r.method in REFERENCE_FREE:
        trained_fraction = 1.0  # CPOTrainer and ORPOTrainer take logits at every position
    elif r.completion:
        trained_fraction = min(1.0, r.completion / seq_len)  # GRPO scores the sampled answer's positions
    base = 4 if r.fp32_weights else base_dtype_bytes
    memory = estimate_memory(
        model,
        r.trains,
        batch_size * r.sequences,
        seq_len,
        device=device,
        precision=precision,
        trained_fraction=trained_fraction,
        gradient_checkpointing=gradient_checkpointing,
        base_dtype_bytes=base,
        lm_head=r.lm_head,
    )
    reference = memory.weights if r.reference == "copy" else 0  # only with full training: the same fp32 weights
    generation = 0
    if r.completion:
        # generate runs outside autocast, so the cache takes the weights' dtype: fp32 when every weight
        # trains, the frozen base's otherwise.
        elem = 4 if r.trains.name == "full" else base or (2 if device == "gpu" else 4)
        generation = generation_bytes(model, batch_size * r.sequences * grad_accum, seq_len, elem)
    return replace(memory, reference=reference, generation=generation)


@dataclass(frozen=True)
class Work:
    """One kind of computation in a run: `tokens` at `flops_per_token` each, at utilisation `mfu`."""

    what: str
    tokens: int
    flops_per_token: int
    mfu: float


def training_flops(shape: ModelShape, r: Recipe, gradient_checkpointing: bool) -> int:
    """FLOPs per token through the policy (fwd + bwd, the forward again when checkpointing) and the reference."""
    n = model_for(shape, r).parameters
    return flops_per_token(n, r.trains.name, gradient_checkpointing) + 2 * n * r.forwards


def work(
    cfg: ProjectConfig,
    data: DataStats | None,
    shape: ModelShape,
    r: Recipe,
    batch_size: int,
    seq_len: int,
    mfu: float,
) -> tuple[Work | None, list[Work], str]:
    """(the training work, the sampling work before it (GRPO), how the tokens were counted); the training
    work is None when the token count cannot be known."""
    flops = training_flops(shape, r, cfg.train.gradient_checkpointing)
    if r.family == "grpo":
        return _grpo_work(cfg, data, shape, r, batch_size, seq_len, flops, mfu)
    tokens, how = training_tokens(cfg, data, batch_size, seq_len)
    if tokens is None or r.family == "sft":
        return (Work("training", tokens, flops, mfu) if tokens is not None else None), [], how
    unit = "answers" if r.method == "kto" else "pairs"
    per_row = float(r.sequences)
    if data is not None and data.tokenized and not cfg.train.max_steps:
        # rows counted records: a ranking trains several pairs, and kto trains both answers of a pair
        count = data.answers if r.method == "kto" else data.pairs
        if count and count != data.train_rows:
            per_row *= count / data.train_rows
            how += f" × {count / data.train_rows:.3g} {unit} per record ({count:,} {unit})"
    how = how.replace(" examples ×", f" {unit} ×")
    how += " × 2 sequences per pair (chosen and rejected)" if r.sequences == 2 else " (one sequence each)"
    return Work("training", round(tokens * per_row), flops, mfu), [], how


def _grpo_work(
    cfg: ProjectConfig,
    data: DataStats | None,
    shape: ModelShape,
    r: Recipe,
    batch_size: int,
    seq_len: int,
    flops: int,
    mfu: float,
) -> tuple[Work | None, list[Work], str]:
    t, k, c = cfg.train, r.sequences, r.completion
    tokenized = data is not None and data.tokenized
    if tokenized:
        prompt = (data.tokens_per_epoch - (data.trained_tokens_per_epoch or 0)) / data.train_rows
        prompt_how = f"{prompt:,.0f} prompt tokens on average"
    else:
        prompt = max(seq_len - c, 1)
        prompt_how = f"{prompt} prompt tokens (an upper bound)"
    if t.max_steps:
        prompts = t.max_steps * batch_size * t.grad_accum
        count_how = f"train.max_steps {t.max_steps:,} × {batch_size * t.grad_accum} prompts"
    elif tokenized:
        rows = min(t.examples or data.train_rows, data.train_rows)
        prompts = round(rows * t.epochs)
        count_how = f"{rows:,} prompts × {t.epochs:g} epochs"
    else:
        return None, [], "unknown: no prepared token counts and no train.max_steps"
    how = f"{count_how} × {k} answers × ({prompt_how} + {c} answer tokens)"
    n2 = 2 * model_for(shape, r).parameters
    sampling = [
        Work("prefill", round(prompts * k * prompt), n2, mfu),
        Work("decoding", prompts * k * c, n2, GENERATION_MFU),
    ]
    return Work("training", round(prompts * k * (prompt + c)), flops, mfu), sampling, how


def hours_of(parts: list[Work], tflops: float) -> float:
    """Hours for all `parts` on a GPU of `tflops` peak."""
    return sum(p.tokens * p.flops_per_token / (tflops * 1e12 * p.mfu) for p in parts) / 3600


def describe(r: Recipe) -> str:
    """One line: what a step of `r` runs (after the method's name)."""
    reference = {
        "none": "no reference model",
        "adapter_off": "the reference is the policy with its adapter off (no second copy of the weights)",
        "copy": "the reference is a frozen fp32 copy of the model",
    }[r.reference]
    if r.method == "reward":
        return (
            "a sequence-classification model (the LM head swapped for a one-score head) scores chosen and rejected, "
            "2 sequences per pair, with gradients; no vocabulary-sized logits; weights in fp32"
        )
    if r.method == "kto":
        return (
            "each rated answer through the policy with gradients; without, a mismatched answer through the policy "
            f"and both through the reference (3 × 2N FLOPs per token); {reference}; weights in fp32"
        )
    if r.family == "preference":
        ref_pass = " and through the reference without (2N FLOPs per token)" if r.reference != "none" else ""
        return (
            f"chosen and rejected, 2 sequences per pair, through the policy with gradients{ref_pass}; {reference}; "
            "weights in fp32"
        )
    if r.family == "grpo":
        ref_pass = ", and through the reference without" if r.reference != "none" else ""
        return (
            f"each prompt answered {r.sequences} times up to {r.completion} tokens (generation), then prompt + answer "
            f"through the policy with gradients{ref_pass}; {reference}"
        )
    return "each example once through the model with gradients"
