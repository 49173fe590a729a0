"""`tuneloop compare-strategies`: train every classification strategy on the same splits; one table."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from tuneloop import config
from tuneloop.cli.common import ConfigOption, SetOption, load_config


def compare_strategies(
    config_path: ConfigOption = Path(config.CONFIG_FILENAME),
    overrides: SetOption = None,
    strategies: Annotated[
        str, typer.Option("--strategies", help="Comma-separated, from features, last_k, lora, full.")
    ] = "features,last_k,lora,full",
    learning_rates: Annotated[
        list[str] | None,
        typer.Option("--lr", help="A strategy's learning rate, e.g. --lr full=5e-5 (default: the strategy's own)."),
    ] = None,
    out: Annotated[Path | None, typer.Option("--out", help="Output folder (default: runs/strategies/<time>).")] = None,
) -> None:
    """Train each strategy (one process each), evaluate them together against the base's linear probe, and
    write strategies.md, strategies.json and strategies.png."""
    from rich.table import Table

    from tuneloop import console
    from tuneloop.strategies import compare_strategies as run_comparison
    from tuneloop.strategies import parse_learning_rates

    cfg = load_config(config_path, overrides)
    chosen = [s.strip() for s in strategies.split(",") if s.strip()]
    result = run_comparison(cfg, config_path, overrides or [], chosen, parse_learning_rates(learning_rates or []), out)
    table = Table(title="classification strategies on the test split", title_justify="left")
    for column in ("strategy", "accuracy", "macro-F1", "vs base", "trainable", "train s", "peak RSS MB"):
        table.add_column(column, overflow="fold")
    for r in result.rows:
        ci = r.get("accuracy_vs_base")
        table.add_row(
            r["strategy"],
            f"{r['accuracy']:.3f}",
            f"{r['f1']:.3f}",
            f"[{ci[0]:+.3f}, {ci[1]:+.3f}]" if ci else "–",
            f"{r['trainable_parameters']:,}" if r["trainable_parameters"] is not None else "–",
            f"{r['train_seconds']:.1f}" if r["train_seconds"] is not None else "–",
            f"{r['peak_rss_mb']:.0f}" if r["peak_rss_mb"] is not None else "–",
        )
    console.out.print(table)
    console.out.print(f"table     {result.out_dir / 'strategies.md'}", markup=False)
    console.out.print(f"plot      {result.out_dir / 'strategies.png'}", markup=False)
    console.out.print(f"report    {result.eval_dir / 'report.html'}", markup=False)
