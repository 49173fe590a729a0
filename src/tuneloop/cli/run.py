"""`tuneloop run [CONFIG]`: prepare → train → eval (→ export) in one command, redoing only what changed."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from tuneloop import config
from tuneloop.cli.common import SetOption, load_config

if TYPE_CHECKING:
    from tuneloop.loop import LoopResult

ConfigArgument = Annotated[Path, typer.Argument(help="The project config file.", show_default=True, metavar="CONFIG")]


def run(
    config_path: ConfigArgument = Path(config.CONFIG_FILENAME),
    config_option: Annotated[
        Path | None, typer.Option("--config", "-c", help="The project config file (same as CONFIG).")
    ] = None,
    overrides: SetOption = None,
    no_eval: Annotated[bool, typer.Option("--no-eval", help="Stop after training.")] = False,
    mlflow: Annotated[
        str | None, typer.Option("--mlflow", metavar="URI", help="Also mirror the run to this MLflow tracking server.")
    ] = None,
) -> None:
    """Run the loop: prepare the data, train, evaluate base vs tuned, write the report, and export when
    export.enabled.

    Each stage is reused when its inputs (data files, config sections, upstream outputs) are unchanged, and an
    interrupted run continues where it stopped, training from its last checkpoint.
    """
    from tuneloop import console
    from tuneloop.cli.evaluate import print_report
    from tuneloop.loop import run as run_loop

    cfg = load_config(config_option or config_path, overrides)
    result = run_loop(cfg, evaluate=not no_eval)
    print_stages(result)
    if result.status == "interrupted":
        console.out.print("interrupted: run the same command again to resume training from its checkpoint")
        raise typer.Exit(stopped_exit_code(result.run_dir))
    if result.report is not None and result.report_dir is not None:
        print_report(result.report, result.report_dir)
    if mlflow and result.run_dir is not None:
        from tuneloop.registry import mirror_mlflow

        mirrored = mirror_mlflow(cfg, mlflow, [result.run_dir.name])
        console.out.print(f"mlflow    {mlflow}: run {mirrored[result.run_dir.name]}", markup=False)


def stopped_exit_code(run_dir: Path | None) -> int:
    """The shell's code for the signal that stopped training (143 SIGTERM, 130 Ctrl-C), from the run's summary."""
    import json

    from tuneloop.cli.train import EXIT_CODES

    summary = run_dir / "summary.json" if run_dir is not None else None
    signal = json.loads(summary.read_text()).get("signal") if summary is not None and summary.is_file() else None
    return EXIT_CODES.get(signal or "", 130)


def print_stages(result: LoopResult) -> None:
    """One line per stage: ran, reused, resumed or skipped, how long, and where its output is."""
    from rich.table import Table

    from tuneloop import console
    from tuneloop.loop import format_seconds

    table = Table(title=f"run {result.run_dir.name if result.run_dir else ''}", title_justify="left")
    for column in ("stage", "action", "time", "output", "detail"):
        table.add_column(column, overflow="fold")
    for s in result.stages:
        took = "" if s.action in ("reused", "skipped") else format_seconds(s.seconds)
        table.add_row(s.name, s.action, took, s.output, s.detail)
    console.out.print(table)
