"""How much work the run is: tokens from the prepared data, FLOPs per token, and hours on a GPU.

Time = training tokens × FLOPs per token ÷ (peak TFLOPS × MFU). FLOPs per token: 6N for full
fine-tuning, 4N for every adapter method (no weight gradients for the frozen base), +2N with
gradient checkpointing (the forward runs twice); N = total parameters.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from tuneloop.config import ProjectConfig
from tuneloop.errors import UserError

# Assumed model FLOPs utilisation. Adapter methods add many small matmuls that keep the tensor
# cores idle more often, DoRA also renormalises every adapted weight each step, and QLoRA
# dequantises each 4-bit weight every time it is used, so they reach a lower share of peak.
DEFAULT_MFU: dict[str, float] = {
    "full": 0.35,
    "lora": 0.30,
    "dora": 0.20,
    "qlora": 0.20,
    "prompt_tuning": 0.30,
    "prefix_tuning": 0.30,
}


@dataclass(frozen=True)
class DataStats:
    """What `tuneloop data prepare` measured (report.json and manifest.json in data.prepared_dir)."""

    folder: Path
    train_rows: int
    val_rows: int
    tokens_per_epoch: int | None
    trained_tokens_per_epoch: int | None
    longest: int | None
    p90: int | None
    model: str | None
    pairs: int | None = None  # preference data: the chosen/rejected pairs the train records expand into
    answers: int | None = None  # and the rated answers kto trains on: 2 per pair, 1 per unpaired record

    @property
    def tokenized(self) -> bool:
        return self.tokens_per_epoch is not None and self.train_rows > 0

    @property
    def trained_fraction(self) -> float | None:
        if not self.tokenized or not self.trained_tokens_per_epoch:
            return None
        return self.trained_tokens_per_epoch / self.tokens_per_epoch


def read_data_stats(cfg: ProjectConfig) -> DataStats | None:
    """The prepared data's counts, or None when `tuneloop data prepare` has not finished for this project."""
    folder = cfg.path(cfg.data.prepared_dir)
    manifest, report = folder / "manifest.json", folder / "report.json"
    if not (manifest.is_file() and report.is_file()):  # prepare writes the manifest last
        return None
    try:
        rep = json.loads(report.read_text(encoding="utf-8"))
        man = json.loads(manifest.read_text(encoding="utf-8"))
        splits, lengths = rep["splits"], rep["lengths"]
        return DataStats(
            folder=folder,
            train_rows=int(splits["train"]["rows"]),
            val_rows=int(splits["val"]["rows"]),
            tokens_per_epoch=rep["tokens_per_epoch"],
            trained_tokens_per_epoch=rep["trained_tokens_per_epoch"],
            longest=lengths.get("max"),
            p90=lengths.get("p90"),
            model=man.get("model"),
            **(_count_pairs(folder / "train.jsonl") if cfg.task.type == "preference" else {}),
        )
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
        raise UserError(f"{report} is unreadable ({e}); rerun `tuneloop data prepare`") from None


def _count_pairs(path: Path) -> dict[str, int]:
    """The pairs a prepared preference split trains on (one per preference record, every better-worse pair of a
    ranking, as data/pairs.py expands them) and the rated answers kto trains on (2 per pair, 1 unpaired)."""
    if not path.is_file():
        return {}
    pairs = unpaired = 0
    with path.open(encoding="utf-8") as f:
        for line in f:
            if not line.strip():
                continue
            row = json.loads(line)
            ranked = len(row.get("ranking") or [])
            if row.get("kind") == "unpaired":
                unpaired += 1
            else:
                pairs += ranked * (ranked - 1) // 2 if ranked else 1
    return {"pairs": pairs, "answers": 2 * pairs + unpaired}


def training_tokens(
    cfg: ProjectConfig, data: DataStats | None, batch_size: int, seq_len: int
) -> tuple[int | None, str]:
    """(tokens the run will process, how that was worked out); None when it cannot be known."""
    t = cfg.train
    per_step = batch_size * t.grad_accum
    if data is not None and data.tokenized:
        mean = data.tokens_per_epoch / data.train_rows
        if t.max_steps:
            how = f"train.max_steps {t.max_steps:,} × {per_step} examples × {mean:,.0f} tokens on average"
            return round(t.max_steps * per_step * mean), how
        rows = min(t.examples or data.train_rows, data.train_rows)
        epoch = data.tokens_per_epoch * rows / data.train_rows
        return round(epoch * t.epochs), f"{epoch:,.0f} tokens per epoch × {t.epochs:g} epochs"
    if t.max_steps:
        how = f"train.max_steps {t.max_steps:,} × {per_step} examples × {seq_len} tokens (an upper bound)"
        return t.max_steps * per_step * seq_len, how
    return None, "unknown: no prepared token counts and no train.max_steps"


def flops_per_token(parameters: int, method: str, gradient_checkpointing: bool = False) -> int:
    """Training FLOPs per token: 6N for full fine-tuning, 4N for adapters, +2N when checkpointing."""
    factor = 6 if method == "full" else 4
    return (factor + 2 * gradient_checkpointing) * parameters


def training_hours(tokens: int, flops: int, tflops: float, mfu: float) -> float:
    """Hours to process `tokens` at `flops` per token on a GPU doing `tflops` peak at utilisation `mfu`."""
    return tokens * flops / (tflops * 1e12 * mfu) / 3600
