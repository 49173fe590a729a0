"""The classification evaluation's report: report.html (plots inline as PNG) and report.md.

It reuses the evaluation report's pieces (the runs' section, the templates' environment, inline PNGs)
and adds what a classifier needs: per-class precision / recall / F1 with intervals, a confusion matrix
and a reliability diagram per system. metrics.json holds the numbers; this module only presents them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from tuneloop.config import ProjectConfig
from tuneloop.evaluate.report import _run_section, _templates
from tuneloop.plots import png_base64


def write(out_dir: Path, report: dict[str, Any], cfg: ProjectConfig, run_dirs: list[Path]) -> tuple[Path, Path]:
    """Write report.html and report.md into `out_dir`; return their paths."""
    labels = report["labels"]
    context = {
        "r": report,
        "objective": cfg.task.objective,
        "model": cfg.model.name,
        "runs": [_run_section(d) for d in run_dirs],
        "confusion": {name: png_base64(_confusion_plot, m, labels, name) for name, m in report["confusion"].items()},
        "reliability": png_base64(_reliability_plot, report["calibration"]),
    }
    html_path, md_path = out_dir / "report.html", out_dir / "report.md"
    html_path.write_text(_templates().get_template("classify_report.html.j2").render(**context), encoding="utf-8")
    md_path.write_text(markdown(report), encoding="utf-8")
    return html_path, md_path


def _confusion_plot(plt: Any, matrix: list[list[int]], labels: list[str], name: str) -> Any:
    from sklearn.metrics import ConfusionMatrixDisplay

    size = max(4.0, 0.45 * len(labels) + 2)
    fig, ax = plt.subplots(figsize=(size, size), dpi=100)
    ConfusionMatrixDisplay(np.array(matrix), display_labels=labels).plot(
        ax=ax, colorbar=False, xticks_rotation="vertical", values_format="d"
    )
    ax.set_title(f"{name}: true (rows) vs predicted")
    fig.tight_layout()
    return fig


def _reliability_plot(plt: Any, calibration: dict[str, dict[str, Any]]) -> Any:
    fig, ax = plt.subplots(figsize=(5, 5), dpi=100)
    ax.plot([0, 1], [0, 1], linestyle="--", color="grey", label="perfect calibration")
    for name, c in calibration.items():
        bins = c["bins"]
        ax.plot(
            [b["confidence"] for b in bins],
            [b["accuracy"] for b in bins],
            marker="o",
            label=f"{name} (ECE {c['ece']:.3f})",
        )
    ax.set_xlabel("confidence (top label's probability, bin mean)")
    ax.set_ylabel("accuracy in the bin")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


SIX = "|---|---|---|---|---|---|"  # a six-column table's rule


def markdown(r: dict[str, Any]) -> str:
    """report.md: the verdict table, per-class figures and calibration, in plain text."""
    pct = round(r["confidence"] * 100)
    lines = [
        "# Classification evaluation",
        "",
        f"Test set: {r['test']['examples']} examples ({r['test']['source']}), sha256 `{r['test']['sha256']}`, "
        f"evaluated {r['test']['evaluations']} time(s). Labels: {', '.join(r['labels'])}.",
        f"Base: {r['base']['what']}.",
        "",
    ]
    for name, per in r["comparisons"].items():
        lines += [f"## {name} vs base", "", f"| metric | base | tuned | change | {pct}% CI | verdict |", SIX]
        for m, c in per.items():
            lines.append(
                f"| {m} | {c['baseline']:.4f} | {c['candidate']:.4f} | {c['delta']:+.4f} | "
                f"[{c['ci_low']:+.4f}, {c['ci_high']:+.4f}] | {c['verdict']} |"
            )
        lines.append("")
    for name, rows in r["per_class"].items():
        lines += [f"## Per class: {name}", "", "| label | support | predicted | precision | recall | F1 |", SIX]
        for row in rows:
            cells = [
                f"{row[m]['value']:.3f} [{row[m]['ci'][0]:.3f}, {row[m]['ci'][1]:.3f}]"
                for m in ("precision", "recall", "f1")
            ]
            lines.append(f"| {row['label']} | {row['support']} | {row['predicted']} | " + " | ".join(cells) + " |")
        lines.append("")
    lines.append("Expected calibration error: " + ", ".join(f"{n} {c['ece']:.4f}" for n, c in r["calibration"].items()))
    return "\n".join(lines) + "\n"
