"""Run folders: one per training run, self-describing enough to reproduce, evaluate or serve it.

runs/<id>/
  config.resolved.yaml   the config with every default filled in
  data-manifest.json     the prepared data's manifest (content hashes) the run trained on
  environment.json       python, platform, torch, device, git revision of the project
  pip-freeze.txt         every installed package version
  metrics.jsonl          one line per log / evaluation event
  checkpoints/           crash-safe checkpoints (see train/checkpoint.py)
  final/                 the trained adapter or model, with its tokenizer and chat template
  loss.png               train and validation loss curves
  summary.json           status, steps, throughput and what was chosen automatically
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from tuneloop import __version__
from tuneloop.config import RESOLVED_FILENAME, ProjectConfig
from tuneloop.errors import UserError

SUMMARY = "summary.json"
METRICS = "metrics.jsonl"


def new_run_dir(cfg: ProjectConfig) -> Path:
    """A fresh, unique run folder under output.dir: <name>-<UTC timestamp>[-n]."""
    base = cfg.path(cfg.output.dir)
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    name = f"{cfg.output.run_name or cfg.task.type}-{stamp}"
    run, n = base / name, 1
    while run.exists():
        n += 1
        run = base / f"{name}-{n}"
    run.mkdir(parents=True)
    return run


def latest_run(cfg: ProjectConfig) -> Path:
    """The newest run folder under output.dir (for `--resume` without a path)."""
    base = cfg.path(cfg.output.dir)
    runs = [p for p in base.glob("*") if (p / RESOLVED_FILENAME).is_file()] if base.is_dir() else []
    if not runs:
        raise UserError(f"no run to resume in {base}; start one with `tuneloop train`")
    return max(runs, key=lambda p: (p / RESOLVED_FILENAME).stat().st_mtime)


def record_environment(run_dir: Path, project_root: Path) -> None:
    """Write environment.json and pip-freeze.txt, so the run says exactly what it ran on."""
    import torch

    revision = _git(project_root, "rev-parse", "HEAD")
    env: dict[str, Any] = {
        "tuneloop": __version__,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda if torch.cuda.is_available() else None,
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "git_revision": revision,
        "git_dirty": bool(_git(project_root, "status", "--porcelain")) if revision else None,
        "command": sys.argv,
        "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    (run_dir / "environment.json").write_text(json.dumps(env, indent=2) + "\n")
    freeze = subprocess.run(
        [sys.executable, "-m", "pip", "freeze", "--all"], capture_output=True, text=True, check=False
    ).stdout
    (run_dir / "pip-freeze.txt").write_text(freeze)


def _git(root: Path, *args: str) -> str | None:
    try:
        done = subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def write_summary(run_dir: Path, summary: dict[str, Any]) -> None:
    tmp = run_dir / (SUMMARY + ".tmp")
    tmp.write_text(json.dumps(summary, indent=2) + "\n")
    os.replace(tmp, run_dir / SUMMARY)


def read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    path = run_dir / METRICS
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def plot_losses(run_dir: Path) -> Path | None:
    """loss.png: train and validation loss against the step."""
    rows = read_metrics(run_dir)
    train = [(r["step"], r["loss"]) for r in rows if "loss" in r]
    val = [(r["step"], r["eval_loss"]) for r in rows if "eval_loss" in r]
    if not train and not val:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4), dpi=110)
    if train:
        ax.plot(*zip(*train, strict=True), label="train loss")
    if val:
        ax.plot(*zip(*val, strict=True), marker="o", label="validation loss")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss (per trained token)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    out = run_dir / "loss.png"
    fig.savefig(out)
    plt.close(fig)
    return out


def load_final(cfg: ProjectConfig, run_dir: Path) -> tuple[Any, Any]:
    """(model, tokenizer) of a run's final/ folder: the base model plus its adapter, or the full model."""
    from tuneloop.models import load_causal_lm, refuse_pickled_weights

    final = run_dir / "final"
    if not final.is_dir():
        raise UserError(
            f"{run_dir} has no final/ model (the run did not finish); resume it with `tuneloop train --resume`"
        )
    refuse_pickled_weights(final, "the run's final model")
    if _method_of(run_dir) == "reward":
        raise UserError(
            f"{run_dir.name} is a reward model: it scores answers and does not write them. Score with "
            "tuneloop.reward.load_reward_model, or give a language-model run"
        )
    if not (final / "adapter_config.json").is_file():
        return load_causal_lm(str(final), cfg.model.dtype, cfg.model.trust_remote_code)
    from peft import PeftModel

    from tuneloop.models import load_tokenizer

    if not (final / "adapter_model.safetensors").is_file():
        raise UserError(f"{final} has adapter_config.json but no adapter_model.safetensors; the run is incomplete")
    base, _ = load_causal_lm(cfg.model.name, cfg.model.dtype, cfg.model.trust_remote_code, cfg.model.revision)
    model = PeftModel.from_pretrained(base, str(final))
    model.eval()
    return model, load_tokenizer(final)  # the tokenizer and chat template the run trained with


