"""`tuneloop data ...`: prepare the data, and look at it the way the trainer will."""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Annotated

import typer

from tuneloop import config
from tuneloop.cli.common import ConfigOption, SetOption, load_config

app = typer.Typer(help="Validate, clean, redact, dedupe, split and report; inspect examples.", no_args_is_help=True)


@app.command("prepare")
def prepare(
    config_path: ConfigOption = Path(config.CONFIG_FILENAME),
    overrides: SetOption = None,
    strict: Annotated[bool, typer.Option("--strict", help="Fail (exit 1) if any record is rejected.")] = False,
    pii: Annotated[
        str | None,
        typer.Option("--pii", help="Override data.pii.mode: redact, detect (report only) or off."),
    ] = None,
    fix: Annotated[
        bool, typer.Option("--fix", help="Remove train records that duplicate your own val/test records.")
    ] = False,
    tokenize: Annotated[
        bool,
        typer.Option("--tokenize/--no-tokenize", help="Measure lengths with the model's tokenizer and template."),
    ] = True,
    workers: Annotated[
        int | None,
        typer.Option("--workers", min=1, help="Processes for the per-record stages (default: the CPU count, up to 4)."),
    ] = None,
) -> None:
    """Run the data stage: writes train/val/test.jsonl, rejects.jsonl, report.{json,md}, lengths.png, manifest.json."""
    from tuneloop.data.prepare import prepare as run_prepare

    extra = [f"data.pii.mode={pii}"] if pii else []
    cfg = load_config(config_path, [*(overrides or []), *extra])
    result = run_prepare(cfg, tokenize=tokenize, strict=strict, fix_leakage=fix, workers=workers)
    _print_summary(result.report, result.out_dir)


def _print_summary(report: dict, out_dir: Path) -> None:
    from rich.table import Table

    from tuneloop import console

    table = Table(title="Data prepared", title_justify="left")
    table.add_column("step")
    table.add_column("removed", justify="right")
    table.add_column("rows", justify="right")
    table.add_row("read", "", f"{report['rows_in']:,}")
    for step in report["flow"]:
        if step["removed"] or step["stage"] in ("validate", "dedup", "length"):
            table.add_row(step["what"], f"{step['removed']:,}", f"{step['remaining']:,}")
    table.add_row("cleaned (changed, kept)", "", f"{report['cleaned_rows']:,}")
    pii = report["pii"]
    found = ", ".join(f"{t} {n}" for t, n in pii["by_type"].items()) or "none"
    table.add_row(f"PII {pii['mode']} ({found})", "", f"{pii['rows']:,}")
    mixed = report["splits"]["train"].get("mixed_in", 0)
    if mixed:
        table.add_row("replay mix into train", "", f"+{mixed:,}")
    for name, s in report["splits"].items():
        table.add_row(f"{name} split", "", f"{s['rows']:,}")
    console.out.print(table)
    from tuneloop.data.report import tokens_line

    console.out.print(f"training tokens per epoch: {tokens_line(report)}", markup=False)
    for w in report["warnings"]:
        console.warn(w)
    console.out.print(f"report: {out_dir / 'report.md'}   rejects: {out_dir / 'rejects.jsonl'}", markup=False)


@app.command("inspect")
def inspect(
    config_path: ConfigOption = Path(config.CONFIG_FILENAME),
    overrides: SetOption = None,
    n: Annotated[int, typer.Option("-n", min=1, help="How many examples to show.")] = 3,
    split: Annotated[str, typer.Option(help="Prepared split to read: train, val or test.")] = "train",
    ids: Annotated[list[str] | None, typer.Option("--id", help="Show this example id (file:line); repeatable.")] = None,
    raw: Annotated[
        bool, typer.Option("--raw", help="Read the data files directly instead of the prepared split.")
    ] = False,
) -> None:
    """Show examples rendered through the chat template, with the trained tokens marked.

    Trained tokens are highlighted in a terminal and wrapped in [[...]] when piped. This is the
    exact mask the trainer uses: both call the same renderer.
    """
    from rich.text import Text

    from tuneloop import console
    from tuneloop.data.chat_templates import project_tokenizer
    from tuneloop.data.formats import Example, RowError
    from tuneloop.data.render import Renderer, mark_trained
    from tuneloop.errors import UserError

    cfg = load_config(config_path, overrides)
    examples = _examples(cfg, split, raw)
    if ids:
        wanted = set(ids)
        examples = (e for e in examples if e.id in wanted)
    chosen: list[Example] = list(itertools.islice(examples, len(ids) if ids else n))
    if not chosen:
        raise UserError("no examples to show" + (f" with id {', '.join(ids)}" if ids else ""))
    tokenizer = project_tokenizer(cfg)
    renderer = Renderer(tokenizer)
    terminal = console.out.is_terminal
    for ex in chosen:
        try:
            rendered = renderer.render(ex)
        except RowError as e:
            console.warn(f"{ex.id}: {e}")
            continue
        header = f"── {ex.id}: {len(rendered.input_ids)} tokens, {rendered.trained_tokens} trained"
        console.out.print(header, markup=False, style="bold" if terminal else None)
        if terminal:
            text = Text()
            for token_id, weight in zip(rendered.input_ids, rendered.weights, strict=True):
                piece = tokenizer.decode([token_id])
                text.append(piece, style="black on green" if weight > 0 else "dim")
            console.out.print(text)
        else:
            print(mark_trained(rendered, tokenizer))
        for w in rendered.warnings:
            console.warn(f"{ex.id}: {w}")
    if terminal:
        console.out.print("[black on green]trained[/] / [dim]context (not trained)[/]")


def _examples(cfg: config.ProjectConfig, split: str, raw: bool):
    from tuneloop.data.formats import (
        DETECT_SAMPLE,
        Example,
        RowError,
        detect_format,
        list_files,
        read_rows,
        to_example,
    )
    from tuneloop.errors import UserError

    prepared = cfg.path(cfg.data.prepared_dir) / f"{split}.jsonl"
    if not raw:
        if not prepared.is_file():
            raise UserError(f"{prepared} does not exist; run `tuneloop data prepare` first, or pass --raw")
        with prepared.open(encoding="utf-8") as f:
            for line in f:
                yield Example.from_json(json.loads(line))
        return
    for file in list_files([cfg.path(p) for p in cfg.data.train]):
        rows = read_rows(file, str(file))
        head = list(itertools.islice(rows, DETECT_SAMPLE))
        fmt = cfg.data.format if cfg.data.format != "auto" else detect_format(head, str(file))
        for row in itertools.chain(head, rows):
            if row.error is None:
                try:
                    yield to_example(row.value, fmt, f"{file.name}:{row.line}")
                except RowError:
                    continue  # `inspect --raw` only shows; `data prepare` reports every reject
