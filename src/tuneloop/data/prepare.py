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
from collections import Counter, defaultdict, deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
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
    parse_json_line,
    read_rows,
    reject_from,
    to_example,
)
from tuneloop.errors import UserError
from tuneloop.files import sha256_file

SPLITS = ("train", "val", "test")
CHUNK = 1024  # records per worker task and per tokenizer call; smaller inputs never start the pool
SYSTEMIC_AFTER = 50  # the first this many rendered records all failing for one systemic reason stop the stage


@dataclass(slots=True)
class _Row:
    raw: RawRow
    fmt: str
    origin: str  # which input it came from: train, val, test or mix
    group: str = ""


@dataclass(slots=True)
class _Kept:
    """What stays in memory per accepted record."""

    group: str
    key: int  # hash of the normalised content: decides the split (see data/split.py)
    label: str | None
    tokens: int
    trained: int


class _SystemicReject(Exception):
    """Every record rendered so far failed for one reason no record can fix (see RowError.systemic)."""

    def __init__(self, reason: str, rows: int) -> None:
        super().__init__(reason)
        self.reason, self.rows = reason, rows


@dataclass
class Prepared:
    """The outcome of `prepare()`: where it wrote, and the report it wrote."""

    out_dir: Path
    report: dict[str, Any]
    warnings: list[str] = field(default_factory=list)


@dataclass(slots=True)
class _Worked:
    """What the per-row stages found; computed in a worker process for large inputs.

    Only what the ordered stages need travels back: the example itself comes as its JSONL line,
    ready for the spool, because pickling the object cost the reading process more than the line.
    """

    error: str | None = None  # why the record is invalid
    cleaned: bool = False
    empty: str | None = None
    pii: Counter | None = None
    fingerprint: Any = None
    measured: tuple[int, int] | RowError | None = None  # (tokens, trained tokens), or why it can't render
    line: str = ""  # the cleaned, redacted example as a JSONL line
    label: str | None = None

    def __reduce__(self) -> tuple:
        # Pickled as a plain tuple of fields: half the cost of the default for slotted dataclasses,
        # paid once per record in a worker and again in the reading process.
        return (_Worked, tuple(getattr(self, name) for name in self.__slots__))


class _RowWork:
    """Validate → clean → redact → fingerprint → measure for a chunk of records: pure, so it can run in any process."""

    def __init__(self, data: Any, renderer: Any = None, root: Path | None = None) -> None:
        self.data = data
        self.labels = frozenset(data.labels) if data.labels else None
        self.renderer = renderer
        self.cleaner = make_cleaner(data.clean.model_dump())
        self.pii = None
        self.detect_only = data.pii.mode == "detect"
        if data.pii.mode != "off":
            from tuneloop.data.pii import PiiScanner

            self.pii = PiiScanner.from_config(data.pii, root)
        dd = data.dedup
        self.deduper = Deduper(exact=dd.exact, near=dd.near != "off", threshold=dd.threshold)

    def __call__(self, value: Any, parsed: bool, fmt: str, example_id: str) -> tuple[_Worked, Example | None]:
        """Validate, clean and apply the PII patterns to one record (`value` is JSON text when not `parsed`).

        NER, the fingerprint, the JSONL line and the tokenizer follow in `chunk`, after NER's batch.
        """
        if not parsed:
            row = parse_json_line(RawRow("", 0, value, parsed=False))
            if row.error:
                return _Worked(error=row.error), None
            value = row.value
        try:
            example = to_example(value, fmt, example_id, self.labels)
        except RowError as e:
            return _Worked(error=str(e)), None
        cleaned = bool(self.cleaner and example.map_text(self.cleaner))
        empty = _empty_field(example) if cleaned else None
        if empty is not None:
            return _Worked(None, cleaned, empty), example
        found: Counter[str] = Counter()
        if self.pii is not None:  # the patterns; names and places go in batches, in `chunk`

            def redact(text: str) -> str:
                new, counts = self.pii.redact(text, ner=False)
                found.update(counts)
                return text if self.detect_only else new

            example.map_text(redact)
        return _Worked(None, cleaned, None, found or None, label=example.label), example

    def chunk(self, items: list[tuple[Any, bool, str, str]]) -> list[_Worked]:
        """All per-row stages for a chunk of (value, parsed, format, id); NER and the tokenizer run in batches."""
        results = [self(*item) for item in items]
        alive = [(w, example) for w, example in results if w.error is None and w.empty is None]
        if self.pii is not None and self.pii.ner is not None:
            self._names_and_places(alive)
        for w, example in alive:
            w.fingerprint = self.deduper.fingerprint(example.dedup_text())
            w.line = json.dumps(example.to_json(), ensure_ascii=False) + "\n"
        for (w, _), measured in zip(alive, self.measure([example for _, example in alive]), strict=True):
            w.measured = measured
        return [w for w, _ in results]

    def _names_and_places(self, alive: list[tuple[_Worked, Example]]) -> None:
        """Run the NER backend over every text of the chunk at once (spaCy is far faster on batches)."""
        texts: list[str] = []
        for _, example in alive:
            example.map_text(lambda text: (texts.append(text), text)[1])
        redacted = iter(self.pii.ner.redact_many(texts))
        for w, example in alive:
            found: Counter[str] = Counter()

            def put_back(text: str, found: Counter[str] = found) -> str:
                new, counts = next(redacted)
                found.update(counts)
                return text if self.detect_only else new

            example.map_text(put_back)
            if found:
                w.pii = found + (w.pii or Counter())

    def measure(self, examples: list[Example]) -> list[tuple[int, int] | RowError]:
        """(tokens, trained tokens) per example with the real tokenizer and template."""
        if self.renderer is None:
            return [(0, 1)] * len(examples)
        limit, truncate = self.data.max_length, self.data.long == "truncate"
        out: list[tuple[int, int] | RowError] = [(0, 0)] * len(examples)
        chat = [i for i, e in enumerate(examples) if e.kind != "classification"]
        for i, rendered in zip(chat, self.renderer.render_many([examples[i] for i in chat]), strict=True):
            if isinstance(rendered, RowError):
                out[i] = rendered
                continue
            weights = rendered.weights[:limit] if truncate else rendered.weights
            out[i] = (len(rendered.input_ids), sum(1 for w in weights if w > 0))
        classify = [i for i, e in enumerate(examples) if e.kind == "classification"]
        if classify:
            encoded = self.renderer.tokenizer([examples[i].text for i in classify]).input_ids
            for i, ids in zip(classify, encoded, strict=True):
                out[i] = (len(ids), 1)
        return out


