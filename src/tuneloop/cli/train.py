"""`tuneloop train`: supervised fine-tuning of the configured model on the prepared data."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from tuneloop import config
from tuneloop.cli.common import ConfigOption, SetOption, load_config


def train(
    config_path: ConfigOption = Path(config.CONFIG_FILENAME),
    overrides: SetOption = None,
    resume: Annotated[
        bool, typer.Option("--resume", help="Continue the newest run (or --run) from its last complete checkpoint.")
    ] = False,
    run: Annotated[
        Path | None, typer.Option("--run", help="The run folder to resume (default: the newest under output.dir).")
    ] = None,
) -> None:
    """Fine-tune the model on data/prepared; writes runs/<id>/ with checkpoints, metrics, loss.png and final/."""
    from tuneloop import console, runs
    from tuneloop.evaluate.runner import higher_is_better, training_evaluator
    from tuneloop.train.sft import train as run_training

    cfg = load_config(config_path, overrides)
    target = None
    if resume or run is not None:
        target = run if run is not None else runs.latest_run(cfg)
    result = run_training(cfg, resume=target, evaluator=training_evaluator, higher_is_better=higher_is_better)
    s = result.summary
    session = s["this_session"]
    best = s["best"]
    lines = [
        f"run       {result.run_dir}",
        f"status    {result.status} at step {result.steps}/{s['max_steps']}",
        f"method    {s['method']}: {s['parameters']['trainable']:,} of {s['parameters']['total']:,} parameters trained",
        f"speed     {session['trained_tokens_per_second']:,.0f} trained tokens/s "
        f"({session['trained_tokens']:,} in {session['seconds']:.0f}s), precision {s['precision']['chosen']}",
        f"batches   {s['batching']['layout']}: {session['padding_fraction']:.1%} of computed tokens were padding",
    ]
    if best["value"] is not None:
        lines.append(f"best      {best['metric']} {best['value']:.4f} at step {best['step']}")
    if result.final_dir:
        lines.append(f"final     {result.final_dir}")
    console.out.print("\n".join(lines), markup=False)
    if result.status == "stopped":
        # Stopped is not success: a scheduler must see it, with the shell's code for the signal.
        raise typer.Exit(EXIT_CODES.get(s.get("signal") or "", 1))


# 128 + the signal number, as a shell reports a process ended by it (and as `tuneloop run` exits).
EXIT_CODES = {"SIGINT": 130, "SIGTERM": 143}
