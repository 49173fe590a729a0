"""The evaluation report: one self-contained report.html (plots inline as PNG), plus report.md.

metrics.json holds the numbers; this module only presents them. Sections, in order: the test set
and its reuse, the runs (config, data hashes, loss curves), the metric table with intervals, the
reward model's mean reward and win rate, bar charts, the distribution of per-example differences,
the largest wins and losses, forgetting, output signals, red-team probes, the judge, and the human
review when `tuneloop review results` has written `human-review.json` into the evaluation folder
(read by that path only: evaluation does not import the review stage).
"""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import numpy as np

from tuneloop.config import RESOLVED_FILENAME, ProjectConfig
from tuneloop.evaluate.winrate import markdown_lines as winrate_markdown
from tuneloop.plots import format_number as _num
from tuneloop.plots import png_base64

TOP = 10
HUMAN_REVIEW_FILE = "human-review.json"
HUMAN_START, HUMAN_END = "<!-- human-review -->", "<!-- /human-review -->"
STALE = "These answers were reviewed in an earlier evaluation of the same folder: the figures below are about those."


def write(
    out_dir: Path,
    report: dict[str, Any],
    cfg: ProjectConfig,
    cases: list[Any],
    systems: list[Any],
    scores: dict[str, dict[str, Any]],
    run_dirs: list[Path],
) -> tuple[Path, Path]:
    """Write report.html and report.md into `out_dir`; return their paths."""
    primary = cfg.task.metrics[0]
    context = {
        "r": report,
        "objective": cfg.task.objective,
        "model": cfg.model.name,
        "primary": primary,
        "runs": [_run_section(d) for d in run_dirs],
        "charts": {
            "metrics": png_base64(_metric_bars, report, cfg.task.metrics),
            "differences": png_base64(_difference_histograms, scores, primary) if len(systems) > 1 else None,
            "fields": png_base64(_field_bars, report["fields"], report["systems"]) if report.get("fields") else None,
        },
        "examples": {s.name: _wins_and_losses(cases, systems, scores, primary, s.name) for s in systems[1:]},
        "human": _human_review(out_dir),
    }
    html_path, md_path = out_dir / "report.html", out_dir / "report.md"
    html_path.write_text(_templates().get_template("report.html.j2").render(**context), encoding="utf-8")
    md_path.write_text(_markdown(context) + _human_markdown(context["human"]), encoding="utf-8")
    return html_path, md_path


def add_human_review(out_dir: Path) -> None:
    """Put the human review section into an existing report (after `tuneloop review results`)."""
    human = _human_review(out_dir)
    html_path, md_path = out_dir / "report.html", out_dir / "report.md"
    if human is None or not html_path.is_file():
        return
    section = _templates().get_template("human_review.html.j2").render(human=human)
    html = html_path.read_text(encoding="utf-8")
    html = _replace_between(html, section, before="</body>")
    html_path.write_text(html, encoding="utf-8")
    if md_path.is_file():
        md_path.write_text(
            _replace_between(md_path.read_text(encoding="utf-8"), _human_markdown(human)), encoding="utf-8"
        )


def _replace_between(text: str, section: str, before: str | None = None) -> str:
    """`text` with the marked human-review block replaced by `section` (added when absent)."""
    start, end = text.find(HUMAN_START), text.find(HUMAN_END)
    if start >= 0 and end > start:
        return text[:start] + section.strip() + text[end + len(HUMAN_END) :]
    at = text.rfind(before) if before else -1
    return text[:at] + section.strip() + "\n" + text[at:] if at >= 0 else text.rstrip("\n") + "\n" + section


def _templates():
    import jinja2

    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(Path(__file__).parent), autoescape=True, undefined=jinja2.StrictUndefined
    )
    env.filters["num"] = _num
    return env


def _human_review(out_dir: Path) -> dict[str, Any] | None:
    """`human-review.json`, with `stale` set when the evaluation was re-run after the review was made."""
    import hashlib

    path = out_dir / HUMAN_REVIEW_FILE
    try:
        human = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None
        outputs = (out_dir / "outputs.jsonl").read_bytes() if (out_dir / "outputs.jsonl").is_file() else b""
    except (OSError, json.JSONDecodeError):
        return None  # a broken file must not break the report; `review results` rewrites it
    if human is not None:
        made_from = (human.get("source") or {}).get("outputs_sha256")
        human["stale"] = made_from is not None and made_from != hashlib.sha256(outputs).hexdigest()
    return human


