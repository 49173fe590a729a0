"""`tuneloop models`: what can be fine-tuned here, how big it is, and under which licence."""

from __future__ import annotations

import json
from typing import Annotated

import typer


def _human(n: int | None, unit: str = "") -> str:
    if n is None:
        return "?"
    for suffix, scale in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= scale:
            return f"{n / scale:.1f}{suffix}{unit}"
    return f"{n}{unit}"


def models(
    names: Annotated[
        list[str] | None,
        typer.Argument(
            help="Models to describe: embedded names, folders, .gguf files or hub ids. "
            "Default: the embedded models and the hub cache."
        ),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """List the models available here with size, architecture and licence; warn on restrictive licences."""
    from rich.table import Table

    from tuneloop import console
    from tuneloop.models import EMBEDDED, describe, hub_cached_models

    targets = names or [*EMBEDDED, *hub_cached_models()]
    infos = [describe(n) for n in targets]
    if as_json:
        rows = [{**vars(i), "path": str(i.path) if i.path else None} for i in infos]
        print(json.dumps(rows, indent=2))
        return
    table = Table(title="Models", title_justify="left")
    for col in ("name", "kind", "status", "parameters", "on disk", "architecture", "licence"):
        table.add_column(col)
    for i in infos:
        table.add_row(
            i.name,
            i.kind,
            i.status,
            _human(i.parameters),
            _human(i.size_bytes, "B"),
            i.architecture,
            i.licence,
        )
    console.out.print(table)
    for i in infos:
        if i.path:
            console.out.print(f"{i.name}: {i.path}", markup=False)
        for w in i.warnings:
            console.warn(f"{i.name}: {w}")
