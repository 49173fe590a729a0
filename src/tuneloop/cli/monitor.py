"""`tuneloop monitor`: what logged traffic says, and (export) the corrected part as the next training data."""

from __future__ import annotations

import typer

from tuneloop.cli import monitor_export

app = typer.Typer(help="Logged traffic (`tuneloop serve --log`): export what people corrected as training data.")
app.command("export")(monitor_export.export)