def _human_markdown(human: dict[str, Any] | None) -> str:
    if human is None:
        return ""
    lines = ["", HUMAN_START, "## Human review", ""]
    if human.get("stale"):
        lines += [f"**{STALE}**", ""]
    lines.append(
        f"Review `{human['review']}` ({human['mode']}): {human['rated_items']} of {human['items']} items rated, "
        f"{human['ratings']} ratings, {human['corrections']} corrections."
    )
    w = human.get("win_rate")
    if w and w["rate"] is not None:
        lines.append(
            f"Win rate of {w['candidate']} over {w['baseline']}: {w['rate']:.1%} "
            f"[{w['ci'][0]:.1%}, {w['ci'][1]:.1%}] (Wilson); {w['wins']} wins, {w['losses']} losses, {w['ties']} ties."
        )
    for system, per in (human.get("rubric") or {}).items():
        lines.append(f"- {system}: " + ", ".join(f"{c} {v['mean']:.2f}" for c, v in per.items()))
    for flag, per in human["flags"].items():
        lines.append(
            f"- {flag}: " + ", ".join(f"{s} {v['rate']:.1%} ({v['flagged']}/{v['ratings']})" for s, v in per.items())
        )
    lines.append(HUMAN_END)
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- pieces


def _run_section(run_dir: Path) -> dict[str, Any]:
    """What the report shows of one run: its config, data hashes and loss curves."""
    config_text = (run_dir / RESOLVED_FILENAME).read_text() if (run_dir / RESOLVED_FILENAME).is_file() else ""
    manifest_path = run_dir / "data-manifest.json"
    hashes = {}
    if manifest_path.is_file():
        manifest = json.loads(manifest_path.read_text())
        hashes = {name: s.get("sha256") for name, s in manifest.get("splits", {}).items()}
    loss = run_dir / "loss.png"
    return {
        "name": run_dir.name,
        "path": str(run_dir),
        "config": config_text,
        "hashes": hashes,
        "loss_png": base64.b64encode(loss.read_bytes()).decode() if loss.is_file() else None,
    }


def _wins_and_losses(cases, systems, scores, metric: str, name: str) -> dict[str, list[dict[str, Any]]]:
    """The examples where `name` gained or lost most against the base on `metric`."""
    base = next(s for s in systems if s.name == "base")
    tuned = next(s for s in systems if s.name == name)
    sign = 1 if scores["base"][metric].higher_is_better else -1
    diff = sign * (scores[name][metric].per_example - scores["base"][metric].per_example)
    order = np.argsort(-diff, kind="stable")

    def row(i: int) -> dict[str, Any]:
        return {
            "id": cases[i].id,
            "prompt": cases[i].prompt,
            "reference": cases[i].reference or "",
            "base": base.answers[i].text,
            "tuned": tuned.answers[i].text,
            "gain": float(diff[i]),
        }

    wins = [row(i) for i in order[:TOP] if diff[i] > 0]
    losses = [row(i) for i in order[::-1][:TOP] if diff[i] < 0]
    return {"wins": wins, "losses": losses}


def _metric_bars(plt, report: dict[str, Any], metrics: list[str]):
    systems = report["systems"]
    fig, axes = plt.subplots(1, len(metrics), figsize=(3.2 * len(metrics), 3.2), squeeze=False)
    for ax, metric in zip(axes[0], metrics, strict=True):
        values = [report["metrics"][s][metric]["value"] for s in systems]
        ax.bar(range(len(systems)), values, color=["#999"] + ["#3a7"] * (len(systems) - 1))
        for name in systems[1:]:
            c = report["comparisons"][name][metric]
            x = systems.index(name)
            # The interval is on the difference; drawn around the candidate it shows how far the
            # candidate could sit from the base under resampling.
            low, high = c["baseline"] + c["ci_low"], c["baseline"] + c["ci_high"]
            ax.errorbar(x, c["candidate"], yerr=[[c["candidate"] - low], [high - c["candidate"]]], color="k")
        ax.set_xticks(range(len(systems)), [s[:14] for s in systems], rotation=20, fontsize=8)
        ax.set_title(metric, fontsize=10)
    fig.tight_layout()
    return fig


