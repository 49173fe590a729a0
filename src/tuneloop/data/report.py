"""The data report: what went in, what left at each stage and why, and what came out.

Written as report.json (for machines), report.md (for people) and lengths.png (token lengths
against max_length), and printed as a table by `tuneloop data prepare`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from tuneloop.data.labels import label_warnings

MAX_CLUSTERS = 50
MIN_EXAMPLES = 1000  # fewer training examples than this get a warning
MIN_VAL_SHARE = 0.10  # and so does a smaller validation share


def build(cfg: Any, pipe: Any, splits: dict[str, dict], rejects: Any, tokenized: bool) -> dict[str, Any]:
    """Assemble the report from the pipeline's counters."""
    data = cfg.data
    counts = pipe.counts
    rows_in = sum(v for k, v in counts.items() if k.startswith("in_"))
    by_stage = rejects.by_stage
    flow = []
    remaining = rows_in
    for stage, label in (
        ("validate", "rejected (invalid)"),
        ("clean", "empty after cleaning"),
        ("dedup", "duplicates removed"),
        ("leakage", "leaked into val/test, removed"),
        ("render", "template could not render"),
        ("length", "dropped for length"),
    ):
        removed = by_stage.get(stage, 0)
        remaining -= removed
        flow.append({"stage": stage, "what": label, "removed": removed, "remaining": remaining})
    mix_unused = sum(len(v) for k, v in pipe.kept.items() if k == "mix") - splits["train"].get("mixed_in", 0)
    total_out = sum(s["rows"] for s in splits.values())

    lengths = [n for split in ("train", "val", "test") for n in pipe.lengths.get(split, [])]
    length_stats: dict[str, Any] = {
        "tokenized": tokenized,
        "max_length": data.max_length,
        "policy": data.long,
    }
    if tokenized and lengths:
        arr = np.array(lengths)
        length_stats.update(
            p50=int(np.percentile(arr, 50)),
            p90=int(np.percentile(arr, 90)),
            p99=int(np.percentile(arr, 99)),
            max=int(arr.max()),
            over_max_length=counts["too_long"],
            over_share=counts["too_long"] / max(counts["too_long"] + len(lengths), 1),
            truncated=counts["truncated"],
        )

    if not tokenized:  # without the tokenizer there are no token counts, only placeholders: say so
        for split in splits.values():
            split["tokens"] = split["trained_tokens"] = None
    clusters = sorted(pipe.clusters.items(), key=lambda kv: -len(kv[1]))
    warnings = _warnings(data, splits, counts, pipe, length_stats, MIN_EXAMPLES, MIN_VAL_SHARE)
    warnings += label_warnings(splits, data.split.model_dump())
    return {
        "rows_in": rows_in,
        "rows_out": total_out,
        "mix_not_sampled": mix_unused,
        "files": pipe.files,
        "flow": flow,
        "cleaned_rows": counts["cleaned"],
        "pii": {
            "mode": data.pii.mode,
            "ner": f"{data.pii.ner} ({data.pii.ner_model})" if data.pii.ner != "off" else "off",
            "rows": counts["pii_rows"],
            "by_type": dict(sorted(pipe.pii_counts.items())),
        },
        "dedup": {
            "exact_removed": counts["dup_exact"],
            "near_removed": counts["dup_near"],
            "near_grouped": counts["near_grouped"],
            "threshold": data.dedup.threshold,
            "clusters": len(clusters),
            "largest_clusters": [{"kept": kept, "members": members} for kept, members in clusters[:MAX_CLUSTERS]],
        },
        "leakage": {
            "exact": counts["leak_exact"],
            "near": counts["leak_near"],
            "examples": pipe.leaks[:MAX_CLUSTERS],
        },
        "lengths": length_stats,
        "splits": splits,
        "tokens_per_epoch": splits["train"]["tokens"],
        "trained_tokens_per_epoch": splits["train"]["trained_tokens"],
        "reject_reasons": [
            {"stage": stage, "reason": kind, "count": n, "example": rejects.examples[(stage, kind)]}
            for (stage, kind), n in rejects.reasons.most_common()
        ],
        "warnings": warnings,
    }


