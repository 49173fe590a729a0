"""`tuneloop curve`: how much data do I need? Train on nested subsets, evaluate all on one test set.

Each size trains a run on a seeded random subset of train (`train.examples`; a smaller subset is
always inside a larger one, so the points differ by data added, not by a different draw). The base
model is the point at 0 examples. Base and every point are evaluated together: same test set,
same decoding, same bootstrap resamples. The curve has flattened at the smallest size from which
the largest size is no longer significantly better — beyond it, more data of this kind did not buy
a change the test set can detect.

Each point's training is a stage of `tuneloop run` (cached by its inputs), so re-running a curve with
one more size trains only that size.
"""

from __future__ import annotations

import base64
import io
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tuneloop import config, console, loop
from tuneloop.config import ProjectConfig
from tuneloop.errors import UserError

CURVE_FILE = "curve.json"


@dataclass
class CurveResult:
    out_dir: Path
    curve: dict[str, Any]
    reused: bool


def parse_sizes(text: str) -> list[int]:
    """'60,120,240' → [60, 120, 240]: positive, distinct, sorted."""
    try:
        sizes = sorted({int(part) for part in text.split(",") if part.strip()})
    except ValueError:
        raise UserError(f"--sizes must be whole numbers separated by commas, e.g. 60,120,240 (got {text!r})") from None
    if not sizes or sizes[0] <= 0:
        raise UserError(f"--sizes needs at least one positive size, e.g. 60,120,240 (got {text!r})")
    return sizes


def curve(cfg: ProjectConfig, sizes: list[int], out_dir: Path | None = None) -> CurveResult:
    """Train one run per size (reusing finished ones), evaluate base and all runs, find where gains stop."""
    from tuneloop.data.prepare import sha256_file
    from tuneloop.evaluate.runner import evaluate

    stage, manifest = loop.prepare_stage(cfg)
    console.note(f"prepare: {stage.action}")
    available = manifest["splits"]["train"]["rows"]
    too_big = [n for n in sizes if n > available]
    if too_big:
        raise UserError(
            f"sizes {', '.join(map(str, too_big))} exceed the {available:,} train examples; "
            f"use sizes up to {available}, or add data"
        )
    if not manifest["splits"].get("test", {}).get("rows"):
        raise UserError("the curve is measured on the test split, which is empty; give data.split.test a share")
    if cfg.train.max_steps is not None:
        console.warn(
            f"train.max_steps is {cfg.train.max_steps}, so every size trains that many steps (small sets repeat); "
            "for a curve at a fixed number of epochs, pass --set train.max_steps=null"
        )

    points = [config.derive(cfg, [f"train.examples={n}"]) for n in sizes]
    keys = [loop.train_key(p, manifest) for p in points]
    curve_id = "curve-" + loop.digest([keys, loop.eval_key(cfg, "", manifest)])[:10]
    out_dir = out_dir or cfg.path(cfg.output.dir) / "curves" / curve_id
    out_dir.mkdir(parents=True, exist_ok=True)
    saved = loop.read_json(out_dir / CURVE_FILE)
    metrics_file = out_dir / "eval" / "metrics.json"
    reusable = saved and saved.get("key") == curve_id and metrics_file.is_file()
    if reusable and saved.get("metrics_sha256") == sha256_file(metrics_file):
        return CurveResult(out_dir, saved, reused=True)

    run_dirs = []
    for n, point in zip(sizes, points, strict=True):
        console.note(f"size {n:,}: training")
        stage, run_dir, status = loop.train_stage(point, manifest, kind="curve-point", group=curve_id)
        if status not in loop.FINISHED:
            raise UserError(f"training for size {n} was interrupted ({run_dir}); run the same command again to resume")
        console.note(f"size {n:,}: train {stage.action} → {run_dir.name}")
        run_dirs.append(run_dir)

    started = time.perf_counter()
    result = evaluate(cfg, run_dirs, out_dir=out_dir / "eval")
    summary = summarise(cfg, sizes, run_dirs, result)
    summary.update(
        key=curve_id,
        metrics_sha256=sha256_file(metrics_file),
        eval_seconds=round(time.perf_counter() - started, 1),
        report=str(out_dir / "eval" / "report.html"),
    )
    (out_dir / CURVE_FILE).write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    write_plots(out_dir, summary)
    return CurveResult(out_dir, summary, reused=False)


