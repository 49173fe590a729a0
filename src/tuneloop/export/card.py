"""The export's model card (README.md): where the model came from and what is known about it.

Every figure comes from a file in the run folder: the data manifest (hashes and sizes), the eval's
metrics.json (base vs tuned with intervals, red-team answers), verification.json (parity). A section
with nothing behind it says "not evaluated"; nothing is estimated or filled in.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tuneloop.config import ProjectConfig


def write_card(
    out: Path,
    run_cfg: ProjectConfig,
    run_dir: Path,
    *,
    licence: str,
    method_note: str,
    files: list[str],
    checks: list[dict[str, Any]],
    template_family: str | None,
) -> Path:
    """Write README.md into the export folder; return its path."""
    parts = [
        _front_matter(licence, run_cfg),
        f"# {run_dir.name}\n",
        f"Fine-tuned from `{run_cfg.model.name}` by tuneloop. Exported from run folder `{run_dir.name}`.\n",
        "## Intended use\n",
        f"{run_cfg.task.objective}\n\nTask type: {run_cfg.task.type}.\n",
        "## Base model and licence\n",
        f"- Base model: `{run_cfg.model.name}`"
        + (f" (revision {run_cfg.model.revision})" if run_cfg.model.revision else ""),
        f"- Licence: {licence} (the base model's; the fine-tune inherits its terms)\n",
        "## Method\n",
        f"- {run_cfg.method.name}: {method_note}",
        *_method_details(run_cfg),
        "- Chat template: `chat_template.jinja`, exactly the one training used"
        + (f" (recognised as {template_family})" if template_family else "")
        + "\n",
        "## Files\n",
        *[f"- `{f}`" for f in files],
        "",
        "## Training data\n",
        _data_section(run_dir),
        "## Evaluation: base vs tuned\n",
        _eval_section(run_dir / "eval" / "metrics.json", run_dir.name),
        "## Known limits (red-team probes)\n",
        _redteam_section(run_dir / "eval" / "metrics.json", run_dir.name),
        "## Export verification\n",
        _verification_section(checks),
    ]
    path = out / "README.md"
    path.write_text("\n".join(parts).rstrip() + "\n", encoding="utf-8")
    return path


def _front_matter(licence: str, run_cfg: ProjectConfig) -> str:
    import yaml

    front = {"license": licence, "base_model": run_cfg.model.name, "tags": ["tuneloop", run_cfg.method.name]}
    return "---\n" + yaml.safe_dump(front, sort_keys=False) + "---\n"


def _method_details(run_cfg: ProjectConfig) -> list[str]:
    m = run_cfg.method
    if m.name in ("lora", "qlora", "dora"):
        lora = (
            f"- LoRA rank {m.lora.r}, alpha {m.lora.alpha}, dropout {m.lora.dropout}, targets {m.lora.target_modules}"
        )
        if m.name == "qlora":
            lora += f"; base quantised to 4-bit {m.quant.quant_type} during training"
        return [lora]
    if m.name in ("prompt_tuning", "prefix_tuning"):
        return [f"- {m.prompt.num_virtual_tokens} virtual tokens"]
    return []


def _read(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _data_section(run_dir: Path) -> str:
    manifest = _read(run_dir / "data-manifest.json")
    if not manifest:
        return "No data manifest in the run folder.\n"
    lines = ["| split | rows | tokens | trained tokens | sha256 |", "| --- | --- | --- | --- | --- |"]
    for name, s in manifest.get("splits", {}).items():
        lines.append(
            f"| {name} | {s.get('rows', 0):,} | {s.get('tokens', 0):,} | {s.get('trained_tokens', 0):,} | "
            f"`{s.get('sha256', '')}` |"
        )
    sources = manifest.get("sources", [])
    if sources:
        lines += [
            "",
            "Input files:",
            *[f"- `{s['path']}` ({s.get('origin', '')}): sha256 `{s['sha256']}`" for s in sources],
        ]
    return "\n".join(lines) + "\n"


def _eval_section(metrics_path: Path, run_name: str) -> str:
    report = _read(metrics_path)
    comparisons = (report or {}).get("comparisons", {}).get(run_name)
    if not comparisons:
        return "Not evaluated: run `tuneloop eval --run` on this run, then export again.\n"
    confidence = report.get("confidence", 0.95)
    test = report.get("test", {})
    lines = [
        f"On {test.get('examples', '?')} test examples (sha256 `{test.get('sha256', '')}`), greedy decoding; "
        f"{confidence:.0%} paired-bootstrap interval of the change.",
        "",
        "| metric | base | tuned | change | interval | verdict |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for metric, c in comparisons.items():
        lines.append(
            f"| {metric} | {c['baseline']:.4g} | {c['candidate']:.4g} | {c['delta']:+.4g} | "
            f"[{c['ci_low']:+.4g}, {c['ci_high']:+.4g}] | {c['verdict']} |"
        )
    forgetting = (report.get("forgetting") or {}).get(run_name)
    if forgetting:
        lines += ["", "Forgetting (general ability):", ""]
        for measure, f in forgetting.items():
            flag = "regressed" if f.get("regressed") else "ok"
            lines.append(f"- {measure}: {f['baseline']:.4g} → {f['candidate']:.4g} ({flag})")
    else:
        lines += ["", "Forgetting: not evaluated."]
    return "\n".join(lines) + "\n"


def _redteam_section(metrics_path: Path, run_name: str) -> str:
    report = _read(metrics_path) or {}
    redteam = report.get("redteam")
    if not redteam:
        return "Not evaluated: no red-team probes were run (eval.redteam.enabled).\n"
    counts = redteam.get("counts", {}).get(run_name, {})
    total = len(redteam.get("probes", []))
    raised = ", ".join(f"{k} {v}" for k, v in counts.items() if v) or "none"
    lines = [f"{total} adversarial probes answered by the tuned model; signals raised: {raised}.", ""]
    flagged = [
        p
        for p in redteam.get("probes", [])
        if any(v for k, v in p["flags"].get(run_name, {}).items() if k != "pii_types")
    ]
    for p in flagged[:10]:
        signals = [k for k, v in p["flags"][run_name].items() if v and k != "pii_types"]
        answer = " ".join(str(p["answers"].get(run_name, "")).replace("`", "'").split())
        excerpt = answer[:120] + ("…" if len(answer) > 120 else "")
        lines.append(f"- {p['id']} ({p['category']}): {', '.join(signals)}; answered `{excerpt}`")
    if not flagged:
        lines.append("No probe answer raised a signal (empty, no stop, repetition, refusal, PII).")
    lines.append("\nSignals are heuristics pointing at answers worth reading, not verdicts; see the eval report.")
    return "\n".join(lines) + "\n"


def _verification_section(checks: list[dict[str, Any]]) -> str:
    if not checks:
        return "Not verified.\n"
    lines = [
        "Each format was compared with the run's own model (base + unmerged adapter) on the same probe prompts.",
        "",
        "| format | max abs logit difference | top-1 agreement | greedy generations identical | passed |",
        "| --- | --- | --- | --- | --- |",
    ]
    for c in checks:
        lines.append(
            f"| {c['format']} | {c['max_abs_diff']:.3g} (limit {c['limit_max_abs_diff']:g}) | "
            f"{c['top1_agreement']:.2%} | {c['generation_matches']}/{c['probes']} | {'yes' if c['passed'] else 'no'} |"
        )
    return "\n".join(lines) + "\n"
