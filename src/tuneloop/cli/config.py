"""`tuneloop config ...`: look at the resolved project config."""

from __future__ import annotations

from pathlib import Path

import typer

from tuneloop import config
from tuneloop.cli.common import ConfigOption, SetOption, load_config

app = typer.Typer(help="Inspect the project config.", no_args_is_help=True)


@app.command("show")
def show(
    config_path: ConfigOption = Path(config.CONFIG_FILENAME),
    overrides: SetOption = None,
) -> None:
    """Print the resolved config: your file, plus --set overrides, plus every default filled in."""
    cfg = load_config(config_path, overrides)
    print(cfg.to_yaml(), end="")
