"""`tuneloop plan`: memory, time and cost of the configured fine-tune on each GPU, before spending money."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from tuneloop import config
from tuneloop.cli.common import ConfigOption, SetOption, load_config

if TYPE_CHECKING:
    from tuneloop.plan import Plan


def plan(
    config_path: ConfigOption = Path(config.CONFIG_FILENAME),
    overrides: SetOption = None,
    model: Annotated[
        str | None,
        typer.Option(
            "--model",
            help="Plan for this model instead of model.name: an embedded name, a folder with config.json, a .gguf, "
            "a hub id, or a parameter count like 135M, 7B or 70B (a Llama-2-shaped model of that size: "
            "32k vocabulary, one layer per 128 of width, SwiGLU MLP 8/3 as wide).",
        ),
    ] = None,
    method: Annotated[
        str | None,
        typer.Option(
            "--method",
            help="full, lora, qlora, dora, prompt_tuning, prefix_tuning or grpo; for a preference task dpo, ipo, "
            "simpo, orpo, kto or reward (default: method.name).",
        ),
    ] = None,
    gpu: Annotated[
        list[str] | None,
        typer.Option("--gpu", help="A GPU from the table, e.g. H100 or 'A100 80GB' (repeatable; default: all)."),
    ] = None,
    batch_size: Annotated[
        int | None, typer.Option("--batch-size", help="Examples per micro-batch (default: train.batch_size).")
    ] = None,
    seq_len: Annotated[
        int | None,
        typer.Option(
            "--seq-len",
            help="Tokens per example (default: the longest prepared example, else data.max_length).",
        ),
    ] = None,
    mfu: Annotated[
        float | None,
        typer.Option(
            "--mfu",
            help="Assumed share of the GPU's peak FLOPS reached (default: 0.35 full, 0.30 LoRA and prompt/prefix "
            "tuning, 0.20 QLoRA and DoRA).",
        ),
    ] = None,
    gpus_file: Annotated[
        Path | None,
        typer.Option(
            "--gpus-file",
            help="Your own GPU table (a copy of the shipped gpus.yaml); default: gpus.yaml next to the config, "
            "else the shipped one.",
        ),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of tables.")] = False,
) -> None:
    """Estimate peak memory, training time and cost on each GPU, and recommend a method, before training."""
    from tuneloop import console
    from tuneloop.plan import make_plan, plan_to_dict

    cfg = load_config(config_path, overrides)
    result = make_plan(
        cfg,
        model=model,
        method=method,
        gpus=gpu,
        batch_size=batch_size,
        seq_len=seq_len,
        mfu=mfu,
        gpus_file=gpus_file,
    )
    if as_json:
        print(json.dumps(plan_to_dict(result), indent=2))
        return
    console.out.print("\n".join(_summary(result)), markup=False)
    console.out.print(_gpu_table(result))
    console.out.print(_breakdown_table(result))
    console.out.print(_cpu_line(result), markup=False)
    console.out.print(f"recommend {result.recommendation}: {result.reason}", markup=False)
    console.out.print("notes:\n" + "\n".join(f"  - {n}" for n in result.notes), markup=False)
    for w in result.warnings:
        console.warn(w)


def _gib(n: float) -> str:
    gib = n / 1024**3
    return f"{gib:,.1f}" if gib >= 10 else f"{gib:.2f}"


def _small(x: float | None) -> str:
    if x is None:
        return "-"
    return "<0.01" if x < 0.01 else f"{x:,.2f}"


def _summary(p: Plan) -> list[str]:
    from tuneloop.plan import methods

    s, r = p.shape, p.recipe
    share = p.trainable / max(methods.model_for(s, r).parameters, 1)
    tokens = f"{p.tokens:,} ({p.tokens_source})" if p.tokens is not None else p.tokens_source
    trains = f" ({r.adapter_field} {r.trains.name})" if r.adapter_field else ""
    unit = {"preference": "pairs", "grpo": f"prompts (× {r.sequences} answers)"}.get(r.family, "examples")
    unit = "rated answers" if r.method == "kto" else unit
    lines = [
        f"model     {s.name}: {s.model_type}, {s.parameters:,} parameters, {s.layers} layers × {s.hidden} wide",
        f"method    {p.method}{trains}: {p.trainable:,} trainable ({share:.2%})",
        f"step      {methods.describe(r)}",
        f"batch     {p.batch_size} {unit} × {p.setting.seq_len} tokens per micro-batch, grad_accum {p.grad_accum}",
        f"tokens    {tokens}",
        f"compute   {p.flops_per_token:,.3g} FLOPs per token at MFU {p.mfu:g}",
    ]
    for w in p.sampling:
        lines.append(f"sampling  {w.what}: {w.tokens:,} tokens × {w.flops_per_token:,.3g} FLOPs at MFU {w.mfu:g}")
    return lines


def _gpu_table(p: Plan):
    from rich.table import Table

    table = Table(title=f"{p.method} on one GPU", title_justify="left")
    for col in ("GPU", "memory GiB", "precision", "fits", "peak GiB", "max batch", "hours", "cost $"):
        table.add_column(col, justify="left" if col in ("GPU", "precision", "fits") else "right")
    for r in p.rows:
        table.add_row(
            r.gpu.name,
            f"{r.gpu.memory_gb:g}",
            r.precision,
            "yes" if r.fits else "no",
            _gib(r.peak),
            str(r.max_batch) if r.max_batch else "-",
            _small(r.hours),
            _small(r.cost),
        )
    return table


def _breakdown_table(p: Plan):
    from rich.table import Table

    gpu = "GPU (16-bit)" if p.setting.gpu_precision == "mixed" else "GPU (fp32)"
    cpu = "CPU (16-bit)" if p.setting.cpu_precision == "mixed" else "CPU (fp32)"
    table = Table(title=f"memory at batch {p.batch_size}, GiB", title_justify="left")
    table.add_column("component")
    table.add_column(gpu, justify="right")
    table.add_column(cpu, justify="right")
    rows: list[tuple[str, str]] = [
        ("weights", "weights"),
        ("gradients", "gradients"),
        ("optimizer (AdamW)", "optimizer"),
        ("16-bit weight copies", "weight_copies"),
        ("activations", "activations"),
        ("logits", "logits"),
        ("overhead", "overhead"),
    ]
    if p.gpu_memory.reference:
        rows.insert(1, ("reference model", "reference"))
    if p.gpu_memory.generation:
        rows.insert(-1, ("generation (KV cache)", "generation"))
    for label, attr in rows:
        table.add_row(label, _gib(getattr(p.gpu_memory, attr)), _gib(getattr(p.cpu_memory, attr)))
    table.add_row("peak", _gib(p.gpu_memory.peak), _gib(p.cpu_memory.peak))
    return table


def _cpu_line(p: Plan) -> str:
    need = _gib(p.cpu_memory.peak)
    if p.cpu_ram is None:
        return f"cpu       this machine: peak {need} GiB (RAM size unknown)"
    verdict = "fits" if p.cpu_memory.peak <= p.cpu_ram else "does not fit"
    return f"cpu       this machine: peak {need} GiB of {_gib(p.cpu_ram)} GiB RAM: {verdict} (no time estimate on CPU)"
