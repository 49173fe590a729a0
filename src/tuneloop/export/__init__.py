"""`tuneloop export`: a run's model as files another runtime can serve, verified against the run itself.

Reads top to bottom: the run's own model (the reference) answers a fixed set of probe prompts →
the adapter is merged into its base (or kept, for prompt/prefix tuning) and checked for non-finite
weights → a standalone safetensors folder and/or GGUF files (+ an Ollama Modelfile) are written to a
staging folder → each is loaded back the way a user would load it and compared with the reference
(logits, top-1 agreement, greedy tokens, tokenizer and chat template) → model card and
verification.json → the staging folder is renamed into place. Any failed check raises and removes
the staging folder: there is never a half-written or unverified export.

runs/<id>/export/
  model.safetensors, config.json, generation_config.json   the merged model (safetensors format)
  tokenizer.json, tokenizer_config.json, chat_template.jinja   the run's tokenizer and exact chat template
  gguf/<id>-f16.gguf, gguf/<id>-q8_0.gguf, gguf/Modelfile   GGUF format, with an Ollama Modelfile
  adapter_config.json, adapter_model.safetensors, base_model.json   prompt/prefix tuning instead
  README.md                                              the model card
  verification.json                                      the parity figures, per format
"""

from __future__ import annotations

import gc
import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from tuneloop import console
from tuneloop.config import RESOLVED_FILENAME, ProjectConfig
from tuneloop.errors import UserError
from tuneloop.export import merge, verify
from tuneloop.export.merge import ExportError

FORMATS = ("safetensors", "gguf")
QUANTS = ("f16", "q8_0")
VERIFICATION = "verification.json"
GGUF_DIR = "gguf"  # apart from the safetensors folder: transformers would mix a GGUF with tokenizer files beside it


@dataclass
class ExportResult:
    out: Path
    kind: str
    note: str
    checks: list[verify.Check] = field(default_factory=list)
    files: list[str] = field(default_factory=list)
    template_family: str | None = None
    notes: list[str] = field(default_factory=list)


def run_config(cfg: ProjectConfig, run_dir: Path) -> ProjectConfig:
    """The project config with the run's own model and method sections (from its config.resolved.yaml).

    Exporting after the config moved on must still rebuild the run's model on the base it trained on.
    """
    import yaml

    from tuneloop.config import derive

    resolved = run_dir / RESOLVED_FILENAME
    if not resolved.is_file():
        raise UserError(f"{run_dir} is not a run folder (no {RESOLVED_FILENAME}); pass --run with a run folder")
    saved = yaml.safe_load(resolved.read_text(encoding="utf-8")) or {}
    overrides = [
        f"{section}={json.dumps(saved[section])}" for section in ("task", "model", "method") if section in saved
    ]
    return derive(cfg, overrides)


