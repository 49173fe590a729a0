"""The plan as data: the JSON `tuneloop plan --json` prints."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from tuneloop.plan import methods
from tuneloop.plan.planner import Plan


def plan_to_dict(plan: Plan) -> dict[str, Any]:
    """The plan as JSON-ready data (`tuneloop plan --json`)."""
    shape = {k: v for k, v in asdict(plan.shape).items() if k != "modules"}
    return {
        "model": shape,
        "method": plan.method,
        "step": {
            "trains": plan.recipe.trains.name,
            "sequences_per_example": plan.recipe.sequences,
            "reference": plan.recipe.reference,
            "lm_head": plan.recipe.lm_head,
            "parameters": methods.model_for(plan.shape, plan.recipe).parameters,
            "what": methods.describe(plan.recipe),
        },
        "sampling": [asdict(w) for w in plan.sampling],
        "trainable_parameters": plan.trainable,
        "batch_size": plan.batch_size,
        "grad_accum": plan.grad_accum,
        "seq_len": plan.setting.seq_len,
        "seq_len_source": plan.seq_len_source,
        "trained_fraction": plan.setting.trained_fraction,
        "gradient_checkpointing": plan.setting.gradient_checkpointing,
        "tokens": plan.tokens,
        "tokens_source": plan.tokens_source,
        "flops_per_token": plan.flops_per_token,
        "mfu": plan.mfu,
        "memory_bytes": {
            "gpu": {**asdict(plan.gpu_memory), "peak": plan.gpu_memory.peak, "precision": plan.setting.gpu_precision},
            "cpu": {**asdict(plan.cpu_memory), "peak": plan.cpu_memory.peak, "precision": plan.setting.cpu_precision},
        },
        "cpu_ram_bytes": plan.cpu_ram,
        "gpus": [
            {
                **asdict(r.gpu),
                "precision": r.precision,
                "peak_bytes": r.peak,
                "fits": r.fits,
                "max_batch": r.max_batch,
                "hours": r.hours,
                "cost_usd": r.cost,
            }
            for r in plan.rows
        ],
        "recommendation": {"method": plan.recommendation, "reason": plan.reason},
        "gpus_file": str(plan.gpus_file),
        "warnings": plan.warnings,
        "notes": plan.notes,
    }
