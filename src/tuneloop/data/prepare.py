"""`tuneloop data prepare`: read → validate → clean → redact → dedup → length → split → report.

Streams the input: records flow through the stages one at a time (tokenized in small batches),
accepted ones are spooled to disk, and only a few numbers per record stay in memory for the
split. Every record ends in exactly one place: a split file (by its `file:line` id) or
`rejects.jsonl` with the stage and reason.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import random
import shutil
from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from tuneloop import __version__
from tuneloop.config import ProjectConfig
from tuneloop.data.clean import make_cleaner
from tuneloop.data.dedup import Deduper
from tuneloop.data.formats import (
    DETECT_SAMPLE,
    Example,
    RawRow,
    RowError,
    detect_format,
    list_files,
    read_rows,
    reject_from,
    to_example,
)
from tuneloop.errors import UserError

SPLITS = ("train", "val", "test")
BATCH = 256  # examples tokenized per call: large enough for the fast tokenizer, small for memory
MIN_EXAMPLES = 1000
MIN_VAL_SHARE = 0.10


@dataclass
class _Row:
    example: Example
    raw: RawRow
    origin: str  # which input it came from: train, val, test or mix
    group: str


@dataclass
class _Kept:
    """What stays in memory per accepted record."""

    group: str
    label: str | None
    tokens: int
    trained: int


@dataclass
class Prepared:
    """The outcome of `prepare()`: where it wrote, and the report it wrote."""

    out_dir: Path
    report: dict[str, Any]
    warnings: list[str] = field(default_factory=list)


class _Rejects:
    def __init__(self, path: Path) -> None:
        self.file = path.open("w", encoding="utf-8")
        self.by_stage: Counter[str] = Counter()
        self.reasons: Counter[tuple[str, str]] = Counter()
        self.examples: dict[tuple[str, str], str] = {}

    def add(self, row: RawRow, reason: str, stage: str) -> None:
        reject = reject_from(row, reason, stage)
        self.file.write(json.dumps(reject.to_json(), ensure_ascii=False) + "\n")
        self.by_stage[stage] += 1
        key = (stage, _reason_kind(reason))
        self.reasons[key] += 1
        self.examples.setdefault(key, f"{reject.where}: {reason}")

    def close(self) -> None:
        self.file.close()


def _reason_kind(reason: str) -> str:
    """Group reasons like 'message 3 is from user...' and 'message 5 is from user...' together."""
    words = [w for w in reason.replace("'", " ").split() if not any(c.isdigit() for c in w)]
    return " ".join(words[:6])


class _Pipeline:
    def __init__(self, cfg: ProjectConfig, renderer: Any, rejects: _Rejects, work: Path) -> None:
        self.cfg = cfg
        self.data = cfg.data
        self.renderer = renderer
        self.rejects = rejects
        self.work = work
        self.counts: Counter[str] = Counter()
        self.files: dict[str, dict[str, Any]] = {}
        self.cleaner = make_cleaner(self.data.clean.model_dump())
        self.pii = None
        if self.data.pii.mode != "off":
            from tuneloop.data.pii import PiiScanner

            self.pii = PiiScanner(self.data.pii.types)
        self.pii_counts: Counter[str] = Counter()
        dd = self.data.dedup
        self.deduper = Deduper(exact=dd.exact, near=dd.near != "off", threshold=dd.threshold)
        self.clusters: dict[str, list[dict[str, Any]]] = defaultdict(list)
        self.origin_of_holdout: dict[str, str] = {}  # ids kept from user-provided val/test
        self.leaks: list[dict[str, Any]] = []
        self.kept: dict[str, list[_Kept]] = defaultdict(list)
        self.lengths: dict[str, list[int]] = defaultdict(list)
        self.labels = frozenset(self.data.labels) if self.data.labels else None
        self._spool: dict[str, Any] = {}

    # -- reading and validation ------------------------------------------------------------

    def read(self, paths: list[str], origin: str) -> Iterator[_Row]:
        for file in list_files([self.cfg.path(p) for p in paths]):
            name = _display_name(file, self.cfg.root)
            rows = read_rows(file, name)
            head = list(itertools.islice(rows, DETECT_SAMPLE))
            fmt = self.data.format if self.data.format != "auto" else detect_format(head, name)
            stats = self.files.setdefault(name, {"format": fmt, "origin": origin, "rows": 0, "rejected": 0})
            for row in itertools.chain(head, rows):
                stats["rows"] += 1
                self.counts[f"in_{origin}"] += 1
                if row.error:
                    stats["rejected"] += 1
                    self.rejects.add(row, row.error, "validate")
                    continue
                try:
                    example = to_example(row.value, fmt, f"{name}:{row.line}", self.labels)
                except RowError as e:
                    stats["rejected"] += 1
                    self.rejects.add(row, str(e), "validate")
                    continue
                yield _Row(example, row, origin, example.id)

    # -- per-record stages -------------------------------------------------------------------

    def process(self, rows: Iterator[_Row]) -> None:
        batch: list[_Row] = []
        for row in rows:
            if self._clean(row) and self._redact(row) and self._dedup(row):
                batch.append(row)
                if len(batch) >= BATCH:
                    self._measure(batch)
                    batch = []
        if batch:
            self._measure(batch)

    def _clean(self, row: _Row) -> bool:
        if self.cleaner is None:
            return True
        if row.example.map_text(self.cleaner):
            self.counts["cleaned"] += 1
            empty = _empty_field(row.example)
            if empty:
                self.rejects.add(row.raw, f"{empty} is empty after cleaning", "clean")
                return False
        return True

    def _redact(self, row: _Row) -> bool:
        if self.pii is None:
            return True
        found: Counter[str] = Counter()
        if self.data.pii.mode == "detect":
            row.example.map_text(lambda text: (found.update(self.pii.detect(text)), text)[1])
        else:

            def redact(text: str) -> str:
                new, counts = self.pii.redact(text)
                found.update(counts)
                return new

            row.example.map_text(redact)
        if found:
            self.counts["pii_rows"] += 1
            self.pii_counts.update(found)
        return True

    def _dedup(self, row: _Row) -> bool:
        ex = row.example
        match = self.deduper.add(ex.id, ex.dedup_text())
        if match is None:
            if row.origin in ("val", "test"):
                self.origin_of_holdout[ex.id] = row.origin
            return True
        holdout = self.origin_of_holdout.get(match.of)
        if holdout and row.origin in ("train", "mix"):
            self.leaks.append({"id": ex.id, "kind": match.kind, "of": match.of, "split": holdout})
            self.counts[f"leak_{match.kind}"] += 1
            if self._fix_leakage or row.origin == "mix":
                self.rejects.add(row.raw, f"{match.kind} duplicate of {holdout} record {match.of} (leakage)", "leakage")
                return False
            return True
        if match.kind == "near" and self.data.dedup.near == "group":
            row.group = match.of
            self.counts["near_grouped"] += 1
            self.clusters[match.of].append({"id": ex.id, "similarity": round(match.similarity, 3), "kept": True})
            return True
        self.counts[f"dup_{match.kind}"] += 1
        self.clusters[match.of].append({"id": ex.id, "similarity": round(match.similarity, 3), "kept": False})
        similarity = "" if match.kind == "exact" else f" (similarity {match.similarity:.2f})"
        self.rejects.add(row.raw, f"{match.kind} duplicate of {match.of}{similarity}", "dedup")
        return False

    def _measure(self, batch: list[_Row]) -> None:
        """Render with the real tokenizer and template; drop what is too long or trains nothing."""
        limit = self.data.max_length
        results = self._render(batch)
        for row, result in zip(batch, results, strict=True):
            if isinstance(result, RowError):
                self.rejects.add(row.raw, str(result), "render")
                continue
            tokens, trained = result
            if trained == 0:
                self.rejects.add(row.raw, "no trained tokens: the assistant part is empty or has weight 0", "length")
                continue
            if tokens > limit:
                self.counts["too_long"] += 1
                if self.data.long == "drop":
                    self.rejects.add(row.raw, f"{tokens} tokens > data.max_length {limit}", "length")
                    continue
                self.counts["truncated"] += 1
            self._keep(row, tokens, trained)

    def _render(self, batch: list[_Row]) -> list[tuple[int, int] | RowError]:
        if self.renderer is None:
            return [(0, 1)] * len(batch)
        out: list[tuple[int, int] | RowError] = [(0, 0)] * len(batch)
        chat = [i for i, r in enumerate(batch) if r.example.kind != "classification"]
        for i, rendered in zip(chat, self.renderer.render_many([batch[i].example for i in chat]), strict=True):
            if isinstance(rendered, RowError):
                out[i] = rendered
            else:
                trained = rendered.trained_tokens
                if len(rendered.input_ids) > self.data.max_length and self.data.long == "truncate":
                    trained = sum(1 for w in rendered.weights[: self.data.max_length] if w > 0)
                out[i] = (len(rendered.input_ids), trained)
        classify = [i for i, r in enumerate(batch) if r.example.kind == "classification"]
        if classify:
            encoded = self.renderer.tokenizer([batch[i].example.text for i in classify]).input_ids
            for i, ids in zip(classify, encoded, strict=True):
                out[i] = (len(ids), 1)
        return out

    def _keep(self, row: _Row, tokens: int, trained: int) -> None:
        spool = self._spool.get(row.origin)
        if spool is None:
            spool = self._spool[row.origin] = (self.work / f"{row.origin}.jsonl").open("w", encoding="utf-8")
        spool.write(json.dumps(row.example.to_json(), ensure_ascii=False) + "\n")
        self.kept[row.origin].append(_Kept(row.group, row.example.label, tokens, trained))

    def close_spools(self) -> None:
        for f in self._spool.values():
            f.close()

    _fix_leakage = False


def _empty_field(example: Example) -> str | None:
    for i, m in enumerate(example.messages, 1):
        if not m["content"].strip():
            return f"message {i} ({m['role']})"
    for name in ("text", "chosen", "rejected"):
        value = getattr(example, name)
        if value is not None and not value.strip():
            return name
    if any(not r.strip() for r in example.responses or []):
        return "a response"
    return None


def _display_name(file: Path, root: Path) -> str:
    try:
        return str(file.resolve().relative_to(root))
    except ValueError:
        return str(file)


# --------------------------------------------------------------------------- the stage


def prepare(
    cfg: ProjectConfig,
    *,
    tokenizer: Any = None,
    tokenize: bool = True,
    strict: bool = False,
    fix_leakage: bool = False,
) -> Prepared:
    """Run the data stage for `cfg`; write splits, rejects, report and manifest to data.prepared_dir."""
    from tuneloop.data import report as report_mod

    data = cfg.data
    out = cfg.path(data.prepared_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "manifest.json").unlink(missing_ok=True)  # the manifest marks a finished run; no stale one
    work = out / ".work"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir()
    renderer = None
    if tokenize:
        from tuneloop.data.render import Renderer

        if tokenizer is None:
            from tuneloop.models import load_tokenizer, resolve

            tokenizer = load_tokenizer(resolve(cfg.model.name, cfg.model.revision), cfg.model.trust_remote_code)
        renderer = Renderer(tokenizer)

    rejects = _Rejects(work / "rejects.jsonl")
    pipe = _Pipeline(cfg, renderer, rejects, work)
    pipe._fix_leakage = fix_leakage
    try:
        # Held-out inputs go first, so a train record that copies one is caught as leakage.
        for origin in ("test", "val", "train"):
            paths = getattr(data, origin)
            if paths:
                pipe.process(pipe.read(paths, origin))
        for mix in data.mix:
            pipe.process(pipe.read([mix.path], "mix"))
    finally:
        pipe.close_spools()
        rejects.close()

    if data.long == "error" and pipe.counts["too_long"]:
        total = sum(len(k) for k in pipe.kept.values())
        n = pipe.counts["too_long"]
        raise UserError(
            f"data.max_length {data.max_length} truncates {n:,} of {total:,} examples ({n / max(total, 1):.1%}); "
            "raise data.max_length, or set data.long=drop to drop them"
        )

    split_of = _assign(pipe, data)
    splits = _write_splits(pipe, split_of, work, out, data)
    for name in ("rejects.jsonl",):
        os.replace(work / name, out / name)
    report = report_mod.build(cfg, pipe, splits, rejects, renderer is not None)
    report_mod.write(report, out, pipe.lengths, data.max_length)
    _write_manifest(cfg, pipe, splits, out, renderer)
    shutil.rmtree(work, ignore_errors=True)
    if strict and sum(rejects.by_stage.values()):
        n = sum(rejects.by_stage.values())
        raise UserError(f"--strict: {n:,} records were rejected; see {out / 'rejects.jsonl'} and {out / 'report.md'}")
    return Prepared(out, report, report["warnings"])


def _assign(pipe: _Pipeline, data: Any) -> list[str]:
    """Split names for the spooled train records (user-provided val/test are kept as they are)."""
    from tuneloop.data.split import assign_splits

    kept = pipe.kept["train"]
    wanted = {"train": data.split.train}
    for name in ("val", "test"):
        if not getattr(data, name):
            wanted[name] = getattr(data.split, name)
    if len(wanted) == 1:
        return ["train"] * len(kept)
    labels = [k.label for k in kept]
    return assign_splits([k.group for k in kept], labels, wanted, data.seed)


def _write_splits(pipe: _Pipeline, split_of: list[str], work: Path, out: Path, data: Any) -> dict[str, dict]:
    files = {name: (work / f"split-{name}.jsonl").open("w", encoding="utf-8") for name in SPLITS}
    stats = {name: {"rows": 0, "tokens": 0, "trained_tokens": 0, "mixed_in": 0} for name in SPLITS}

    def put(name: str, line: str, kept: _Kept) -> None:
        files[name].write(line)
        stats[name]["rows"] += 1
        stats[name]["tokens"] += kept.tokens
        stats[name]["trained_tokens"] += kept.trained
        pipe.lengths[name].append(kept.tokens)

    if (work / "train.jsonl").exists():
        with (work / "train.jsonl").open(encoding="utf-8") as f:
            for line, name, kept in zip(f, split_of, pipe.kept["train"], strict=True):
                put(name, line, kept)
    for name in ("val", "test"):
        if (work / f"{name}.jsonl").exists():
            with (work / f"{name}.jsonl").open(encoding="utf-8") as f:
                for line, kept in zip(f, pipe.kept[name], strict=True):
                    put(name, line, kept)
    # Replay data joins train only, sampled after the split so it can never reach val or test.
    mix_kept = pipe.kept["mix"]
    if mix_kept:
        want = round(sum(m.fraction for m in data.mix) * stats["train"]["rows"])
        chosen = set(random.Random(data.seed).sample(range(len(mix_kept)), min(want, len(mix_kept))))
        with (work / "mix.jsonl").open(encoding="utf-8") as f:
            for i, (line, kept) in enumerate(zip(f, mix_kept, strict=True)):
                if i in chosen:
                    put("train", line, kept)
                    stats["train"]["mixed_in"] += 1
        stats["train"]["mix_available"] = len(mix_kept)
    for name, f in files.items():
        f.close()
        os.replace(work / f"split-{name}.jsonl", out / f"{name}.jsonl")
        stats[name]["file"] = f"{name}.jsonl"
        stats[name]["sha256"] = _sha256(out / f"{name}.jsonl")
    return stats


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _write_manifest(cfg: ProjectConfig, pipe: _Pipeline, splits: dict, out: Path, renderer: Any) -> None:
    """Content hashes of inputs, outputs and settings, so a run can cite the exact data it used."""
    sources = []
    for origin in ("train", "val", "test"):
        for file in list_files([cfg.path(p) for p in getattr(cfg.data, origin)]):
            sources.append({"path": _display_name(file, cfg.root), "origin": origin, "sha256": _sha256(file)})
    for mix in cfg.data.mix:
        for file in list_files([cfg.path(mix.path)]):
            sources.append({"path": _display_name(file, cfg.root), "origin": "mix", "sha256": _sha256(file)})
    settings = json.dumps({"data": cfg.data.model_dump(mode="json"), "model": cfg.model.name}, sort_keys=True)
    template = getattr(renderer.tokenizer, "chat_template", None) if renderer else None
    manifest = {
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "tuneloop": __version__,
        "settings_sha256": hashlib.sha256(settings.encode()).hexdigest(),
        "model": cfg.model.name,
        "chat_template_sha256": hashlib.sha256(template.encode()).hexdigest() if template else None,
        "tokenized": renderer is not None,
        "sources": sources,
        "splits": {name: {k: v for k, v in s.items()} for name, s in splits.items()},
        "rejects": {"file": "rejects.jsonl", "rows": sum(pipe.rejects.by_stage.values())},
    }
    tmp = out / "manifest.json.tmp"
    tmp.write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, out / "manifest.json")
