"""A run's model, as it was trained (the reference) and as one standalone set of weights (the export).

LoRA and DoRA adapters are merged into the base with PEFT's `merge_and_unload`. A QLoRA run trained
its adapter on a 4-bit NF4 base: that base is dequantised to float32 first and the adapter merged in
float32 (merging into the 4-bit layers would round the update back to 4 bits). Full fine-tunes are
already standalone. Prompt and prefix tuning add virtual tokens in front of every input; there are
no weights to merge them into, so their export is the adapter plus a reference to its base.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from tuneloop.config import ProjectConfig
from tuneloop.errors import UserError

Kind = Literal["full", "lora", "dora", "qlora", "prompt_tuning", "prefix_tuning"]
UNMERGEABLE: tuple[Kind, ...] = ("prompt_tuning", "prefix_tuning")
ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")


class ExportError(UserError):
    """An export that failed a check; nothing was written."""


@dataclass
class RunModel:
    """What a run's final/ folder holds."""

    kind: Kind
    final: Path
    note: str  # one line for the user: what the export does with this kind of run


def run_kind(run_cfg: ProjectConfig, run_dir: Path) -> RunModel:
    """Read final/ to learn whether the run is a full model or which kind of adapter it is."""
    final = run_dir / "final"
    if not final.is_dir():
        raise UserError(
            f"{run_dir} has no final/ model (the run did not finish); resume it with `tuneloop train --resume`"
        )
    adapter = final / "adapter_config.json"
    if not adapter.is_file():
        return RunModel("full", final, "full fine-tune: exported as is (no adapter to merge)")
    settings = json.loads(adapter.read_text(encoding="utf-8"))
    peft_type = settings.get("peft_type")
    if peft_type == "LORA":
        if run_cfg.method.name == "qlora":
            note = "QLoRA: the 4-bit NF4 base was dequantised to float32 and the adapter merged in float32"
            return RunModel("qlora", final, note)
        kind: Kind = "dora" if settings.get("use_dora") else "lora"
        return RunModel(kind, final, f"{kind.upper()} adapter merged into the base (PEFT merge_and_unload)")
    if peft_type in ("PROMPT_TUNING", "PREFIX_TUNING"):
        kind = "prompt_tuning" if peft_type == "PROMPT_TUNING" else "prefix_tuning"
        return RunModel(
            kind,
            final,
            f"{kind.replace('_', ' ')} cannot be merged: it adds learned virtual tokens in front of every input, "
            "not a change to any weight; the export is the adapter plus its base model reference",
        )
    raise UserError(f"{adapter}: PEFT type {peft_type!r} is not one tuneloop trains or exports")


def load_reference(run_cfg: ProjectConfig, run: RunModel) -> tuple[Any, Any]:
    """(model, tokenizer) exactly as the run trained it: the base plus the unmerged adapter, in float32.

    For QLoRA that is the 4-bit base with the adapter on top, as in training.
    """
    from peft import PeftModel

    from tuneloop.models import load_causal_lm, load_tokenizer

    if run.kind == "full":
        return load_causal_lm(str(run.final), "float32", run_cfg.model.trust_remote_code)
    base = _load_base(run_cfg, four_bit=run.kind == "qlora")
    model = PeftModel.from_pretrained(base, str(run.final))
    model.eval()
    return model, load_tokenizer(run.final)  # the tokenizer and chat template the run trained with


def merged_model(run_cfg: ProjectConfig, run: RunModel) -> Any:
    """The standalone float32 model: the adapter merged into its base (the full model as is)."""
    from peft import PeftModel

    from tuneloop.models import load_causal_lm

    if run.kind == "full":
        return load_causal_lm(str(run.final), "float32", run_cfg.model.trust_remote_code)[0]
    if run.kind in UNMERGEABLE:
        raise ValueError(f"{run.kind} cannot be merged")
    base = _load_base(run_cfg, four_bit=run.kind == "qlora")
    if run.kind == "qlora":
        import torch

        base = base.dequantize(dtype=torch.float32)  # NF4 → float32 Linear layers, the values training saw
    model = PeftModel.from_pretrained(base, str(run.final)).merge_and_unload()
    model.eval()
    return model