def summarise(cfg: ProjectConfig, sizes: list[int], run_dirs: list[Path], result: Any) -> dict[str, Any]:
    """Per metric: the value at 0 (base) and at each size with its interval vs base, and the plateau."""
    from tuneloop.evaluate.compare import bootstrap_indices, compare
    from tuneloop.evaluate.runner import BASE

    report, scores = result.report, result.scores
    n_test = report["test"]["examples"]
    indices = bootstrap_indices(n_test, cfg.eval.bootstrap, cfg.eval.seed)
    names = [d.name for d in run_dirs]
    metrics = {}
    for metric in cfg.task.metrics:
        base = scores[BASE][metric]
        points = [{"examples": 0, "run": BASE, "value": base.value, "ci_low": base.value, "ci_high": base.value}]
        for n, name in zip(sizes, names, strict=True):
            c = report["comparisons"][name][metric]
            points.append(
                {
                    "examples": n,
                    "run": name,
                    "value": c["candidate"],
                    # the interval of the change vs base, placed around the point
                    "ci_low": base.value + c["ci_low"],
                    "ci_high": base.value + c["ci_high"],
                    "verdict_vs_base": c["verdict"],
                }
            )
        largest = scores[names[-1]][metric]
        versus_largest = [compare(scores[name][metric], largest, indices, cfg.eval.confidence) for name in names]
        for point, c in zip(points[1:], versus_largest, strict=True):
            point["largest_minus_this"] = {"delta": c.delta, "ci_low": c.ci_low, "ci_high": c.ci_high}
            point["largest_significantly_better"] = c.verdict == "better"
        metrics[metric] = {"points": points, "flattens_at": _flattens_at(sizes, versus_largest)}
    return {
        "sizes": sizes,
        "runs": {str(n): str(d) for n, d in zip(sizes, run_dirs, strict=True)},
        "test_examples": n_test,
        "confidence": cfg.eval.confidence,
        "primary": cfg.task.metrics[0],
        "metrics": metrics,
    }


def _flattens_at(sizes: list[int], versus_largest: list[Any]) -> int | None:
    """The smallest size from which on the largest size is never significantly better (None: one size only)."""
    if len(sizes) < 2:
        return None
    flat = sizes[-1]
    for n, c in reversed(list(zip(sizes, versus_largest, strict=True))):
        if c.verdict == "better":
            break
        flat = n
    return flat


def describe(curve_data: dict[str, Any]) -> list[str]:
    """Plain sentences: per metric, the values by size and where the curve flattens."""
    lines = []
    for metric, m in curve_data["metrics"].items():
        values = ", ".join(f"{p['examples']}: {p['value']:.4g}" for p in m["points"])
        lines.append(f"{metric}  (examples: value)  {values}")
        flat, sizes = m["flattens_at"], curve_data["sizes"]
        if flat is None:
            lines.append("  one size only: give several sizes to see where the curve flattens")
        elif flat == sizes[-1]:
            lines.append(
                f"  still rising: {sizes[-1]:,} examples were significantly better than {sizes[-2]:,}; "
                "more data is likely to help"
            )
        else:
            lines.append(
                f"  flattens at {flat:,} examples: beyond it, up to {sizes[-1]:,} was not significantly better "
                f"on {curve_data['test_examples']} test examples"
            )
    return lines


# --------------------------------------------------------------------------- plots


def write_plots(out_dir: Path, curve_data: dict[str, Any]) -> tuple[Path, Path]:
    """curve.png (one panel per metric) and curve.html (the plot inline, the table, the verdicts)."""
    import html

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics = curve_data["metrics"]
    fig, axes = plt.subplots(1, len(metrics), figsize=(5.5 * len(metrics), 4), dpi=110, squeeze=False)
    for ax, (metric, m) in zip(axes[0], metrics.items(), strict=True):
        xs = [p["examples"] for p in m["points"]]
        ys = [p["value"] for p in m["points"]]
        low = [y - p["ci_low"] for y, p in zip(ys, m["points"], strict=True)]
        high = [p["ci_high"] - y for y, p in zip(ys, m["points"], strict=True)]
        ax.errorbar(xs, ys, yerr=[low, high], marker="o", capsize=3)
        ax.annotate("base", (xs[0], ys[0]), textcoords="offset points", xytext=(4, 6), fontsize=8)
        if m["flattens_at"] is not None and m["flattens_at"] != curve_data["sizes"][-1]:
            ax.axvline(m["flattens_at"], color="grey", linestyle="--", linewidth=1, label="flattens here")
            ax.legend(fontsize=8)
        ax.set_xlabel("training examples")
        ax.set_ylabel(metric)
        ax.grid(alpha=0.3)
    fig.suptitle(f"metric vs training examples ({curve_data['confidence']:.0%} intervals of the change vs base)")
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    png = out_dir / "curve.png"
    png.write_bytes(buffer.getvalue())

    rows = []
    for metric, m in metrics.items():
        for p in m["points"]:
            rows.append(
                f"<tr><td>{html.escape(metric)}</td><td>{p['examples']:,}</td><td>{p['value']:.4g}</td>"
                f"<td>[{p['ci_low']:.4g}, {p['ci_high']:.4g}]</td><td>{html.escape(p.get('verdict_vs_base', ''))}</td>"
                f"<td>{html.escape(p['run'])}</td></tr>"
            )
    sentences = "".join(f"<li>{html.escape(line.strip())}</li>" for line in describe(curve_data))
    image = base64.b64encode(buffer.getvalue()).decode()
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>data-size curve</title>
<style>body{{font-family:sans-serif;max-width:1100px;margin:2em auto}}td,th{{padding:2px 10px;text-align:left}}</style>
</head><body><h1>How much data? Metric vs training examples</h1>
<p>Nested random subsets of train, each evaluated with the base model on the same
{curve_data["test_examples"]} test examples. Full report: {html.escape(curve_data.get("report", ""))}</p>
<ul>{sentences}</ul><img alt="curve" src="data:image/png;base64,{image}">
<table><tr><th>metric</th><th>examples</th><th>value</th><th>interval</th><th>vs base</th><th>run</th></tr>
{"".join(rows)}</table></body></html>
"""
    page_path = out_dir / "curve.html"
    page_path.write_text(page, encoding="utf-8")
    return png, page_path