def export_run(
    cfg: ProjectConfig,
    run_dir: Path,
    formats: list[str] | None = None,
    quants: list[str] | None = None,
    out: Path | None = None,
) -> ExportResult:
    """Export `run_dir`'s final model in `formats` (default export.formats) and verify it; return what was written."""
    formats = list(dict.fromkeys(formats or cfg.export.formats))
    quants = list(dict.fromkeys(quants or cfg.export.quant))
    for name, allowed, given in (("format", FORMATS, formats), ("quant", QUANTS, quants)):
        unknown = [g for g in given if g not in allowed]
        if unknown:
            raise UserError(f"unknown export {name} {', '.join(map(repr, unknown))}; choose from {', '.join(allowed)}")
    run_cfg = run_config(cfg, run_dir)
    run = merge.run_kind(run_cfg, run_dir)
    if run.kind in merge.UNMERGEABLE and "gguf" in formats:
        raise UserError(f"no GGUF for this run: {run.note}. Export --format safetensors")
    out = out or run_dir / "export"
    staging = out.parent / f".{out.name}.tmp-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        result = _export(cfg, run_cfg, run, run_dir, formats, quants, staging)
        _replace(staging, out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    result.out = out
    return result


def _export(
    cfg: ProjectConfig,
    run_cfg: ProjectConfig,
    run: merge.RunModel,
    run_dir: Path,
    formats: list[str],
    quants: list[str],
    staging: Path,
) -> ExportResult:
    from tuneloop.models import load_causal_lm, read_licence, resolve

    e = cfg.export
    result = ExportResult(staging, run.kind, run.note)
    console.note(f"export {run_dir.name}: {run.note}")
    model, tokenizer = merge.load_reference(run_cfg, run)
    chat_template = tokenizer.chat_template
    conversations = verify.probe_conversations(cfg, e.probes)
    console.note(f"reference: the run's own model on {len(conversations)} probe prompts")
    ref = verify.reference(model, tokenizer, conversations, e.max_new_tokens, e.verify_dtype)
    del model
    gc.collect()
    licence = read_licence(resolve(run_cfg.model.name, run_cfg.model.revision))

    def check(name: str, loaded: Any, loaded_tokenizer: Any, limits: tuple[float, float, bool]) -> None:
        c = verify.measure(name, loaded, loaded_tokenizer, ref, conversations, chat_template, limits, e.max_new_tokens)
        console.note(("verified " if c.passed else "FAILED ") + c.summary())
        result.checks.append(c)

    if run.kind in merge.UNMERGEABLE:
        merge.save_adapter(run, run_cfg, tokenizer, staging)
        check("adapter", *merge.load_adapter_export(run_cfg, staging), (e.max_abs_diff, 1.0, True))
    else:
        merged = merge.merged_model(run_cfg, run)
        merge.check_finite(merged, run.final)
        if "safetensors" in formats:
            merge.save_standalone(merged, tokenizer, staging)
            check("safetensors", *load_causal_lm(str(staging), "float32"), (e.max_abs_diff, 1.0, True))
        if "gguf" in formats:
            result.template_family = _write_gguf(merged, tokenizer, run_dir, staging, quants, licence, result)
            del merged
            gc.collect()
            from tuneloop.export.gguf_file import load_gguf

            for q in quants:
                limits = {"f16": (e.f16_max_abs_diff, e.f16_min_top1), "q8_0": (e.q8_0_max_abs_diff, e.q8_0_min_top1)}[
                    q
                ]
                check(f"gguf {q}", *load_gguf(staging / GGUF_DIR / _gguf_name(run_dir, q)), (*limits, False))
    failed = [c for c in result.checks if not c.passed]
    if failed:
        lines = [f"{c.format}: " + "; ".join(c.problems) for c in failed]
        raise ExportError(
            "the export does not match the run's model, so nothing was written:\n  "
            + "\n  ".join(lines)
            + "\nRe-run with --debug for details; limits are export.* in the config (see README: Deploy)"
        )
    result.files = _listing(staging)
    _write_verification(staging, run_dir, run, result)
    from tuneloop.export.card import write_card

    write_card(
        staging,
        run_cfg,
        run_dir,
        licence=licence,
        method_note=run.note,
        files=[*result.files, VERIFICATION],
        checks=verify.to_json(result.checks),
        template_family=result.template_family,
    )
    result.files = _listing(staging)
    return result


def _listing(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())


def _gguf_name(run_dir: Path, quant: str) -> str:
    return f"{run_dir.name}-{quant}.gguf"


def _write_gguf(
    merged: Any,
    tokenizer: Any,
    run_dir: Path,
    staging: Path,
    quants: list[str],
    licence: str,
    result: ExportResult,
) -> str | None:
    """GGUF per quant plus the Modelfile; returns the recognised chat-template family (None: unrecognised)."""
    from tuneloop.export import ollama
    from tuneloop.export.gguf_file import write_gguf

    folder = staging / GGUF_DIR
    folder.mkdir()
    with tempfile.TemporaryDirectory(dir=staging) as tokenizer_dir:
        tokenizer.save_pretrained(tokenizer_dir)  # tokenizer.json is where the BPE merges are read from
        for q in quants:
            console.note(f"writing GGUF {q}")
            write_gguf(
                merged,
                tokenizer,
                Path(tokenizer_dir),
                folder / _gguf_name(run_dir, q),
                q,
                name=run_dir.name,
                licence=licence,
            )
    template = ollama.recognise(tokenizer)
    names = [_gguf_name(run_dir, q) for q in quants]
    text = ollama.modelfile(names[0], template, [tokenizer.eos_token], names[1:])
    (folder / "Modelfile").write_text(text, encoding="utf-8")
    if template is None:
        note = (
            "Modelfile: the run's chat template is not one tuneloop can write in Ollama's Go syntax (chatml, llama3, "
            "mistral, gemma, phi3), so it has no TEMPLATE; write one by hand that renders chat_template.jinja"
        )
        console.warn(note)
        result.notes.append(note)
        return None
    console.note(f"Modelfile: TEMPLATE renders the training template ({template.family})")
    return template.family


def _write_verification(staging: Path, run_dir: Path, run: merge.RunModel, result: ExportResult) -> None:
    record = {
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "run": run_dir.name,
        "kind": run.kind,
        "note": run.note,
        "chat_template_family": result.template_family,
        "notes": result.notes,
        "checks": verify.to_json(result.checks),
    }
    (staging / VERIFICATION).write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")


def _replace(staging: Path, out: Path) -> None:
    """Move the verified staging folder into place; an older export is replaced only now."""
    old = out.parent / f".{out.name}.old-{os.getpid()}"
    if out.exists():
        os.replace(out, old)
    try:
        os.replace(staging, out)
    except OSError:
        if old.exists():
            os.replace(old, out)  # put the previous export back
        raise
    shutil.rmtree(old, ignore_errors=True)