def _load_base(run_cfg: ProjectConfig, four_bit: bool) -> Any:
    from tuneloop.models import load_causal_lm

    extra: dict[str, Any] = {}
    if four_bit:
        import torch

        # The same 4-bit settings the run trained with (its method.quant section).
        from tuneloop.models import quantization_config

        extra = {"quantization_config": quantization_config(run_cfg, torch.float32), "device_map": {"": "cpu"}}
    m = run_cfg.model
    return load_causal_lm(m.name, "float32", m.trust_remote_code, m.revision, **extra)[0]


def check_finite(model: Any, final: Path) -> None:
    """Fail, naming the tensor, when any weight holds NaN or infinity (and the adapter tensors behind it)."""
    import torch

    for name, tensor in model.state_dict().items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            bad = int((~torch.isfinite(tensor)).sum())
            culprits = nonfinite_adapter_tensors(final)
            source = f" (from the adapter's {', '.join(culprits[:3])})" if culprits else ""
            raise ExportError(
                f"the merged weights are not finite: {name} has {bad:,} NaN or infinite value(s) of "
                f"{tensor.numel():,}{source}. The run's model is corrupt (a diverged run, or a damaged file); "
                "export an earlier checkpoint or retrain with a lower learning rate"
            )


def nonfinite_adapter_tensors(final: Path) -> list[str]:
    """Names of the adapter tensors in final/ that hold NaN or infinity (none for a full model)."""
    import torch
    from safetensors.torch import load_file

    path = final / "adapter_model.safetensors"
    if not path.is_file():
        return []
    return [
        name
        for name, tensor in load_file(str(path)).items()
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all())
    ]


def save_standalone(model: Any, tokenizer: Any, out: Path) -> None:
    """Weights (safetensors), config, generation config and the tokenizer with its chat template."""
    from transformers import GenerationConfig

    eos = tokenizer.eos_token_id
    model.config.eos_token_id = eos
    generation = model.generation_config or GenerationConfig()
    configured = generation.eos_token_id
    ends = configured if isinstance(configured, list) else [configured]
    generation.eos_token_id = sorted({i for i in [eos, *ends] if i is not None}) if len(ends) > 1 else eos
    generation.bos_token_id = tokenizer.bos_token_id
    generation.pad_token_id = tokenizer.pad_token_id
    model.generation_config = generation
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)


def save_adapter(run: RunModel, run_cfg: ProjectConfig, tokenizer: Any, out: Path) -> None:
    """A prompt/prefix-tuning export: the adapter files, the tokenizer, and which base they need."""
    import shutil

    from tuneloop import models

    culprits = nonfinite_adapter_tensors(run.final)
    if culprits:
        raise ExportError(
            f"the adapter is not finite: {', '.join(culprits[:3])} hold NaN or infinite values; "
            "export an earlier checkpoint or retrain with a lower learning rate"
        )
    out.mkdir(parents=True, exist_ok=True)
    for name in ADAPTER_FILES:
        shutil.copy2(run.final / name, out / name)
    tokenizer.save_pretrained(out)
    base_path = models.resolve(run_cfg.model.name, run_cfg.model.revision)
    base = {
        "model": run_cfg.model.name,
        "revision": run_cfg.model.revision,
        "resolved_path": str(base_path),
        "licence": models.read_licence(base_path),
        "method": run.kind,
        "why_not_merged": run.note,
        "load_with": "peft.PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), this_folder)",
    }
    (out / "base_model.json").write_text(json.dumps(base, indent=2) + "\n", encoding="utf-8")


def load_adapter_export(run_cfg: ProjectConfig, out: Path) -> tuple[Any, Any]:
    """Load a prompt/prefix-tuning export the way a user would: its base, then the exported adapter."""
    from peft import PeftModel

    from tuneloop.models import load_tokenizer

    model = PeftModel.from_pretrained(_load_base(run_cfg, four_bit=False), str(out))
    model.eval()
    return model, load_tokenizer(out)