def _field_bars(plt, fields: dict[str, Any], systems: list[str]):
    """Grouped bars: per JSON field, the share each system gets right."""
    names = fields["fields"]
    fig, ax = plt.subplots(figsize=(max(4.0, 1.1 * len(names) * len(systems)), 3.2))
    width = 0.8 / len(systems)
    for i, name in enumerate(systems):
        values = [fields["accuracy"][name][f] for f in names]
        xs = [j + (i - (len(systems) - 1) / 2) * width for j in range(len(names))]
        ax.bar(xs, values, width, label=name[:24], color="#999" if i == 0 else None)
    ax.set_xticks(range(len(names)), [n[:16] for n in names], fontsize=8)
    ax.set_ylim(0, 1)
    ax.set_ylabel("share right")
    ax.set_title("per-field accuracy", fontsize=10)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def _difference_histograms(plt, scores: dict[str, dict[str, Any]], metric: str):
    names = [n for n in scores if n != "base"]
    fig, axes = plt.subplots(1, len(names), figsize=(4.5 * len(names), 3.2), squeeze=False)
    for ax, name in zip(axes[0], names, strict=True):
        diff = scores[name][metric].per_example - scores["base"][metric].per_example
        ax.hist(diff, bins=min(30, max(5, len(diff) // 3)), color="#3a7")
        ax.axvline(0, color="k", lw=1)
        ax.set_title(f"{name[:24]} − base: per-example {metric}", fontsize=9)
        ax.set_xlabel("difference")
        ax.set_ylabel("examples")
    fig.tight_layout()
    return fig


def _markdown(c: dict[str, Any]) -> str:
    r = c["r"]
    lines = [
        f"# Evaluation: {c['objective']}",
        "",
        f"Model {c['model']}; systems: {', '.join(r['systems'])}. Created {r['created']}.",
        f"Test set: {r['test']['examples']} examples, sha256 `{r['test']['sha256'][:16]}…`, "
        f"evaluated {r['test']['evaluations']} time(s).",
    ]
    if r["test"]["evaluations"] >= r["test"]["reuse_warning_at"]:
        lines.append(
            f"\n**Warning:** this test set has been evaluated {r['test']['evaluations']} times; model choices "
            "made by looking at it overfit it."
        )
    for name, per in r["comparisons"].items():
        lines += ["", f"## {name} vs base", "", "| metric | base | tuned | change | relative | CI | verdict |"]
        lines.append("|---|---|---|---|---|---|---|")
        for m, x in per.items():
            rel = f"{x['relative']:+.1%}" if x["relative"] is not None else "–"
            lines.append(
                f"| {m} | {_num(x['baseline'])} | {_num(x['candidate'])} | {x['delta']:+.4g} | {rel} | "
                f"[{x['ci_low']:+.4g}, {x['ci_high']:+.4g}] | {x['verdict']} |"
            )
    lines += winrate_markdown(r.get("reward_model"), None, r["confidence"])
    if r.get("fields"):
        f = r["fields"]
        lines += ["", "## Per-field accuracy (JSON answers)", "", "| field | " + " | ".join(r["systems"]) + " |"]
        lines.append("|---|" + "---|" * len(r["systems"]))
        for name in f["fields"]:
            cells = []
            for system in r["systems"]:
                cell = f"{f['accuracy'][system][name]:.3f}"
                if system in f["comparisons"]:
                    x = f["comparisons"][system][name]
                    cell += f" ({x['delta']:+.3f} [{x['ci_low']:+.3f}, {x['ci_high']:+.3f}])"
                cells.append(cell)
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
    if r["forgetting"]:
        lines += [
            "",
            "## Forgetting",
            "",
            "| run | measure | base | tuned | change | regressed |",
            "|---|---|---|---|---|---|",
        ]
        for name, per in r["forgetting"].items():
            for m, x in per.items():
                lines.append(
                    f"| {name} | {m} | {_num(x['baseline'])} | {_num(x['candidate'])} | {x['change']:+.3g} | "
                    f"{'**yes**' if x['regressed'] else 'no'} |"
                )
    lines += ["", "## Output signals (test answers)", ""]
    for name, counts in r["output_signals"].items():
        lines.append(f"- {name}: " + ", ".join(f"{k} {v}" for k, v in counts.items()))
    if r["redteam"]:
        lines += ["", "## Red-team probes", ""]
        for p in r["redteam"]["probes"]:
            lines.append(f"- **{p['id']}** ({p['category']}): {p['prompt']!r}")
            for name, answer in p["answers"].items():
                raised = [k for k, v in p["flags"][name].items() if v is True]
                lines.append(f"  - {name}: {answer[:200]!r}" + (f" — flags: {', '.join(raised)}" if raised else ""))
    if r["judge"]:
        lines += ["", "## Judge", "", "```", json.dumps(r["judge"]["summary"], indent=2), "```"]
    for name, ex in c["examples"].items():
        for kind in ("wins", "losses"):
            lines += ["", f"## Largest {kind}: {name} ({c['primary']})", ""]
            for e in ex[kind]:
                lines.append(f"- `{e['id']}` ({e['gain']:+.3g}): {e['prompt'][:160]!r}")
                lines.append(f"  - reference: {e['reference'][:160]!r}")
                lines.append(f"  - base: {e['base'][:160]!r}")
                lines.append(f"  - tuned: {e['tuned'][:160]!r}")
    return "\n".join(lines) + "\n"