def _warnings(data, splits, counts, pipe, lengths, min_examples, min_val) -> list[str]:
    out = []
    train = splits["train"]["rows"]
    if train < min_examples:
        out.append(
            f"only {train:,} training examples; fine-tuning usually needs at least {min_examples:,} for a "
            "reliable gain: add data, or expect a small and noisy improvement"
        )
    val = splits["val"]["rows"]
    if data.val:  # your own file: measured against the rows split into train (a test file does not count)
        split_rows = len(pipe.kept.get("train", []))
        share = val / (val + split_rows) if val + split_rows else 1.0
        if share < min_val - 0.005:
            out.append(
                f"your validation file has {val:,} rows, {share:.1%} of the validation and training rows, under "
                f"{min_val:.0%}: add rows to data.val, or leave it out and set data.split.val"
            )
    elif data.split.val < min_val - 0.005:
        # The configured share of the rows being split: the realised one varies by sampling noise (data/split.py).
        out.append(
            f"the validation split is {data.split.val:.1%} of the rows being split ({val:,} rows), under "
            f"{min_val:.0%}: raise data.split.val (e.g. --set data.split.val=0.1 --set data.split.train=0.8) "
            "or provide data.val"
        )
    if splits["test"]["rows"] == 0:
        out.append("the test split is empty, so `tuneloop eval` will have nothing to measure: set data.split.test")
    leaks = counts["leak_exact"] + counts["leak_near"]
    if leaks and not pipe.fix_leakage:
        out.append(
            f"{leaks:,} training records duplicate val/test records ({counts['leak_exact']} exact, "
            f"{counts['leak_near']} near): the eval would be inflated; rerun with --fix to remove them from train"
        )
    if lengths.get("over_max_length"):
        n = lengths["over_max_length"]
        verb = "were dropped" if data.long == "drop" else "will be truncated"
        out.append(
            f"{n:,} examples ({lengths['over_share']:.1%}) exceed data.max_length {data.max_length} and {verb}; "
            f"raise data.max_length (the longest is {lengths.get('max', '?')} tokens kept) if they matter"
        )
    if data.pii.mode == "detect" and counts["pii_rows"]:
        out.append(
            f"{counts['pii_rows']:,} records contain PII that was detected but NOT redacted (data.pii.mode=detect)"
        )
    return out


def write(report: dict[str, Any], out: Path, lengths: dict[str, list[int]], max_length: int) -> None:
    """Write report.json, report.md and (when tokenized) lengths.png into `out`."""
    (out / "report.json").write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    has_plot = report["lengths"]["tokenized"] and any(lengths.values())
    if has_plot:
        _histogram(lengths, max_length, out / "lengths.png")
    (out / "report.md").write_text(markdown(report, has_plot), encoding="utf-8")


def _histogram(lengths: dict[str, list[int]], max_length: int, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.5), dpi=110)
    everything = [n for v in lengths.values() for n in v]
    bins = np.linspace(0, max(max(everything), max_length) * 1.05, 40)
    for split in ("train", "val", "test"):
        if lengths.get(split):
            ax.hist(lengths[split], bins=bins, alpha=0.6, label=f"{split} ({len(lengths[split]):,})")
    ax.axvline(max_length, color="crimson", linestyle="--", label=f"max_length {max_length}")
    ax.set_xlabel("tokens per example (after the chat template)")
    ax.set_ylabel("examples")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _count(n: int | None) -> str:
    return "not measured" if n is None else f"{n:,}"


def tokens_line(report: dict[str, Any]) -> str:
    """'N (M trained)', or why there is no count."""
    if report["tokens_per_epoch"] is None:
        return "not measured (--no-tokenize)"
    return f"{report['tokens_per_epoch']:,} ({report['trained_tokens_per_epoch']:,} trained)"