_WORKER: _RowWork | None = None


def _init_worker(row_work: _RowWork) -> None:
    global _WORKER
    _WORKER = row_work  # inherited through fork, tokenizer included


def _work_chunk(items: list[tuple[Any, bool, str, str]]) -> list[_Worked]:
    assert _WORKER is not None
    return _WORKER.chunk(items)


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
    def __init__(
        self, cfg: ProjectConfig, renderer: Any, rejects: _Rejects, work: Path, workers: int, fix_leakage: bool
    ) -> None:
        self.cfg = cfg
        self.fix_leakage = fix_leakage
        self.data = cfg.data
        self.rejects = rejects
        self.work = work
        self.counts: Counter[str] = Counter()
        self.files: dict[str, dict[str, Any]] = {}
        self.row_work = _RowWork(self.data, renderer, cfg.root)
        self.deduper = self.row_work.deduper
        self.workers = workers
        self._pool: Any = None
        self.pii_counts: Counter[str] = Counter()
        self.clusters: dict[str, list[dict[str, Any]]] = defaultdict(list)
        self.origin_of_holdout: dict[str, str] = {}  # ids kept from user-provided val/test
        self.leaks: list[dict[str, Any]] = []
        self.kept: dict[str, list[_Kept]] = defaultdict(list)
        self.lengths: dict[str, list[int]] = defaultdict(list)
        self._spool: dict[str, Any] = {}
        self.rendered = 0  # records that reached the renderer
        self.systemic_run = 0  # how many of those, from the first, failed for `systemic_reason`
        self.systemic_reason: str | None = None
        self.on_rows: Callable[[int], None] = lambda n: None  # progress display hook

    # -- reading and validation ------------------------------------------------------------

    def read(self, paths: list[str], origin: str) -> Iterator[_Row]:
        for file in list_files([self.cfg.path(p) for p in paths]):
            name = _display_name(file, self.cfg.root)
            # JSONL lines are decoded in the workers; only the detection sample is decoded here.
            rows = read_rows(file, name, parse=False)
            head = [parse_json_line(row) for row in itertools.islice(rows, DETECT_SAMPLE)]
            fmt = self.data.format if self.data.format != "auto" else detect_format(head, name)
            stats = self.files.setdefault(name, {"format": fmt, "origin": origin, "rows": 0, "rejected": 0})
            for row in itertools.chain(head, rows):
                stats["rows"] += 1
                self.counts[f"in_{origin}"] += 1
                if row.error:
                    stats["rejected"] += 1
                    self.rejects.add(row, row.error, "validate")
                    continue
                yield _Row(row, fmt, origin)

    # -- per-record stages -------------------------------------------------------------------

    def process(self, rows: Iterator[_Row]) -> None:
        """Run the per-row stages over `rows`; large inputs fan out to worker processes in order."""
        pending: deque = deque()
        for chunk in _chunked(rows, CHUNK):
            if self._pool is None and (self.workers <= 1 or len(chunk) < CHUNK):
                self._finish(chunk, self.row_work.chunk([_item(r) for r in chunk]))
                continue
            pool = self._start_pool()
            pending.append((chunk, pool.submit(_work_chunk, [_item(r) for r in chunk])))
            # A bounded window keeps both cores busy without reading the whole input ahead.
            if len(pending) > 2 * self.workers:
                done, future = pending.popleft()
                self._finish(done, future.result())
        while pending:
            done, future = pending.popleft()
            self._finish(done, future.result())

    def _start_pool(self) -> Any:
        if self._pool is None:
            import multiprocessing
            from concurrent.futures import ProcessPoolExecutor

            # Workers tokenize; say so up front, or the Rust tokenizer warns at every fork.
            os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
            self._pool = ProcessPoolExecutor(
                self.workers,
                mp_context=multiprocessing.get_context("fork"),
                initializer=_init_worker,
                initargs=(self.row_work,),
            )
        return self._pool

    def close_pool(self) -> None:
        if self._pool is not None:
            self._pool.shutdown()
            self._pool = None

    def _finish(self, chunk: list[_Row], worked: list[_Worked]) -> None:
        self.on_rows(len(chunk))
        for row, w in zip(chunk, worked, strict=True):
            if w.error is not None:
                self.files[row.raw.source]["rejected"] += 1
                self.rejects.add(row.raw, w.error, "validate")
                continue
            row.group = f"{row.raw.source}:{row.raw.line}"  # the example id; its own group until a match
            if w.cleaned:
                self.counts["cleaned"] += 1
            if w.empty:
                self.rejects.add(row.raw, f"{w.empty} is empty after cleaning", "clean")
                continue
            if w.pii:
                self.counts["pii_rows"] += 1
                self.pii_counts.update(w.pii)
            if self._dedup(row, w.fingerprint):
                self._measure(row, w)

    def _dedup(self, row: _Row, fingerprint: Any) -> bool:
        example_id = row.group
        match = self.deduper.find(fingerprint)
        if match is None:
            self.deduper.remember(example_id, fingerprint)
            if row.origin in ("val", "test"):
                self.origin_of_holdout[example_id] = row.origin
            return True
        holdout = self.origin_of_holdout.get(match.of)
        if holdout and row.origin in ("train", "mix"):
            self.leaks.append({"id": example_id, "kind": match.kind, "of": match.of, "split": holdout})
            self.counts[f"leak_{match.kind}"] += 1
            if self.fix_leakage or row.origin == "mix":
                self.rejects.add(row.raw, f"{match.kind} duplicate of {holdout} record {match.of} (leakage)", "leakage")
                return False
            return True
        if match.kind == "near" and self.data.dedup.near == "group":
            row.group = match.of
            self.counts["near_grouped"] += 1
            self.clusters[match.of].append({"id": example_id, "similarity": round(match.similarity, 3), "kept": True})
            return True
        self.counts[f"dup_{match.kind}"] += 1
        self.clusters[match.of].append({"id": example_id, "similarity": round(match.similarity, 3), "kept": False})
        similarity = "" if match.kind == "exact" else f" (similarity {match.similarity:.2f})"
        self.rejects.add(row.raw, f"{match.kind} duplicate of {match.of}{similarity}", "dedup")
        return False

    def _measure(self, row: _Row, w: _Worked) -> None:
        """Drop what cannot render, trains nothing, or is too long (by policy); keep the rest."""
        result = w.measured
        self._watch_systemic(result if isinstance(result, RowError) else None)
        if isinstance(result, RowError):
            self.rejects.add(row.raw, str(result), "render")
            if self.systemic_run >= SYSTEMIC_AFTER:
                raise _SystemicReject(str(result), self.systemic_run)
            return
        tokens, trained = result
        if trained == 0:
            self.rejects.add(row.raw, "no trained tokens: the assistant part is empty or has weight 0", "length")
            return
        limit = self.data.max_length
        if tokens > limit:
            self.counts["too_long"] += 1
            if self.data.long == "drop":
                self.rejects.add(row.raw, f"{tokens} tokens > data.max_length {limit}", "length")
                return
            self.counts["truncated"] += 1
        self._keep(row, w, tokens, trained)

    def _watch_systemic(self, error: RowError | None) -> None:
        """Count the leading records that all failed for one systemic reason (the model's fault, not theirs)."""
        self.rendered += 1
        leading = self.systemic_run == self.rendered - 1
        if leading and error is not None and error.systemic and self.systemic_reason in (None, str(error)):
            self.systemic_run += 1
            self.systemic_reason = str(error)

    def check_systemic(self) -> None:
        """At the end of the input: fewer than SYSTEMIC_AFTER records, and every one failed for one systemic reason."""
        if self.rendered and self.systemic_run == self.rendered:
            raise _SystemicReject(self.systemic_reason or "", self.systemic_run)

    def _keep(self, row: _Row, w: _Worked, tokens: int, trained: int) -> None:
        spool = self._spool.get(row.origin)
        if spool is None:
            spool = self._spool[row.origin] = (self.work / f"{row.origin}.jsonl").open("w", encoding="utf-8")
        spool.write(w.line)
        self.kept[row.origin].append(_Kept(row.group, w.fingerprint.key, w.label, tokens, trained))

    def close_spools(self) -> None:
        for f in self._spool.values():
            f.close()


