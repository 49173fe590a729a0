"""`tuneloop eval`: base vs tuned on the test split, forgetting and red-team probes, in one report."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from tuneloop import config
from tuneloop.cli.common import ConfigOption, SetOption, load_config


def evaluate(
    run_args: Annotated[
        list[str] | None,
        typer.Option(
            "--run",
            "--runs",
            help="Run folder(s) to compare with the base model; 'latest' is the newest. Repeat or list several.",
        ),
    ] = None,
    config_path: ConfigOption = Path(config.CONFIG_FILENAME),
    overrides: SetOption = None,
    extra_runs: Annotated[list[str] | None, typer.Argument(help="More run folders (after --runs a b c).")] = None,
    private: Annotated[
        bool, typer.Option("--private", help="Evaluate on eval.private_test, which is allowed once only.")
    ] = False,
    limit: Annotated[int | None, typer.Option(min=1, help="Evaluate only the first N test examples.")] = None,
    out: Annotated[Path | None, typer.Option("--out", help="Report folder (default: <run>/eval).")] = None,
) -> None:
    """Compare the base model with fine-tuned runs on the test split; write report.html, report.md, metrics.json."""
    from tuneloop import runs
    from tuneloop.errors import UserError
    from tuneloop.evaluate.runner import evaluate as run_eval

    cfg = load_config(config_path, overrides)
    names = [*(run_args or ["latest"]), *(extra_runs or [])]
    run_dirs = []
    for name in names:
        if name == "latest":
            path = runs.latest_run(cfg)
        else:
            # A run id, or a folder relative to here or to the project (runs/<id>, as the config's own paths are).
            tried = (Path(name), cfg.path(cfg.output.dir) / name, cfg.path(name))
            path = next((p for p in tried if p.is_dir()), None)
            if path is None:
                raise UserError(f"no run folder {name} (looked in ., {cfg.path(cfg.output.dir)} and {cfg.root})")
        run_dirs.append(path.resolve())
    if cfg.task.type == "classification":
        from tuneloop.evaluate.classify import evaluate as evaluate_classifier

        if limit:
            cfg = config.derive(cfg, [f"eval.max_examples={limit}"])
        result = evaluate_classifier(cfg, run_dirs, private=private, out_dir=out)
    elif cfg.task.type == "preference":
        from tuneloop.evaluate.preference import evaluate as evaluate_preference

        result = evaluate_preference(cfg, run_dirs, private=private, out_dir=out, limit=limit)
    else:
        result = run_eval(cfg, run_dirs, private=private, out_dir=out, limit=limit)
    print_report(result.report, result.out_dir)


def print_report(r: dict, out_dir: Path) -> None:
    """The compact verdict table: each metric per run vs base, reward and win rates, forgetting, output signals,
    report path."""
    from tuneloop import console
    from tuneloop.evaluate.winrate import console_lines as winrate_lines

    lines = []
    for name, per in r["comparisons"].items():
        lines.append(f"{name} vs base ({r['test']['examples']} test examples, {r['confidence']:.0%} intervals)")
        for metric, c in per.items():
            lines.append(
                f"  {metric:24} {c['baseline']:10.4g} → {c['candidate']:<10.4g} {c['delta']:+9.4g} "
                f"[{c['ci_low']:+.3g}, {c['ci_high']:+.3g}]  {c['verdict']}"
            )
        lines += winrate_lines(r, name)
        for measure, f in ((r.get("forgetting") or {}).get(name) or {}).items():
            verdict = "REGRESSED" if f["regressed"] else "ok"
            lines.append(
                f"  {measure:24} {f['baseline']:10.4g} → {f['candidate']:<10.4g} {f['change']:+9.3g}  {verdict}"
            )
    for name, rows in (r.get("per_class") or {}).items():
        worst = min(rows, key=lambda row: row["f1"]["value"])
        lines.append(
            f"per class {name}: lowest F1 {worst['label']} {worst['f1']['value']:.3f} ({worst['support']} examples)"
        )
    for name, counts in (r.get("output_signals") or {}).items():
        raised = ", ".join(f"{k} {v}" for k, v in counts.items() if v)
        lines.append(f"signals   {name}: {raised or 'none'}")
    lines.append(f"report    {out_dir / 'report.html'}")
    console.out.print("\n".join(lines), markup=False)
