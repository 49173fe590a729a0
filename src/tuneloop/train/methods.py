"""Load the base model and wrap it for the chosen method (full, LoRA, QLoRA, DoRA, prompt/prefix tuning).

Everything adapter-shaped goes through PEFT; this module only picks the settings and checks them.
"""

from __future__ import annotations

import re
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


def linear_names(model: Any) -> list[str]:
    """The distinct names of the linear layers inside the transformer blocks: what 'all-linear' adapts."""
    import torch

    output = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    names = {
        name.rsplit(".", 1)[-1]
        for name, module in model.named_modules()
        # bitsandbytes' Linear4bit subclasses nn.Linear, so a 4-bit base is covered too.
        if module is not output and re.search(r"\.\d+\.", name) and isinstance(module, torch.nn.Linear)
    }
    return sorted(names)


# Where a config keeps its transformer block count; the planner (plan/shape.py) reads the same keys.
BLOCK_COUNT_KEYS = ("num_hidden_layers", "n_layer", "num_layers")


def block_count(model: Any) -> int | None:
    """How many transformer blocks the model has (config.num_hidden_layers or n_layer), if it says."""
    config = getattr(model, "config", None)
    for key in BLOCK_COUNT_KEYS:
        if isinstance(getattr(config, key, None), int):
            return getattr(config, key)
    return None


def peft_config(cfg: ProjectConfig, model: Any) -> Any:
    """The PEFT config for the method on `model` (the loaded base), or None for full fine-tuning."""
    import peft

    name = cfg.method.name
    if name == "full":
        return None
    if name in ("lora", "qlora", "dora"):
        lora = cfg.method.lora
        targets = lora_targets(cfg, getattr(model.config, "model_type", ""))
        layers = None
        if lora.last_layers is not None:
            blocks = block_count(model)
            if blocks is None:
                raise UserError(
                    "method.lora.last_layers: this model's config names no layer count (num_hidden_layers); "
                    "remove last_layers to adapt every block"
                )
            if lora.last_layers > blocks:
                raise UserError(
                    f"method.lora.last_layers is {lora.last_layers} but the model has {blocks} transformer "
                    f"blocks; set it to at most {blocks}, or null for all"
                )
            layers = list(range(blocks - lora.last_layers, blocks))
            # PEFT takes a layer list only with explicit module names, so 'all-linear' is spelled out.
            targets = linear_names(model) if targets == "all-linear" else targets
        return peft.LoraConfig(
            r=lora.r,
            lora_alpha=lora.alpha,
            lora_dropout=lora.dropout,
            target_modules=targets,
            layers_to_transform=layers,
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
    config = peft_config(cfg, model)
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
