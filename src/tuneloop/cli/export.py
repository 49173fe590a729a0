"""`tuneloop export`: merge, convert (safetensors, GGUF + Ollama Modelfile) and verify a run's model."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from tuneloop import config
from tuneloop.cli.common import ConfigOption, SetOption, load_config

if TYPE_CHECKING:
    from tuneloop.export import ExportResult


def export(
    run: Annotated[
        str, typer.Option("--run", help="The run to export: a run folder, a run name under output.dir, or 'latest'.")
    ] = "latest",
    formats: Annotated[
        str | None,
        typer.Option("--format", help="Comma-separated: safetensors, gguf (default: export.formats)."),
    ] = None,
    quant: Annotated[
        str | None,
        typer.Option("--quant", help="GGUF weight types, comma-separated: f16, q8_0 (default: export.quant)."),
    ] = None,
    out: Annotated[Path | None, typer.Option("--out", help="Export folder (default: <run>/export).")] = None,
    config_path: ConfigOption = Path(config.CONFIG_FILENAME),
    overrides: SetOption = None,
) -> None:
    """Export a run's model as a standalone safetensors folder and/or GGUF, verified against the run itself.

    Adapters are merged into the base; every format is loaded back and compared with the run's own model
    (logits, top-1 agreement, greedy tokens, tokenizer, chat template) before the folder appears.
    """
    from tuneloop.export import export_run

    cfg = load_config(config_path, overrides)
    run_dir = resolve_run(cfg, run)
    if cfg.task.type == "classification":
        _export_classifier(cfg, run_dir, formats, quant, out)
        return
    result = export_run(cfg, run_dir, _split(formats), _split(quant), out)
    print_result(result)


def resolve_run(cfg: config.ProjectConfig, name: str) -> Path:
    """A run folder from --run: 'latest', a path, or a folder name under output.dir."""
    from tuneloop import runs
    from tuneloop.errors import UserError

    if name == "latest":
        return runs.latest_run(cfg).resolve()
    path = Path(name)
    if path.is_dir():
        return path.resolve()
    candidate = cfg.path(cfg.output.dir) / name
    if candidate.is_dir():
        return candidate.resolve()
    raise UserError(
        f"no run folder {name} (looked in . and {cfg.path(cfg.output.dir)}); `tuneloop runs list` shows runs"
    )


def _split(value: str | None) -> list[str] | None:
    return [v.strip() for v in value.split(",") if v.strip()] if value else None


def print_result(result: ExportResult) -> None:
    """The verification figures per format, the notes, and where the export is."""
    from rich.table import Table

    from tuneloop import console

    table = Table(title=f"export verified against the run's own model ({result.kind})", title_justify="left")
    for column in ("format", "max |Δlogit|", "limit", "top-1 agreement", "greedy identical", "passed"):
        table.add_column(column)
    for c in result.checks:
        table.add_row(
            c.format,
            f"{c.max_abs_diff:.3g}",
            f"{c.limit_max_abs_diff:g}",
            f"{c.top1_agreement:.2%} of {c.positions}",
            f"{c.generation_matches}/{c.probes}",
            "yes" if c.passed else "no",
        )
    console.out.print(table)
    for note in [result.note, *result.notes]:
        console.out.print(f"note      {note}", markup=False)
    console.out.print(f"export    {result.out}  ({', '.join(result.files)})", markup=False)


def _export_classifier(cfg: config.ProjectConfig, run_dir: Path, formats: str | None, quant: str | None, out) -> None:
    """A classifier run: the folder `pipeline("text-classification")` loads, verified through that pipeline."""
    from tuneloop import console
    from tuneloop.errors import UserError
    from tuneloop.export.classify import describe, export_classifier

    if (_split(formats) or ["safetensors"]) != ["safetensors"] or quant:
        raise UserError("a classifier exports as a safetensors folder only (GGUF holds language models): drop --format")
    result = export_classifier(cfg, run_dir, out)
    console.out.print("\n".join(describe(result)), markup=False)
