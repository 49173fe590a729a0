"""Load the base model and wrap it for the chosen method (full, LoRA, QLoRA, DoRA, prompt/prefix tuning).

Everything adapter-shaped goes through PEFT; this module only picks the settings and checks them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from tuneloop.config import ProjectConfig
from tuneloop.errors import UserError

# Attention and MLP projections per architecture: what "auto" adapts. Unknown architectures get
# PEFT's "all-linear" (every linear layer except the output head), which is the same set for these.
LORA_TARGETS: dict[str, list[str]] = {
    name: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    for name in ("llama", "mistral", "mixtral", "qwen2", "qwen3", "gemma", "gemma2", "gemma3_text", "olmo2", "granite")
}
LORA_TARGETS |= {
    "phi3": ["qkv_proj", "o_proj", "gate_up_proj", "down_proj"],
    "gpt2": ["c_attn", "c_proj", "c_fc"],
    "gpt_neox": ["query_key_value", "dense", "dense_h_to_4h", "dense_4h_to_h"],
    "falcon": ["query_key_value", "dense", "dense_h_to_4h", "dense_4h_to_h"],
}


@dataclass
class Parameters:
    trainable: int
    total: int

    def describe(self) -> str:
        return f"{self.trainable:,} trainable of {self.total:,} parameters ({self.trainable / max(self.total, 1):.2%})"


def count_parameters(model: Any) -> Parameters:
    """Trainable and total parameter counts (4-bit weights count as their unpacked size)."""
    trainable = total = 0
    for p in model.parameters():
        n = p.numel()
        if p.__class__.__name__ == "Params4bit":
            n *= 2  # two 4-bit values per stored byte
        total += n
        if p.requires_grad:
            trainable += n
    return Parameters(trainable, total)


def lora_targets(cfg: ProjectConfig, model_type: str) -> list[str] | str:
    targets = cfg.method.lora.target_modules
    if targets == "all-linear":
        return "all-linear"
    if targets == "auto":
        return LORA_TARGETS.get(model_type, "all-linear")
    return list(targets)


def peft_config(cfg: ProjectConfig, model_type: str) -> Any:
    """The PEFT config for the method, or None for full fine-tuning."""
    import peft

    name = cfg.method.name
    if name == "full":
        return None
    if name in ("lora", "qlora", "dora"):
        lora = cfg.method.lora
        return peft.LoraConfig(
            r=lora.r,
            lora_alpha=lora.alpha,
            lora_dropout=lora.dropout,
            target_modules=lora_targets(cfg, model_type),
            use_dora=name == "dora",
            task_type="CAUSAL_LM",
        )
    n = cfg.method.prompt.num_virtual_tokens
    if name == "prompt_tuning":
        return peft.PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=n)
    return peft.PrefixTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=n)


def wrap(model: Any, cfg: ProjectConfig, gradient_checkpointing: bool) -> Any:
    """Apply the method to a loaded base model; returns the model to train."""
    import peft

    if gradient_checkpointing:
        # Reentrant checkpointing drops gradients for frozen-input adapters; non-reentrant does not.
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    config = peft_config(cfg, getattr(model.config, "model_type", ""))
    if config is None:
        model.requires_grad_(True)
        return model
    if cfg.method.name == "qlora":
        model = peft.prepare_model_for_kbit_training(model, use_gradient_checkpointing=gradient_checkpointing)
        keep_4bit_weights_trainable(model)
    elif gradient_checkpointing:
        model.enable_input_require_grads()
    try:
        return peft.get_peft_model(model, config)
    except ValueError as e:  # e.g. target modules that do not exist in this architecture
        raise UserError(f"method {cfg.method.name}: {e}") from e


def keep_4bit_weights_trainable(model: Any) -> None:
    """Stop bitsandbytes from repacking 4-bit weights for CPU inference during evaluation.

    On CPUs with AVX512-BF16, a Linear4bit in eval mode converts its weight once, for good, to a
    layout whose kernel has no backward. Training after the first validation pass would then get
    no gradient through the frozen base layers (bitsandbytes only warns), so every adapter below
    the top layer would silently stop learning.
    """
    for module in model.modules():
        if hasattr(module, "support_avx512bf16_for_cpu"):
            module.support_avx512bf16_for_cpu = False
