"""Run folders for export tests, made without training: the base plus a fresh adapter whose update is non-zero.

A freshly initialised LoRA is a no-op (its B matrices start at zero), which would make "the merge matches
the adapter model" trivially true; these adapters get random B matrices, so merging really changes weights.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from tuneloop import config


def make_project(root: Path, model: str, method: str = "lora", **sections: dict) -> Path:
    """A tuneloop.yaml under root for `model`; returns its path."""
    root.mkdir(parents=True, exist_ok=True)
    doc = {
        "task": {"objective": "answer support tickets in one line", "type": "chat"},
        "model": {"name": model},
        "method": {"name": method, "lora": {"r": 4, "alpha": 8, "dropout": 0.0}, "prompt": {"num_virtual_tokens": 3}},
        "train": {"report_to": [], "precision": "fp32"},
        "export": {"probes": 3, "max_new_tokens": 8},
        **sections,
    }
    path = root / "tuneloop.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def make_adapter_run(project: Path, name: str = "chat-test", std: float = 0.05, seed: int = 0) -> Path:
    """runs/<name>/ with config.resolved.yaml and final/ (adapter + tokenizer), as `tuneloop train` leaves it."""
    import peft
    import torch

    from tuneloop.models import load_causal_lm
    from tuneloop.train.methods import peft_config

    cfg = config.load(project)
    run_dir = cfg.path(cfg.output.dir) / name
    cfg.save_resolved(run_dir)
    model, tokenizer = load_causal_lm(cfg.model.name, "float32")
    final = run_dir / "final"
    if cfg.method.name == "full":
        torch.manual_seed(seed)
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p) * std)
        model.save_pretrained(final)
    else:
        torch.manual_seed(seed)
        wrapped = peft.get_peft_model(model, peft_config(cfg, model))
        with torch.no_grad():
            for n, p in wrapped.named_parameters():
                if "lora_B" in n or "prompt_encoder" in n:
                    p.copy_(torch.randn_like(p) * (std if "lora_B" in n else 1.0))
        wrapped.save_pretrained(final)
    tokenizer.save_pretrained(final)
    (run_dir / "summary.json").write_text('{"status": "completed"}\n')
    return run_dir