def markdown(report: dict[str, Any], has_plot: bool) -> str:
    """The report for people."""
    lines = ["# Data report", ""]
    if report["warnings"]:
        lines += ["## Warnings", ""] + [f"- {w}" for w in report["warnings"]] + [""]
    lines += ["## Rows at each step", "", "| step | removed | remaining |", "| --- | ---: | ---: |"]
    lines.append(f"| read | | {report['rows_in']:,} |")
    for step in report["flow"]:
        lines.append(f"| {step['what']} | {step['removed']:,} | {step['remaining']:,} |")
    if report["mix_not_sampled"] or report["splits"]["train"].get("mixed_in"):
        lines.append(
            f"| replay mix: sampled into train (rest unused: {report['mix_not_sampled']:,}) | | "
            f"+{report['splits']['train'].get('mixed_in', 0):,} |"
        )
    lines += ["", f"Rows changed by cleaning: {report['cleaned_rows']:,}.", ""]
    lines += ["## Splits", "", "| split | rows | tokens | trained tokens |", "| --- | ---: | ---: | ---: |"]
    for name, s in report["splits"].items():
        lines.append(f"| {name} | {s['rows']:,} | {_count(s['tokens'])} | {_count(s['trained_tokens'])} |")
    lines += ["", f"Training tokens per epoch: {tokens_line(report)}.", ""]
    lengths = report["lengths"]
    lines += ["## Lengths", ""]
    if lengths["tokenized"] and "p50" in lengths:
        lines.append(
            f"Tokens per example: median {lengths['p50']}, p90 {lengths['p90']}, p99 {lengths['p99']}, "
            f"max {lengths['max']}; max_length {lengths['max_length']} ({lengths['policy']} "
            f"{lengths['over_max_length']:,} over, {lengths['over_share']:.1%})."
        )
        if has_plot:
            lines += ["", "![token lengths](lengths.png)"]
    else:
        lines.append("Not tokenized (--no-tokenize): lengths were not checked.")
    pii = report["pii"]
    lines += ["", "## Personal data", "", f"Mode: {pii['mode']}; names and places: {pii['ner']}; "]
    lines[-1] += f"records with PII: {pii['rows']:,}."
    lines.append("")
    if pii["by_type"]:
        lines += ["| type | found |", "| --- | ---: |"] + [f"| {t} | {n:,} |" for t, n in pii["by_type"].items()]
    d = report["dedup"]
    lines += [
        "",
        "## Duplicates",
        "",
        f"Exact removed: {d['exact_removed']:,}; near removed: {d['near_removed']:,} "
        f"(Jaccard ≥ {d['threshold']}); near kept together in one split: {d['near_grouped']:,}.",
    ]
    if d["largest_clusters"]:
        lines += ["", "| kept | duplicates |", "| --- | --- |"]
        for c in d["largest_clusters"][:20]:
            members = ", ".join(f"{m['id']} ({m['similarity']})" for m in c["members"][:5])
            more = f" and {len(c['members']) - 5} more" if len(c["members"]) > 5 else ""
            lines.append(f"| {c['kept']} | {members}{more} |")
    leak = report["leakage"]
    if leak["exact"] or leak["near"]:
        lines += ["", "## Leakage", "", f"Exact: {leak['exact']:,}; near: {leak['near']:,}.", ""]
        lines += [f"- {x['id']} ≈ {x['split']} {x['of']} ({x['kind']})" for x in leak["examples"][:20]]
    if report["reject_reasons"]:
        lines += [
            "",
            "## Why records were removed",
            "",
            "| stage | count | first example |",
            "| --- | ---: | --- |",
        ]
        for r in report["reject_reasons"][:30]:
            lines.append(f"| {r['stage']} | {r['count']:,} | `{r['example'][:160]}` |")
        lines += ["", "Every removed record is in `rejects.jsonl`, as it was read."]
    lines += ["", "## Files", "", "| file | format | rows | rejected |", "| --- | --- | ---: | ---: |"]
    for name, f in report["files"].items():
        lines.append(f"| {name} ({f['origin']}) | {f['format']} | {f['rows']:,} | {f['rejected']:,} |")
    return "\n".join(lines) + "\n"
