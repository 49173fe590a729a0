"""`tuneloop runs ...`: list, show and compare the runs in the project's registry; mirror them to MLflow."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from tuneloop import config
from tuneloop.cli.common import ConfigOption, SetOption, load_config

app = typer.Typer(help="List, show and compare runs; sync the run registry (and MLflow).", no_args_is_help=True)

JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON instead of text.")]


@app.command("list")
def list_runs(
    config_path: ConfigOption = Path(config.CONFIG_FILENAME),
    overrides: SetOption = None,
    as_json: JsonOption = False,
) -> None:
    """One line per run: kind, status, method, steps, best validation metric, task metric change, data hash."""
    from rich.table import Table
    from rich.text import Text

    from tuneloop import console, registry

    cfg = load_config(config_path, overrides)
    runs = registry.list_runs(cfg)
    if as_json:
        _print_json(runs)
        return
    if not runs:
        console.out.print(f"no runs in {cfg.path(cfg.output.dir)} yet; start one with `tuneloop train`", markup=False)
        return
    table = Table(title_justify="left")
    for name in ("id", "kind", "status", "created", "method", "steps", "best validation", "task metric", "data"):
        table.add_column(name, justify="right" if name == "steps" else "left")
    for run in runs:
        cells = (
            run["id"],
            run["kind"] + (f" ({run['group']})" if run["group"] else ""),
            "missing" if run["missing"] else run["status"],
            (run["created"] or "")[:16].replace("T", " "),
            run["method"] or "-",
            _steps(run),
            _best(run),
            _main_metric(run, cfg.task.metrics),
            (run["data_sha256"] or "-")[:8],
        )
        table.add_row(*(Text(c) for c in cells))  # Text: run ids and values are never read as markup
    console.out.print(table)


@app.command("show")
def show(
    ref: Annotated[str, typer.Argument(help="Run id, unique id prefix, 'latest' or run folder.")],
    config_path: ConfigOption = Path(config.CONFIG_FILENAME),
    overrides: SetOption = None,
    as_json: JsonOption = False,
) -> None:
    """Everything the registry knows about one run: config and data hashes, environment, training, evaluation."""
    from tuneloop import console, registry

    cfg = load_config(config_path, overrides)
    run = registry.get_run(cfg, ref)
    if as_json:
        _print_json(run)
        return
    console.out.print("\n".join(_describe(run)), markup=False)


@app.command("compare")
def compare(
    a: Annotated[str, typer.Argument(help="Run A (the reference): id, prefix, 'latest' or folder.")],
    b: Annotated[str, typer.Argument(help="Run B (the candidate): id, prefix, 'latest' or folder.")],
    config_path: ConfigOption = Path(config.CONFIG_FILENAME),
    overrides: SetOption = None,
    as_json: JsonOption = False,
) -> None:
    """What changed from run A to run B: config keys, data rows per split, and metrics (B vs A by paired bootstrap)."""
    from tuneloop import console
    from tuneloop.evaluate.compare_runs import compare

    cfg = load_config(config_path, overrides)
    result = compare(cfg, a, b)
    if as_json:
        _print_json(result)
        return
    lines = [f"A {result['a']['id']}  →  B {result['b']['id']}", ""]
    lines += [*_config_lines(result["config"]), ""]
    lines += [*_data_lines(result["data"]), ""]
    lines += _metric_lines(result["metrics"], result["a"]["id"], result["b"]["id"])
    console.out.print("\n".join(lines), markup=False)


@app.command("sync")
def sync(
    config_path: ConfigOption = Path(config.CONFIG_FILENAME),
    overrides: SetOption = None,
    mlflow: Annotated[
        str | None,
        typer.Option("--mlflow", help="Also mirror every run to this MLflow tracking URI (http://..., file:...)."),
    ] = None,
) -> None:
    """Re-index the run folders under output.dir (creating the registry if needed); optionally mirror to MLflow."""
    from tuneloop import console, registry

    cfg = load_config(config_path, overrides)
    changed = registry.sync(cfg)
    runs = registry.list_runs(cfg, refresh=False)
    missing = sum(r["missing"] for r in runs)
    console.out.print(
        f"registry {registry.registry_path(cfg)}: {len(runs)} runs ({missing} missing), {changed} (re)indexed",
        markup=False,
    )
    if mlflow:
        mirrored = registry.mirror_mlflow(cfg, mlflow)
        console.out.print(f"mirrored {len(mirrored)} runs to {mlflow} (experiment {cfg.root.name})", markup=False)


# --------------------------------------------------------------------------- formatting


def _print_json(value: Any) -> None:
    from tuneloop import console

    console.out.print(json.dumps(value, indent=2, default=str), markup=False, emoji=False)


def _num(value: Any) -> str:
    return "-" if value is None else f"{value:.4g}" if isinstance(value, float) else str(value)


def _steps(run: dict[str, Any]) -> str:
    steps, total = run["training"]["steps"], run["training"]["max_steps"]
    return "-" if steps is None else f"{steps}/{total}" if total and total != steps else str(steps)


def _best(run: dict[str, Any]) -> str:
    best = run["training"]["best"]
    if best["value"] is None:
        return "-"
    metric = (best["metric"] or "").removeprefix("eval_")
    return f"{metric} {best['value']:.4g}" + (f" @{best['step']}" if best["step"] is not None else "")


def _main_metric(run: dict[str, Any], task_metrics: list[str]) -> str:
    """The first task metric's change against the base, with its verdict."""
    metrics = (run["evaluation"] or {}).get("metrics") or {}
    name = next((m for m in task_metrics if m in metrics), next(iter(metrics), None))
    if name is None:
        return "-"
    m = metrics[name]
    delta = "-" if m["delta"] is None else f"{m['delta']:+.4g}"
    return f"{name} {delta} {m['verdict'] or ''}".strip()