def _item(row: _Row) -> tuple[Any, bool, str, str]:
    raw = row.raw
    return (raw.value if raw.parsed else raw.raw), raw.parsed, row.fmt, f"{raw.source}:{raw.line}"


def _chunked(rows: Iterator[_Row], size: int) -> Iterator[list[_Row]]:
    while chunk := list(itertools.islice(rows, size)):
        yield chunk


def _empty_field(example: Example) -> str | None:
    for i, m in enumerate(example.messages, 1):
        if not m["content"].strip():
            return f"message {i} ({m['role']})"
    for name in ("text", "chosen", "rejected", "completion"):
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
    workers: int | None = None,
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
            from tuneloop.data.chat_templates import project_tokenizer

            tokenizer = project_tokenizer(cfg)
        try:
            renderer = Renderer(tokenizer, lengths_only=True, need_eos=cfg.task.type != "classification")
        except RowError as e:  # the tokenizer cannot render any example (no EOS token)
            raise UserError(f"model {cfg.model.name}: {e}; no record can be prepared for it") from None

    rejects = _Rejects(work / "rejects.jsonl")
    workers = workers if workers is not None else min(os.cpu_count() or 1, 4)
    try:
        pipe = _Pipeline(cfg, renderer, rejects, work, workers, fix_leakage)
    except BaseException:  # e.g. a missing NER model: leave no half-made work folder behind
        rejects.close()
        shutil.rmtree(work, ignore_errors=True)
        raise
    stopped: _SystemicReject | None = None
    try:
        with _progress() as progress:
            # Held-out inputs go first, so a train record that copies one is caught as leakage.
            for origin in ("test", "val", "train"):
                paths = getattr(data, origin)
                if paths:
                    pipe.on_rows = progress(f"{origin} records")
                    pipe.process(pipe.read(paths, origin))
            for mix in data.mix:
                pipe.on_rows = progress("replay mix records")
                pipe.process(pipe.read([mix.path], "mix"))
            pipe.check_systemic()
    except _SystemicReject as e:
        stopped = e
    finally:
        pipe.close_pool()
        pipe.close_spools()
        rejects.close()
    if stopped is not None:
        os.replace(work / "rejects.jsonl", out / "rejects.jsonl")  # what was read so far, to look at
        shutil.rmtree(work, ignore_errors=True)
        raise UserError(
            f"{stopped.reason}. The first {stopped.rows:,} records that reached the template all failed for this "
            f"reason, which no record can fix, so data prepare stopped; their rejects are in {out / 'rejects.jsonl'}"
        )
    pipe.deduper.release()  # the split below needs memory per record too; don't hold both at once

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
    if not splits["train"]["rows"]:
        shutil.rmtree(work, ignore_errors=True)
        raise UserError(_empty_train(report, out))
    _write_manifest(cfg, pipe, splits, out, renderer)
    shutil.rmtree(work, ignore_errors=True)
    if strict and sum(rejects.by_stage.values()):
        n = sum(rejects.by_stage.values())
        raise UserError(f"--strict: {n:,} records were rejected; see {out / 'rejects.jsonl'} and {out / 'report.md'}")
    return Prepared(out, report, report["warnings"])


