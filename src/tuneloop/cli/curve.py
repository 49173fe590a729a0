"""`tuneloop curve --sizes 60,120,240`: how much data do I need?"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from tuneloop import config
from tuneloop.cli.common import ConfigOption, SetOption, load_config, refuse_classification, refuse_preference


def curve(
    sizes: Annotated[
        str, typer.Option("--sizes", help="Training-set sizes, comma-separated; each trains one run.")
    ] = "60,120,240,480,960",
    config_path: ConfigOption = Path(config.CONFIG_FILENAME),
    overrides: SetOption = None,
    out: Annotated[Path | None, typer.Option("--out", help="Output folder (default: runs/curves/<id>).")] = None,
) -> None:
    """Train on nested random subsets of train, evaluate each against the base on the same test set, plot
    metric vs examples (curve.png, curve.html), and say where the curve flattens."""
    from tuneloop import console
    from tuneloop.curve import curve as run_curve
    from tuneloop.curve import describe, parse_sizes

    cfg = load_config(config_path, overrides)

    refuse_classification(cfg, "curve")
    refuse_preference(cfg, "curve")
    result = run_curve(cfg, parse_sizes(sizes), out)
    if result.reused:
        console.note("every point and the evaluation were reused (inputs unchanged)")
    lines = [
        *describe(result.curve),
        f"plot      {result.out_dir / 'curve.png'}",
        f"page      {result.out_dir / 'curve.html'}",
    ]
    lines.append(f"report    {result.curve['report']}")
    console.out.print("\n".join(lines), markup=False)
