"""The `tuneloop` command. Each subcommand lives in its own module; this one only wires them up."""

from __future__ import annotations

import logging
import os
import sys
import warnings

import typer

from tuneloop import __version__
from tuneloop.cli import candidates as candidates_cmd
from tuneloop.cli import config as config_cmd
from tuneloop.cli import curve as curve_cmd
from tuneloop.cli import data as data_cmd
from tuneloop.cli import evaluate as eval_cmd
from tuneloop.cli import export as export_cmd
from tuneloop.cli import generate as generate_cmd
from tuneloop.cli import init as init_cmd
from tuneloop.cli import models as models_cmd
from tuneloop.cli import monitor as monitor_cmd
from tuneloop.cli import plan as plan_cmd
from tuneloop.cli import quickstart as quickstart_cmd
from tuneloop.cli import review as review_cmd
from tuneloop.cli import run as run_cmd
from tuneloop.cli import runs as runs_cmd
from tuneloop.cli import serve as serve_cmd
from tuneloop.cli import strategies as strategies_cmd
from tuneloop.cli import sweep as sweep_cmd
from tuneloop.cli import train as train_cmd
from tuneloop.errors import UserError

app = typer.Typer(
    name="tuneloop",
    help="Fine-tune a language model on your domain data, and prove it got better.\n\n"
    "The loop: define (init) → data → train → evaluate → deploy → monitor → iterate.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)
_state = {"debug": os.environ.get("TUNELOOP_DEBUG", "") not in ("", "0")}


def _version(value: bool) -> None:
    if value:
        print(f"tuneloop {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    debug: bool = typer.Option(False, "--debug", help="Show the full traceback when a command fails."),
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version and exit."
    ),
) -> None:
    if debug:
        _state["debug"] = True


app.command("quickstart")(quickstart_cmd.quickstart)
app.command("init")(init_cmd.init)
app.add_typer(config_cmd.app, name="config")
app.add_typer(data_cmd.app, name="data")
data_cmd.app.command("candidates")(candidates_cmd.candidates)
app.command("models")(models_cmd.models)
app.command("plan")(plan_cmd.plan)
app.command("train")(train_cmd.train)
app.command("generate")(generate_cmd.generate)
app.command("eval")(eval_cmd.evaluate)
app.command("export")(export_cmd.export)
app.add_typer(runs_cmd.app, name="runs")
app.command("serve")(serve_cmd.serve)
app.add_typer(monitor_cmd.app, name="monitor")
app.add_typer(review_cmd.app, name="review")
app.command("run")(run_cmd.run)
app.command("curve")(curve_cmd.curve)
app.command("sweep")(sweep_cmd.sweep)
app.command("compare-strategies")(strategies_cmd.compare_strategies)


def main() -> None:
    """Console-script entry point: user errors become one clear message and exit code 1."""
    # Libraries' deprecation notices are for their callers (us), not for our users.
    warnings.filterwarnings("ignore", category=FutureWarning)
    # On CPUs with AVX512-BF16, bitsandbytes warns that an optional kernel from the hub is missing;
    # its built-in fallback is what runs, and offline the hub kernel could not be fetched anyway.
    logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)
    try:
        app()
    except UserError as e:
        if _state["debug"]:
            raise
        from tuneloop import console

        console.err.print(f"error: {e}", markup=False)
        sys.exit(1)
    except KeyboardInterrupt:
        sys.exit(130)
