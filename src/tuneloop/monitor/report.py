"""The monitor report: report-<time>.json with every figure, and a self-contained report-<time>.html.

The HTML has the evaluation report's look (plots inline as PNG) and is rendered by jinja2 with
autoescape on: prompts and answers are whatever clients sent, so every one of them is escaped.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from tuneloop.monitor.signals import SIGNALS
from tuneloop.plots import format_number, png_base64


def write(out_dir: Path, stem: str, report: dict[str, Any], objective: str) -> tuple[Path, Path]:
    """Write `<stem>.json` and `<stem>.html` into `out_dir`; return their paths."""
    import jinja2

    out_dir.mkdir(parents=True, exist_ok=True)
    json_path, html_path = out_dir / f"{stem}.json", out_dir / f"{stem}.html"
    json_path.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    d = report["drift"]
    charts = {
        "lengths": png_base64(_length_histograms, d) if d["status"] == "tested" else None,
        "days": png_base64(_daily_rates, report["outputs"]["per_day"]) if report["outputs"]["per_day"] else None,
    }
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(Path(__file__).parent), autoescape=True, undefined=jinja2.StrictUndefined
    )
    env.filters["num"] = format_number
    env.filters["pct"] = _pct
    page = env.get_template("report.html.j2").render(r=report, objective=objective, charts=charts, signals=SIGNALS)
    html_path.write_text(page, encoding="utf-8")
    return json_path, html_path


def _length_histograms(plt, d: dict[str, Any]):
    traffic, train = d["length_values"]["traffic"], d["length_values"]["train"]
    fig, ax = plt.subplots(figsize=(6.5, 3.2))
    bins = np.histogram_bin_edges(np.concatenate([traffic, train]), bins=30)
    ax.hist(train, bins=bins, density=True, alpha=0.55, color="#999", label=f"training sample ({len(train)})")
    ax.hist(traffic, bins=bins, density=True, alpha=0.55, color="#3a7", label=f"traffic ({len(traffic)})")
    ax.set_xlabel(f"input length ({d['length']['unit']})")
    ax.set_ylabel("density")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def _daily_rates(plt, per_day: dict[str, dict[str, int]]):
    days = list(per_day)
    fig, ax = plt.subplots(figsize=(6.5, 3.2))
    for name in SIGNALS:
        values = [c[name] / c["answers"] if c["answers"] and name in c else np.nan for c in per_day.values()]
        if not all(np.isnan(values)):
            ax.plot(range(len(days)), values, marker="o", label=name)
    errors = [c["errors"] / c["requests"] for c in per_day.values()]
    ax.plot(range(len(days)), errors, marker="x", color="k", label="errors")
    ax.set_xticks(range(len(days)), [d[5:] for d in days], rotation=30, fontsize=8)
    ax.set_ylim(-0.02, 1.02)
    ax.set_ylabel("share of answers")
    ax.legend(fontsize=7, ncol=3)
    fig.tight_layout()
    return fig


def _pct(value: float | None) -> str:
    return "–" if value is None else f"{value:.1%}"
