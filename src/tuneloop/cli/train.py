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
    start: Annotated[
        Path | None,
        typer.Option(
            "--from",
            help="Preference tuning: start from this run's final model (e.g. an SFT run), which is also the "
            "reference; sets method.preference.start.",
        ),
    ] = None,
) -> None:
    """Fine-tune the model on data/prepared; writes runs/<id>/ with checkpoints, metrics, loss.png and final/."""
    from tuneloop import console, runs
    from tuneloop.evaluate.runner import higher_is_better, training_evaluator
    from tuneloop.train.sft import train as run_training

    overrides = list(overrides or [])
    if start is not None:
        overrides.append(f"method.preference.start={start.resolve()}")
    cfg = load_config(config_path, overrides)
    if start is not None and cfg.task.type != "preference":
        from tuneloop.errors import UserError

        raise UserError("--from starts preference tuning from a run; this project is not task.type: preference")
    if cfg.task.type == "preference":
        _train_preference(cfg, resume, run)
        return
    target = None
    if resume or run is not None:
        target = run if run is not None else runs.latest_run(cfg)
    if cfg.task.type == "classification":
        _train_classifier(cfg, target)
        return
    if cfg.method.name == "grpo":
        _train_grpo(cfg, target)
        return
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


def _train_classifier(cfg: config.ProjectConfig, resume: Path | None) -> None:
    """task.type classification: the classifier recipe (train/classify.py), and its own summary lines."""
    from tuneloop import console
    from tuneloop.train.classify import train as train_classifier

    result = train_classifier(cfg, resume=resume)
    s = result.summary
    unit = "L-BFGS iteration" if "logistic" in s["strategy"] else "step"
    lines = [
        f"run       {result.run_dir}",
        f"status    {result.status} at {unit} {result.steps}/{s['max_steps']} in {s['this_session']['seconds']:.0f}s",
        f"method    {s['method']} ({s['strategy']}): {s['parameters']['trainable']:,} of "
        f"{s['parameters']['total']:,} parameters trained",
        f"labels    {len(s['labels'])}: {', '.join(s['labels'][:10])}{' ...' if len(s['labels']) > 10 else ''}",
    ]
    if s["class_weights"]:
        lines.append("weights   " + ", ".join(f"{k} {v:.3g}" for k, v in s["class_weights"].items()))
    if s["best"]["value"] is not None:
        lines.append(f"best      {s['best']['metric']} {s['best']['value']:.4f} at step {s['best']['step']}")
    if result.final_dir:
        lines.append(f"final     {result.final_dir}")
    console.out.print("\n".join(lines), markup=False)
    if result.status == "stopped":
        raise typer.Exit(EXIT_CODES.get(s.get("signal") or "", 1))


def _train_grpo(cfg: config.ProjectConfig, resume: Path | None) -> None:
    """method.name grpo: the GRPO recipe (train/grpo.py), and its own summary lines."""
    from tuneloop import console
    from tuneloop.train.grpo import train as train_grpo

    result = train_grpo(cfg, resume=resume)
    s = result.summary
    last = s["last"]
    lines = [
        f"run       {result.run_dir}",
        f"status    {result.status} at step {result.steps}/{s['max_steps']} in {s['this_session']['seconds']:.0f}s",
        f"method    grpo ({s['adapter']}): {s['parameters']['trainable']:,} of {s['parameters']['total']:,} "
        f"parameters trained; rewards {', '.join(s['rewards'])}",
    ]
    if "reward" in last:
        shown = [f"reward {last['reward']:.4f}"]
        shown += [f"KL {last['kl']:.4f}"] if "kl" in last else []
        length = last.get("completions/mean_length")
        shown += [f"answer length {length:.1f} tokens"] if length is not None else []
        lines.append("last      " + ", ".join(shown))
    if result.final_dir:
        lines.append(f"final     {result.final_dir}")
    console.out.print("\n".join(lines), markup=False)
    if result.status == "stopped":
        raise typer.Exit(EXIT_CODES.get(s.get("signal") or "", 1))


def _train_preference(cfg: config.ProjectConfig, resume: bool, run: Path | None) -> None:
    """task.type preference: the preference recipe (train/preference.py), and its own summary lines."""
    from tuneloop import console, runs
    from tuneloop.train.preference import train as train_preference

    target = None
    if resume or run is not None:
        target = run if run is not None else runs.latest_run(cfg)
    result = train_preference(cfg, resume=target)
    s = result.summary
    lines = [
        f"run       {result.run_dir}",
        f"status    {result.status} at step {result.steps}/{s['max_steps']} in {s['this_session']['seconds']:.0f}s",
        f"method    {s['method']} ({s['adapter']}): {s['parameters']['trainable']:,} of "
        f"{s['parameters']['total']:,} parameters trained, precision {s['precision']['chosen']}",
    ]
    what = "answers" if s["method"] == "kto" else "pairs"
    ex = s["examples"]
    lines.append(f"{what:<9} {ex['train_' + what]:,} train, {ex['val_' + what]:,} validation")
    val = s.get("validation") or {}
    if s["method"] == "kto" and {"reward_desirable", "reward_undesirable", "kl"} <= set(val):
        lines.append(
            f"val       implicit reward {val['reward_desirable']:+.4f} desirable, {val['reward_undesirable']:+.4f} "
            f"undesirable, KL {val['kl']:.4f} (step {val['step']})"
        )
    accuracy = val.get("pair_accuracy", val.get("reward_accuracy"))
    if accuracy is not None:
        what = "pair accuracy" if "pair_accuracy" in val else "implicit-reward accuracy"
        margin = f", reward margin {val['reward_margin']:.4f}" if "reward_margin" in val else ""
        lines.append(f"val       {what} {accuracy:.1%}{margin} (step {val['step']})")
    if result.final_dir:
        lines.append(f"final     {result.final_dir}")
    console.out.print("\n".join(lines), markup=False)
    if result.status == "stopped":
        raise typer.Exit(EXIT_CODES.get(s.get("signal") or "", 1))