def _empty_train(report: dict[str, Any], out: Path) -> str:
    """Why nothing is left to train on, with the main reject reasons."""
    reasons = "; ".join(f"{r['count']:,} × {r['stage']}: {r['example']}" for r in report["reject_reasons"][:3])
    because = f" Most common reasons: {reasons}." if reasons else ""
    return (
        f"the train split is empty: {report['rows_in']:,} records read, none left to train on.{because} "
        f"Every removed record is in {out / 'rejects.jsonl'}; see {out / 'report.md'}"
    )


@contextmanager
def _progress() -> Iterator[Callable[[str], Callable[[int], None]]]:
    """A live 'N records, elapsed' line on a terminal (large inputs take minutes); nothing when piped."""
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    from tuneloop import console

    bar = Progress(
        SpinnerColumn(),
        TextColumn("{task.completed:,} {task.description}"),
        TimeElapsedColumn(),
        console=console.err,
        transient=True,
        disable=not console.err.is_terminal,
    )

    def task(description: str) -> Callable[[int], None]:
        handle = bar.add_task(description, total=None)
        return lambda n: bar.advance(handle, n)

    with bar:
        yield task


def _assign(pipe: _Pipeline, data: Any) -> list[str]:
    """Split names for the spooled train records (user-provided val/test are kept as they are).

    The config gives a split its own file provides a share of 0, so only the others are cut from train.
    """
    from tuneloop.data.split import assign_splits

    kept = pipe.kept["train"]
    return assign_splits([k.group for k in kept], [k.key for k in kept], data.split.model_dump(), data.seed)


