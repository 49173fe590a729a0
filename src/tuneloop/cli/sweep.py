"""`tuneloop sweep SWEEP.yaml`: search hyperparameters on the validation metric."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from tuneloop import config
from tuneloop.cli.common import ConfigOption, SetOption, load_config, refuse_classification, refuse_preference


def sweep(
    spec_path: Annotated[Path, typer.Argument(help="The sweep file (space, strategy, trials).", metavar="SWEEP")],
    config_path: ConfigOption = Path(config.CONFIG_FILENAME),
    overrides: SetOption = None,
    out: Annotated[Path | None, typer.Option("--out", help="Output folder (default: runs/sweeps/<id>).")] = None,
) -> None:
    """Train one run per trial and rank them on the validation metric; writes sweep.md, sweep.csv, sweep.json.

    \b
    SWEEP is a YAML file:
      strategy: auto      # optuna when installed, else grid | grid | random | optuna
      trials: 8           # random and optuna
      metric: loss        # default: train.metric
      space:
        train.learning_rate: {low: 5.0e-5, high: 5.0e-4, log: true, grid: 3}
        method.lora.r: [8, 16, 32]
        train.epochs: [1, 2]
    """
    from rich.table import Table

    from tuneloop import console
    from tuneloop.sweep import cell, load_spec
    from tuneloop.sweep import sweep as run_sweep

    cfg = load_config(config_path, overrides)

    refuse_classification(cfg, "sweep")
    refuse_preference(cfg, "sweep")
    result = run_sweep(cfg, load_spec(spec_path), out)
    keys = list(result.trials[0]["params"]) if result.trials else []
    table = Table(title=f"{result.strategy} sweep, ranked on validation {result.metric}", title_justify="left")
    for column in ("rank", *keys, result.metric, "status", "run"):
        table.add_column(column, overflow="fold")
    for t in result.trials:
        run = Path(t["run"]).name if t["run"] else t.get("error", "")
        table.add_row(cell(t["rank"]), *(cell(t["params"][k]) for k in keys), cell(t["value"]), t["status"], run)
    console.out.print(table)
    console.out.print(f"table     {result.out_dir / 'sweep.md'}", markup=False)
    best = next((t for t in result.trials if t["rank"] == 1), None)
    if best:
        console.out.print(f"best      {best['run']}  (evaluate it: tuneloop eval --run {best['run']})", markup=False)