def _method_of(run_dir: Path) -> str | None:
    import yaml

    resolved = run_dir / RESOLVED_FILENAME
    saved = yaml.safe_load(resolved.read_text()) if resolved.is_file() else None
    return ((saved or {}).get("method") or {}).get("name") if isinstance(saved, dict) else None


def merged_for_inference(model: Any) -> Any:
    """A LoRA-family adapter folded into its base's weights: the same function (up to float rounding)
    at the cost of the base alone, which makes generation about a quarter faster on a small model.

    Returned unchanged: a model without an adapter, prompt-learning adapters (nothing to fold), and a
    quantized base (folding would dequantize it, so the result would not be the model that was trained).
    """
    from peft import PeftModel

    if not isinstance(model, PeftModel):
        return model
    if model.active_peft_config.is_prompt_learning or getattr(model.config, "quantization_config", None):
        return model
    return model.merge_and_unload()


# --------------------------------------------------------------------------- provenance

BASE_MODEL_FILE = "base-model.json"  # the model a run was trained on: name, revision, folder, fingerprint


def base_model_record(cfg: ProjectConfig) -> dict[str, Any]:
    """The configured model as a run records it: name, revision, resolved folder, weights fingerprint."""
    from tuneloop import models

    folder = models.resolve(cfg.model.name, cfg.model.revision)
    return {
        "name": cfg.model.name,
        "revision": cfg.model.revision,
        "folder": str(folder),
        "fingerprint": models.fingerprint(folder),
    }


def write_base_model(cfg: ProjectConfig, run_dir: Path) -> None:
    (run_dir / BASE_MODEL_FILE).write_text(json.dumps(base_model_record(cfg), indent=2) + "\n")


def check_same_base(cfg: ProjectConfig, run_dir: Path) -> None:
    """Refuse a run trained on another base model than the configured one (its adapter would sit on other weights)."""
    import yaml

    recorded_path = run_dir / BASE_MODEL_FILE
    if recorded_path.is_file():
        recorded = json.loads(recorded_path.read_text())
        current = base_model_record(cfg)
        if recorded["fingerprint"] == current["fingerprint"]:
            return
        was, now = f"{recorded['name']} ({recorded['folder']})", f"{current['name']} ({current['folder']})"
    else:  # a run from before base-model.json: the config it saved names its model
        saved = yaml.safe_load((run_dir / "config.resolved.yaml").read_text()) or {}
        model = saved.get("model") or {}
        if (model.get("name"), model.get("revision")) == (cfg.model.name, cfg.model.revision):
            return
        was, now = str(model.get("name")), cfg.model.name
    raise UserError(
        f"run {run_dir.name} was trained on {was}, but model.name is now {now}: its weights and the base "
        f"compared against would be another model's. Evaluate it with the config it was trained with "
        f"(--config {run_dir / 'config.resolved.yaml'}), or set model.name back"
    )
