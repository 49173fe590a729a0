"""`tuneloop monitor export`: corrected and thumbs-down traffic → JSONL for `tuneloop data prepare`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

import typer

from tuneloop import config
from tuneloop.cli.common import ConfigOption, SetOption, load_config


def export(
    since: Annotated[
        str | None,
        typer.Option("--since", help="Only feedback given since: 7d, 24h, 30m, 2w ago, or an ISO date (default: all)."),
    ] = None,
    out: Annotated[
        Path | None,
        typer.Option("--out", "-o", help="The training JSONL (default: data/traffic/export-<time>.jsonl)."),
    ] = None,
    only: Annotated[
        Literal["down", "corrected", "flagged", "all"],
        typer.Option(
            help="down: thumbs-down; corrected: any response with a correction; flagged: answers the output "
            "signals flag (to review); all: every one of them."
        ),
    ] = "all",
    review_out: Annotated[
        Path | None,
        typer.Option("--review-out", help="Thumbs-down without a correction (default: monitor/review-<time>.jsonl)."),
    ] = None,
    config_path: ConfigOption = Path(config.CONFIG_FILENAME),
    overrides: SetOption = None,
) -> None:
    """Write corrected responses as training records (the correction is the answer), and thumbs-down or
    flagged ones without a correction to a review file, from the traffic `tuneloop serve --log` recorded."""
    from tuneloop import console, traffic
    from tuneloop.cli.monitor_checks import output_checks
    from tuneloop.monitor.export import export as run_export

    cfg = load_config(config_path, overrides)
    checks = output_checks(cfg) if only in ("flagged", "all") else None
    result = run_export(cfg, traffic.parse_since(since) if since else None, only, out, review_out, checks=checks)
    window = f"since {since}" if since else "in the log"
    console.note(
        f"{result.with_feedback} responses with feedback {window}: {result.corrected} corrected, "
        f"{result.down_uncorrected} thumbs-down without a correction"
        + (f", {result.rated} rated answers without a correction (kto)" if result.rated else "")
        + (f"; {result.flagged} more answers flagged by the output signals" if checks is not None else "")
        + (f", {result.not_logged} whose request is not in the log" if result.not_logged else "")
    )
    for item in result.skipped:
        console.warn(f"skipped {item['id']}: {item['reason']}")
    for path, rows in result.written.items():
        print(f"wrote {rows} training records to {path}")
    if result.review_path is not None:
        print(f"wrote {result.review_rows} responses to review (no correction yet) to {result.review_path}")
    if not result.written:
        print("no training records to write (nothing corrected in the window)")
    elif out is None:
        print("add data/traffic to data.train once; the next `tuneloop data prepare` reads every export there")
