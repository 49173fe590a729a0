"""`tuneloop monitor`: drift, output signals, feedback and latency of logged traffic (exit 3 on an alert);
`tuneloop monitor export`: the corrected part as the next training data."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from tuneloop import config
from tuneloop.cli import monitor_export
from tuneloop.cli.common import ConfigOption, SetOption, load_config
from tuneloop.cli.monitor_checks import output_checks

app = typer.Typer(
    help="Watch logged traffic (`tuneloop serve --log`): drift against the training prompts, output signals, "
    "feedback and latency. Exits 3 when an alert fires, 0 otherwise. `export` writes what people corrected as "
    "training data.",
)
app.command("export")(monitor_export.export)

SinceOption = Annotated[
    str, typer.Option("--since", help="How far back to look: 7d, 24h, 30m, 2w, or an ISO date such as 2026-11-01.")
]


@app.callback(invoke_without_command=True)
def monitor(
    ctx: typer.Context,
    since: SinceOption = "7d",
    config_path: ConfigOption = Path(config.CONFIG_FILENAME),
    overrides: SetOption = None,
) -> None:
    """Compare recent traffic with the training data; write monitor/report-<time>.html and .json."""
    if ctx.invoked_subcommand is not None:
        return
    from tuneloop.monitor.analyze import EXIT_ALERT, run

    cfg = load_config(config_path, overrides)
    result = run(cfg, since, output_checks(cfg))
    print_summary(result.report, result.html_path)
    if result.alerts:
        raise typer.Exit(EXIT_ALERT)


def print_summary(r: dict[str, Any], html_path: Path | None) -> None:
    """A few lines: traffic, drift verdicts, output rates, feedback, latency, alerts, report path."""
    from tuneloop import console

    def pct(value: float | None) -> str:
        return "–" if value is None else f"{value:.1%}"

    lines = [f"traffic   {r['requests']} requests, {r['window']['first']} … {r['window']['last']}"]
    d = r["drift"]
    if d["status"] == "tested":
        e, n, t = d["embedding"], d["length"], d["new_terms"]
        lines.append(
            f"drift     embedding MMD p={e['p_value']:.3g}, length KS p={n['p_value']:.3g} (each at {d['level']:g}): "
            + ("DRIFTED" if d["drifted"] else "no drift")
        )
        lines.append(
            f"length    median {n['traffic_median']:g} vs {n['train_median']:g} {n['unit']} in training; "
            f"p95 {n['traffic_p95']:g} vs {n['train_p95']:g}"
        )
        top = ", ".join(x["term"] for x in t["top"][:8])
        lines.append(f"new terms {pct(t['rate'])} of words" + (f" (top: {top})" if top else ""))
    else:
        lines.append(
            f"drift     not tested: {d['status']} ({d['prompts']} prompts < monitor.min_requests {d['min_requests']})"
        )
    rates = r["outputs"]["rates"]
    lines.append("outputs   " + ", ".join(f"{k} {pct(v)}" for k, v in rates.items()))
    f, lat = r["feedback"], r["latency"]
    lines.append(
        f"feedback  {f['rated']} rated: {pct(f['up_rate'])} up, {pct(f['down_rate'])} down; {f['corrected']} corrected"
    )
    if lat["n"]:
        lines.append(f"latency   p50 {lat['p50']:.3g}s, p95 {lat['p95']:.3g}s, p99 {lat['p99']:.3g}s")
    for a in r["alerts"]:
        lines.append(f"ALERT     {a['name']}: {a['message']}")
    if not r["alerts"]:
        lines.append("alerts    none")
    if html_path is not None:
        lines.append(f"report    {html_path}")
    console.out.print("\n".join(lines), markup=False)