def _describe(run: dict[str, Any]) -> list[str]:
    lines = [
        f"run          {run['id']}" + ("  (folder missing)" if run["missing"] else ""),
        f"path         {run['path']}",
        f"status       {run['status']}",
        f"kind         {run['kind']}" + (f"  group {run['group']}" if run["group"] else ""),
        f"created      {run['created']}",
        f"method       {run['method'] or '-'}",
        f"config       sha256 {run['config_sha256'][:16]}",
    ]
    data = run["data"] or {}
    splits = ", ".join(f"{name} {s['rows']} rows ({(s['sha256'] or '-')[:8]})" for name, s in data.items())
    lines.append(f"data         sha256 {(run['data_sha256'] or '-')[:16]}: {splits or 'no data manifest'}")
    lines.append(f"row hashes   {'yes' if run['row_hashes'] else 'no'}")
    env = run["environment"] or {}
    if env:
        parts = [f"{name} {env[name]}" for name in ("python", "torch", "tuneloop") if env.get(name)]
        parts.append(env.get("gpu") or env.get("processor") or "cpu")
        if env.get("git_revision"):
            parts.append(f"git {env['git_revision'][:10]}" + (" (dirty)" if env.get("git_dirty") else ""))
        lines.append("environment  " + ", ".join(parts))
    t = run["training"]
    lines.append(
        f"training     {_steps(run)} steps; best {_best(run)}; final eval loss {_num(t['final_eval_loss'])}; "
        f"{_num(t['tokens_per_second'])} trained tokens/s; {_num(t['seconds'])} s"
    )
    ev = run["evaluation"]
    if ev is None:
        lines.append("evaluation   none (run `tuneloop eval --run " + run["id"] + "`)")
    else:
        lines.append(
            f"evaluation   test sha256 {(ev['test_sha256'] or '-')[:16]}, {ev['examples']} examples, {ev['created']}"
        )
        for name, m in ev["metrics"].items():
            lines.append("  " + _metric_row(name, m["baseline"], m["value"], m))
    if run["loop"]:
        lines.append(f"loop.json    {json.dumps(run['loop'])}")
    if run["extra"]:
        lines.append(f"recorded     {json.dumps(run['extra'], default=str)}")
    lines.append(f"indexed      {run['indexed']}")
    return lines


def _metric_row(name: str, before: Any, after: Any, c: dict[str, Any]) -> str:
    delta = "-" if c.get("delta") is None else f"{c['delta']:+.4g}"
    interval = "" if c.get("ci_low") is None else f"[{c['ci_low']:+.3g}, {c['ci_high']:+.3g}]"
    return f"{name:24} {_num(before):>10} → {_num(after):<10} {delta:>9} {interval:22} {c.get('verdict') or ''}"


def _config_lines(diffs: list[dict[str, Any]]) -> list[str]:
    if not diffs:
        return ["config: identical"]
    lines = [f"config: {len(diffs)} {'keys differ' if len(diffs) > 1 else 'key differs'} (A → B)"]
    width = max(len(d["key"]) for d in diffs)
    lines += [f"  {d['key']:{width}}  {_value(d['a'])} → {_value(d['b'])}" for d in diffs]
    return lines


def _value(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)


def _data_lines(data: dict[str, Any]) -> list[str]:
    same = {True: "same data", False: "different data", None: "data not comparable"}[data["same"]]
    if data["by"] == "rows":
        lines = [f"data: {same} (row hashes)"]
        for name, s in data["splits"].items():
            lines.append(
                f"  {name:6} {s['rows_a']} → {s['rows_b']} rows: {s['kept']} kept, "
                f"{s['added']} added, {s['removed']} removed"
            )
        return lines
    lines = [f"data: {same} (manifest hashes; rows cannot be compared without data-rows.txt.gz in both runs)"]
    for name, s in data["splits"].items():
        state = {True: "same", False: "different", None: "unknown"}[s["same"]]
        lines.append(f"  {name:6} {state}: {_num(s['rows_a'])} → {_num(s['rows_b'])} rows")
    return lines


def _metric_lines(metrics: dict[str, Any], a: str, b: str) -> list[str]:
    lines = []
    for label, run_id in (("a", a), ("b", b)):
        own = metrics[label]
        if own:
            lines.append(f"metrics: {run_id} vs base (its own evaluation)")
            lines += ["  " + _metric_row(n, m["baseline"], m["value"], m) for n, m in own.items()]
    paired = metrics["paired"]
    if paired:
        lines.append(
            f"metrics: B vs A directly ({paired['examples']} shared test examples, "
            f"{paired['confidence']:.0%} paired-bootstrap intervals)"
        )
        lines += ["  " + _metric_row(n, c["baseline"], c["candidate"], c) for n, c in paired["metrics"].items()]
    if not lines:
        lines.append("metrics: neither run has been evaluated")
    lines += [f"note: {n}" for n in metrics["notes"]]
    return lines