def _write_splits(pipe: _Pipeline, split_of: list[str], work: Path, out: Path, data: Any) -> dict[str, dict]:
    files = {name: (work / f"split-{name}.jsonl").open("w", encoding="utf-8") for name in SPLITS}
    stats = {name: {"rows": 0, "tokens": 0, "trained_tokens": 0, "mixed_in": 0} for name in SPLITS}

    def put(name: str, line: str, kept: _Kept) -> None:
        files[name].write(line)
        stats[name]["rows"] += 1
        stats[name]["tokens"] += kept.tokens
        stats[name]["trained_tokens"] += kept.trained
        pipe.lengths[name].append(kept.tokens)
        if kept.label is not None:  # classification: each split's label counts (data/labels.py checks them)
            stats[name].setdefault("labels", Counter())[kept.label] += 1

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
        stats[name]["sha256"] = sha256_file(out / f"{name}.jsonl")
    return stats


def input_sources(cfg: ProjectConfig) -> list[dict[str, str]]:
    """Every input file of the data stage with its origin and sha256, in reading order."""
    sources = []
    for origin in ("train", "val", "test"):
        for file in list_files([cfg.path(p) for p in getattr(cfg.data, origin)]):
            sources.append({"path": _display_name(file, cfg.root), "origin": origin, "sha256": sha256_file(file)})
    for mix in cfg.data.mix:
        for file in list_files([cfg.path(mix.path)]):
            sources.append({"path": _display_name(file, cfg.root), "origin": "mix", "sha256": sha256_file(file)})
    return sources


def settings_sha256(cfg: ProjectConfig) -> str:
    """Hash of the settings the data stage depends on: the data section, the model (its tokenizer),
    model.chat_template (the template's text, so an edited Jinja file counts) and the split scheme
    (so data prepared under an older scheme is prepared again, not reused)."""
    from tuneloop.data.chat_templates import configured_jinja
    from tuneloop.data.split import SCHEME

    settings: dict[str, Any] = {
        "data": cfg.data.model_dump(mode="json"),
        "model": cfg.model.name,
        "split_scheme": SCHEME,
    }
    jinja = configured_jinja(cfg)
    if jinja is not None:  # absent when unset, so projects without the setting keep their hash
        settings["chat_template"] = hashlib.sha256(jinja.encode()).hexdigest()
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()


def _write_manifest(cfg: ProjectConfig, pipe: _Pipeline, splits: dict, out: Path, renderer: Any) -> None:
    """Content hashes of inputs, outputs and settings, so a run can cite the exact data it used."""
    from tuneloop.data.split import SCHEME

    template = getattr(renderer.tokenizer, "chat_template", None) if renderer else None
    manifest = {
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "tuneloop": __version__,
        "settings_sha256": settings_sha256(cfg),
        "model": cfg.model.name,
        "chat_template_sha256": hashlib.sha256(template.encode()).hexdigest() if template else None,
        "chat_template_setting": cfg.model.chat_template,
        "tokenized": renderer is not None,
        "split_scheme": SCHEME,
        "sources": input_sources(cfg),
        "splits": {name: {k: v for k, v in s.items()} for name, s in splits.items()},
        "rejects": {"file": "rejects.jsonl", "rows": sum(pipe.rejects.by_stage.values())},
    }
    tmp = out / "manifest.json.tmp"
    tmp.write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, out / "manifest.json")
