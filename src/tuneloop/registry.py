"""The run registry: a SQLite index of the run folders under output.dir, for listing and comparing runs.

The run folders stay the source of truth; `<output.dir>/registry.sqlite` only indexes them, so it
can be deleted and rebuilt with `sync()` at any time. The one exception is the test-set usage log
(`record_test_use`): every look at a test set is recorded here and nowhere else.

Reads top to bottom: the database (schema, version, connection) → reading one run folder into a
row → indexing (`record`, `sync`) → queries (`list_runs`, `get_run`) → test-set usage → row-level
data hashes (`write_row_hashes`) → `compare` (config, data and metric differences, with
`rescore_outputs` for a paired B-vs-A bootstrap) → the MLflow mirror (`mirror_mlflow`).
"""

from __future__ import annotations

import gzip
import hashlib
import json
import math
import os
import re
import sqlite3
import time
from collections import Counter
from collections.abc import Collection, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import xxhash
import yaml

from tuneloop import console
from tuneloop.config import RESOLVED_FILENAME, ProjectConfig
from tuneloop.errors import UserError

REGISTRY_FILE = "registry.sqlite"
SCHEMA_VERSION = 1
ROWS_FILE = "data-rows.txt.gz"
LOOP_FILE = "loop.json"
LEGACY_USAGE_LOG = "test-usage.jsonl"  # where `tuneloop eval` logged test-set use before the registry
SPLITS = ("train", "val", "test")
# A folder without summary.json whose files changed this recently is taken to be still training.
RUNNING_WINDOW_SECONDS = 30 * 60
# The files a row is built from; a change in any of them (mtime or size) re-indexes the folder.
WATCHED = (
    RESOLVED_FILENAME,
    "summary.json",
    "data-manifest.json",
    "environment.json",
    "metrics.jsonl",
    LOOP_FILE,
    ROWS_FILE,
    "eval/metrics.json",
    "eval/outputs.jsonl",
)

# --------------------------------------------------------------------------- 1. the database

_SCHEMA = """
CREATE TABLE schema_version (version INTEGER NOT NULL);
CREATE TABLE runs (
    id TEXT PRIMARY KEY,            -- the run folder's name
    path TEXT NOT NULL,
    created TEXT,
    status TEXT NOT NULL,           -- running | stopped | completed | early_stopped | failed | incomplete
    kind TEXT NOT NULL,             -- train | loop | sweep-trial | curve-point
    grp TEXT,                       -- sweep or curve id ("group" is an SQL keyword)
    method TEXT,
    config TEXT NOT NULL,           -- config.resolved.yaml as written
    config_sha256 TEXT NOT NULL,
    data TEXT,                      -- JSON {split: {sha256, rows}} from data-manifest.json
    data_sha256 TEXT,               -- one hash over the split hashes
    has_row_hashes INTEGER NOT NULL,
    environment TEXT,               -- JSON environment.json
    summary TEXT,                   -- JSON summary.json
    steps INTEGER,
    best_metric TEXT,
    best_value REAL,
    best_step INTEGER,
    tokens_per_second REAL,
    final_eval_loss REAL,
    loop TEXT,                      -- JSON loop.json
    extra TEXT NOT NULL,            -- JSON of record(**extra), kept across re-indexing
    eval_test_sha256 TEXT,
    eval_system TEXT,               -- the run's name inside its eval report and outputs.jsonl
    eval_examples INTEGER,
    eval_created TEXT,
    eval_has_outputs INTEGER NOT NULL,
    signature TEXT NOT NULL,        -- (file, mtime, size) of WATCHED when indexed
    indexed TEXT NOT NULL,
    missing INTEGER NOT NULL        -- 1 once the folder is gone
);
CREATE TABLE evaluations (
    run_id TEXT NOT NULL,
    metric TEXT NOT NULL,
    baseline REAL,
    value REAL,
    delta REAL,
    ci_low REAL,
    ci_high REAL,
    verdict TEXT,
    higher_is_better INTEGER,
    PRIMARY KEY (run_id, metric)
);
CREATE TABLE test_uses (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    time TEXT NOT NULL,
    sha256 TEXT NOT NULL,
    runs TEXT NOT NULL,             -- JSON list of run names
    private INTEGER NOT NULL
);
CREATE INDEX test_uses_sha256 ON test_uses (sha256);
"""

# version -> statements that upgrade a database from version - 1. Empty while there is one version.
_MIGRATIONS: dict[int, list[str]] = {}


def registry_path(cfg: ProjectConfig) -> Path:
    """Where the project's registry lives: `<output.dir>/registry.sqlite`."""
    return cfg.path(cfg.output.dir) / REGISTRY_FILE


@contextmanager
def _connect(cfg: ProjectConfig) -> Iterator[sqlite3.Connection]:
    """An open, up-to-date registry (created on first use); legacy test-usage logs are imported."""
    path = registry_path(cfg)
    path.parent.mkdir(parents=True, exist_ok=True)
    # Autocommit mode: transactions are explicit (`_transaction`), so a check-then-write is atomic.
    conn = sqlite3.connect(path, timeout=30, isolation_level=None)
    conn.row_factory = sqlite3.Row
    try:
        # WAL lets `runs list` read while a training process records its run.
        conn.execute("PRAGMA journal_mode=WAL")
        _migrate(conn, path)
        _import_legacy_usage(conn, path.parent)
        yield conn
    finally:
        conn.close()


@contextmanager
def _transaction(conn: sqlite3.Connection) -> Iterator[None]:
    # IMMEDIATE takes the write lock up front: two evaluations cannot both see "never used".
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


def _migrate(conn: sqlite3.Connection, path: Path) -> None:
    with _transaction(conn):
        exists = conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'schema_version'").fetchone()
        if not exists:
            # One statement at a time: executescript() would commit in the middle of the transaction.
            for statement in filter(str.strip, _SCHEMA.split(";")):
                conn.execute(statement)
            conn.execute("INSERT INTO schema_version VALUES (?)", (SCHEMA_VERSION,))
            return
        version = conn.execute("SELECT version FROM schema_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise UserError(
                f"{path} was written by a newer tuneloop (schema {version}, this one knows {SCHEMA_VERSION}); "
                "upgrade tuneloop, or delete the file and run `tuneloop runs sync` to rebuild the index"
            )
        for target in range(version + 1, SCHEMA_VERSION + 1):
            for statement in _MIGRATIONS[target]:
                conn.execute(statement)
            conn.execute("UPDATE schema_version SET version = ?", (target,))


# --------------------------------------------------------------------------- 2. one run folder → one row


def _read_json(path: Path) -> Any:
    """A JSON file's content, or None when it is absent or unreadable (said once, never fatal)."""
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        console.warn(f"registry: cannot read {path} ({e}); indexing the run without it")
        return None


def _signature(run_dir: Path) -> str:
    parts = []
    for name in WATCHED:
        try:
            st = (run_dir / name).stat()
        except OSError:
            continue
        parts.append([name, st.st_mtime_ns, st.st_size])
    return json.dumps(parts)


def _status(run_dir: Path, summary: dict | None) -> str:
    if summary and summary.get("status"):
        return str(summary["status"])
    # No summary yet: either training right now, or a run that died before writing one.
    newest = max((p.stat().st_mtime for p in [run_dir, *run_dir.iterdir()] if p.exists()), default=0.0)
    return "running" if time.time() - newest < RUNNING_WINDOW_SECONDS else "incomplete"


def _final_eval_loss(run_dir: Path) -> float | None:
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        return None
    last = None
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut short by a crash
        if isinstance(row, dict) and isinstance(row.get("eval_loss"), (int, float)):
            last = float(row["eval_loss"])
    return last


def _data(manifest: dict | None) -> tuple[dict | None, str | None]:
    """({split: {sha256, rows}}, one hash over the splits) from a run's data-manifest.json."""
    splits = (manifest or {}).get("splits") or {}
    data = {name: {"sha256": s.get("sha256"), "rows": s.get("rows")} for name, s in splits.items()}
    if not data:
        return None, None
    joined = "\n".join(f"{name}:{data[name]['sha256']}" for name in sorted(data))
    return data, hashlib.sha256(joined.encode()).hexdigest()


def _evaluation(run_dir: Path, run_id: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """(eval columns, per-metric rows) from the run's eval/metrics.json, when it was evaluated."""
    report = _read_json(run_dir / "eval" / "metrics.json")
    empty = {"eval_test_sha256": None, "eval_system": None, "eval_examples": None, "eval_created": None}
    if not isinstance(report, dict):
        return empty, []
    comparisons = report.get("comparisons") or {}
    # The report names the run by its folder name at evaluation time; a renamed folder has one entry.
    system = run_id if run_id in comparisons else (next(iter(comparisons)) if len(comparisons) == 1 else None)
    if system is None:
        return empty, []
    test = report.get("test") or {}
    columns = {
        "eval_test_sha256": test.get("sha256"),
        "eval_system": system,
        "eval_examples": test.get("examples"),
        "eval_created": report.get("created"),
    }
    rows = [
        {
            "metric": metric,
            "baseline": c.get("baseline"),
            "value": c.get("candidate"),
            "delta": c.get("delta"),
            "ci_low": c.get("ci_low"),
            "ci_high": c.get("ci_high"),
            "verdict": c.get("verdict"),
            "higher_is_better": c.get("higher_is_better"),
        }
        for metric, c in comparisons[system].items()
    ]
    return columns, rows


def _kind_and_group(loop: dict | None, extra: dict[str, Any]) -> tuple[str, str | None]:
    # An explicit record(..., kind=...) wins over loop.json; a plain `tuneloop train` run has neither.
    loop = loop if isinstance(loop, dict) else {}
    kind = extra.get("kind") or loop.get("kind") or "train"
    group = extra.get("group") or loop.get("group")
    return str(kind), str(group) if group is not None else None


def _read_folder(run_dir: Path, extra: dict[str, Any]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Everything the registry keeps about one run folder: (runs row, evaluation rows)."""
    config_text = (run_dir / RESOLVED_FILENAME).read_text(encoding="utf-8")
    try:
        resolved = yaml.safe_load(config_text) or {}
    except yaml.YAMLError:
        resolved = {}
    summary = _read_json(run_dir / "summary.json")
    summary = summary if isinstance(summary, dict) else None
    environment = _read_json(run_dir / "environment.json")
    loop = _read_json(run_dir / LOOP_FILE)
    data, data_sha = _data(_read_json(run_dir / "data-manifest.json"))
    best = (summary or {}).get("best") or {}
    session = (summary or {}).get("this_session") or {}
    kind, group = _kind_and_group(loop, extra)
    created = (environment or {}).get("started") if isinstance(environment, dict) else None
    if not created:
        mtime = (run_dir / RESOLVED_FILENAME).stat().st_mtime
        created = datetime.fromtimestamp(mtime, timezone.utc).isoformat(timespec="seconds")
    eval_columns, evaluations = _evaluation(run_dir, run_dir.name)
    row = {
        "id": run_dir.name,
        "path": str(run_dir),
        "created": created,
        "status": _status(run_dir, summary),
        "kind": kind,
        "grp": group,
        "method": ((resolved.get("method") or {}).get("name") if isinstance(resolved, dict) else None),
        "config": config_text,
        "config_sha256": hashlib.sha256(config_text.encode()).hexdigest(),
        "data": json.dumps(data) if data else None,
        "data_sha256": data_sha,
        "has_row_hashes": int((run_dir / ROWS_FILE).is_file()),
        "environment": json.dumps(environment) if environment is not None else None,
        "summary": json.dumps(summary) if summary is not None else None,
        "steps": (summary or {}).get("steps"),
        "best_metric": best.get("metric"),
        "best_value": best.get("value"),
        "best_step": best.get("step"),
        "tokens_per_second": session.get("trained_tokens_per_second"),
        "final_eval_loss": _final_eval_loss(run_dir),
        "loop": json.dumps(loop) if loop is not None else None,
        "extra": json.dumps(extra, default=str),
        **eval_columns,
        "eval_has_outputs": int((run_dir / "eval" / "outputs.jsonl").is_file()),
        "signature": _signature(run_dir),
        "indexed": _now(),
        "missing": 0,
    }
    return row, evaluations


# --------------------------------------------------------------------------- 3. indexing


def _is_run_folder(path: Path) -> bool:
    return (path / RESOLVED_FILENAME).is_file()


def _upsert(conn: sqlite3.Connection, run_dir: Path, extra: dict[str, Any]) -> dict[str, Any]:
    # One transaction from reading the kept extra to writing it back: concurrent records merge, never lose.
    with _transaction(conn):
        old = conn.execute("SELECT extra FROM runs WHERE id = ?", (run_dir.name,)).fetchone()
        merged = {**(json.loads(old["extra"]) if old else {}), **extra}
        row, evaluations = _read_folder(run_dir, merged)
        conn.execute(
            f"INSERT OR REPLACE INTO runs ({', '.join(row)}) VALUES ({', '.join('?' * len(row))})", [*row.values()]
        )
        conn.execute("DELETE FROM evaluations WHERE run_id = ?", (row["id"],))
        for e in evaluations:
            conn.execute(
                f"INSERT INTO evaluations (run_id, {', '.join(e)}) VALUES (?, {', '.join('?' * len(e))})",
                [row["id"], *e.values()],
            )
    return row


def record(cfg: ProjectConfig, run_dir: Path, **extra: Any) -> dict[str, Any]:
    """Index one run folder now and return its entry (as `get_run` does).

    Call it after training and after evaluation. `extra` is kept with the run across re-indexing;
    `kind=` and `group=` in it override the folder's loop.json. A folder outside output.dir can be
    recorded too; its entry is then kept up to date by `sync` like the others.
    """
    run_dir = Path(run_dir).resolve()
    if not _is_run_folder(run_dir):
        raise UserError(
            f"{run_dir} is not a run folder (no {RESOLVED_FILENAME}); give a folder made by `tuneloop train`"
        )
    with _connect(cfg) as conn:
        _upsert(conn, run_dir, extra)
        return _entry(conn, conn.execute("SELECT * FROM runs WHERE id = ?", (run_dir.name,)).fetchone())


def sync(cfg: ProjectConfig) -> int:
    """Bring the index up to date with the run folders; return how many runs were (re)indexed.

    Scans output.dir for run folders (those with config.resolved.yaml), re-reads any whose files
    changed since they were indexed (by mtime and size), and marks runs whose folder is gone as
    missing. Runs without summary.json are re-checked every time: 'running' may become 'incomplete'.
    """
    base = cfg.path(cfg.output.dir)
    found = {p.resolve() for p in base.iterdir() if p.is_dir() and _is_run_folder(p)} if base.is_dir() else set()
    changed = 0
    with _connect(cfg) as conn:
        known = {r["id"]: r for r in conn.execute("SELECT id, path, signature, status, missing FROM runs")}
        # Folders recorded from elsewhere stay indexed while they exist (a same-named one in output.dir wins).
        names = {p.name for p in found}
        found |= {Path(r["path"]) for r in known.values() if r["id"] not in names and _is_run_folder(Path(r["path"]))}
        for run_dir in sorted(found):
            old = known.get(run_dir.name)
            stale = (
                old is None
                or old["path"] != str(run_dir)
                or old["missing"]
                or old["signature"] != _signature(run_dir)
                or old["status"] == "running"
            )
            if stale:
                _upsert(conn, run_dir, {})
                changed += 1
        present = {p.name for p in found}
        gone = [i for i, r in known.items() if i not in present and not r["missing"]]
        with _transaction(conn):
            conn.executemany("UPDATE runs SET missing = 1 WHERE id = ?", [(i,) for i in gone])
    return changed


# --------------------------------------------------------------------------- 4. queries


def _loads(text: str | None) -> Any:
    return json.loads(text) if text else None


def _entry(conn: sqlite3.Connection, row: sqlite3.Row, with_config: bool = True) -> dict[str, Any]:
    """One run as a plain dict, JSON columns decoded and grouped."""
    r = dict(row)
    evaluations = {
        e["metric"]: {k: v for k, v in dict(e).items() if k not in ("run_id", "metric")}
        for e in conn.execute("SELECT * FROM evaluations WHERE run_id = ? ORDER BY rowid", (r["id"],))
    }
    summary = _loads(r["summary"]) or {}
    entry = {
        "id": r["id"],
        "path": r["path"],
        "created": r["created"],
        "status": r["status"],
        "missing": bool(r["missing"]),
        "kind": r["kind"],
        "group": r["grp"],
        "method": r["method"],
        "config_sha256": r["config_sha256"],
        "data": _loads(r["data"]),
        "data_sha256": r["data_sha256"],
        "row_hashes": bool(r["has_row_hashes"]),
        "environment": _loads(r["environment"]),
        "training": {
            "steps": r["steps"],
            "max_steps": summary.get("max_steps"),
            "best": {"metric": r["best_metric"], "value": r["best_value"], "step": r["best_step"]},
            "tokens_per_second": r["tokens_per_second"],
            "seconds": (summary.get("this_session") or {}).get("seconds"),
            "final_eval_loss": r["final_eval_loss"],
        },
        "evaluation": {
            "test_sha256": r["eval_test_sha256"],
            "examples": r["eval_examples"],
            "created": r["eval_created"],
            "system": r["eval_system"],
            "has_outputs": bool(r["eval_has_outputs"]),
            "metrics": evaluations,
        }
        if r["eval_system"]
        else None,
        "loop": _loads(r["loop"]),
        "extra": _loads(r["extra"]) or {},
        "indexed": r["indexed"],
    }
    if with_config:
        entry["config"] = r["config"]
    return entry


def list_runs(cfg: ProjectConfig, *, refresh: bool = True) -> list[dict[str, Any]]:
    """Every indexed run, oldest first, without its config text (see `get_run`); syncs first unless told not to."""
    if refresh:
        sync(cfg)
    with _connect(cfg) as conn:
        rows = conn.execute("SELECT * FROM runs ORDER BY created, id").fetchall()
        return [_entry(conn, r, with_config=False) for r in rows]


def get_run(cfg: ProjectConfig, ref: str | Path, *, refresh: bool = True) -> dict[str, Any]:
    """One run, everything known about it. `ref` is a run id, a unique id prefix, 'latest' or a run folder path."""
    if refresh:
        sync(cfg)
    ref_text = str(ref)
    with _connect(cfg) as conn:
        row = conn.execute("SELECT * FROM runs WHERE id = ?", (ref_text,)).fetchone()
        if row is None and ref_text == "latest":
            row = conn.execute("SELECT * FROM runs WHERE missing = 0 ORDER BY created DESC, id DESC").fetchone()
            if row is None:
                raise UserError(f"no runs in {cfg.path(cfg.output.dir)} yet; start one with `tuneloop train`")
        if row is not None:
            return _entry(conn, row)
    if Path(ref_text).is_dir():
        return record(cfg, Path(ref_text))
    with _connect(cfg) as conn:
        query = "SELECT * FROM runs WHERE substr(id, 1, ?) = ? ORDER BY id"  # exact, case-sensitive prefix
        rows = conn.execute(query, (len(ref_text), ref_text)).fetchall()
        if len(rows) == 1:
            return _entry(conn, rows[0])
    if not rows:
        raise UserError(f"no run {ref_text!r} in the registry; `tuneloop runs list` shows the run ids")
    names = ", ".join(r["id"] for r in rows[:5]) + (", ..." if len(rows) > 5 else "")
    raise UserError(f"{ref_text!r} matches {len(rows)} runs ({names}); give more of the id")


# --------------------------------------------------------------------------- 5. test-set usage


def record_test_use(cfg: ProjectConfig, sha256: str, runs: list[str], private: bool) -> int:
    """Record one evaluation of the test set with this hash; return how many times it has now been evaluated.

    A private test set is evaluated once only: a second use raises UserError before anything is recorded.
    """
    with _connect(cfg) as conn, _transaction(conn):
        same = conn.execute("SELECT time, runs FROM test_uses WHERE sha256 = ? ORDER BY id", (sha256,)).fetchall()
        if private and same:
            raise UserError(
                f"the private test set was already evaluated on {same[0]['time']} (runs "
                f"{', '.join(json.loads(same[0]['runs']))}); it is evaluated once only, so its verdict stays "
                "unbiased. Register a new private set to look again"
            )
        conn.execute(
            "INSERT INTO test_uses (time, sha256, runs, private) VALUES (?, ?, ?, ?)",
            (_now(), sha256, json.dumps(runs), int(private)),
        )
    return len(same) + 1


def test_uses(cfg: ProjectConfig, sha256: str) -> list[dict[str, Any]]:
    """Every recorded evaluation of the test set with this hash, oldest first:
    [{"time", "test_sha256", "runs", "private"}]."""
    with _connect(cfg) as conn:
        rows = conn.execute("SELECT * FROM test_uses WHERE sha256 = ? ORDER BY id", (sha256,)).fetchall()
    return [
        {"time": r["time"], "test_sha256": r["sha256"], "runs": json.loads(r["runs"]), "private": bool(r["private"])}
        for r in rows
    ]


def _import_legacy_usage(conn: sqlite3.Connection, folder: Path) -> None:
    """Move an old `test-usage.jsonl` into the registry once, then rename it to `.imported`.

    Entries already present are skipped, so a crash between the import and the rename imports nothing twice.
    """
    log = folder / LEGACY_USAGE_LOG
    if not log.is_file():
        return
    entries = []
    for number, line in enumerate(log.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            e = json.loads(line)
            entries.append((e["time"], e["test_sha256"], json.dumps(e.get("runs") or []), int(bool(e.get("private")))))
        except (json.JSONDecodeError, KeyError, TypeError) as err:
            raise UserError(f"{log}:{number}: not a test-usage entry ({err}); fix or delete that line") from None
    with _transaction(conn):
        for entry in entries:
            seen = conn.execute(
                "SELECT 1 FROM test_uses WHERE time = ? AND sha256 = ? AND runs = ? AND private = ?", entry
            ).fetchone()
            if not seen:
                conn.execute("INSERT INTO test_uses (time, sha256, runs, private) VALUES (?, ?, ?, ?)", entry)
    imported = log.with_name(log.name + ".imported")
    if imported.exists():  # a second legacy log (an older tuneloop wrote one again): keep both records
        with imported.open("a", encoding="utf-8") as f:
            f.write(log.read_text(encoding="utf-8"))
        log.unlink()
    else:
        os.replace(log, imported)
    console.note(f"registry: imported {len(entries)} test-set uses from {log} (kept as {imported.name})")


# --------------------------------------------------------------------------- 6. row-level data hashes


def _row_hash(line: str) -> str:
    """xxhash64 of a prepared row's canonical JSON, without its `id`.

    The id is the row's `file:line`: leaving it out means a row that only moved in its source file
    (a line inserted above it) is still the same row.
    """
    row = json.loads(line)
    row.pop("id", None)
    canonical = json.dumps(row, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return xxhash.xxh64_hexdigest(canonical.encode("utf-8"))


def write_row_hashes(run_dir: Path, prepared_dir: Path, train_ids: Collection[str] | None = None) -> Path:
    """Write `data-rows.txt.gz` into a run folder: one `split<TAB>hash` line per prepared row.

    `train_ids` limits the train rows to those the run trained on (a `train.examples` subset).
    `compare` uses the file to count the rows two runs' data have in common. Returns its path.
    """
    run_dir, prepared_dir = Path(run_dir), Path(prepared_dir)
    if not prepared_dir.is_dir():
        raise UserError(f"no prepared data in {prepared_dir}; run `tuneloop data prepare` first")
    out, tmp = run_dir / ROWS_FILE, run_dir / (ROWS_FILE + ".tmp")
    # mtime=0: the same data gives the same bytes, so the file's own hash means something.
    with gzip.GzipFile(tmp, "wb", mtime=0) as raw:
        for split in SPLITS:
            path = prepared_dir / f"{split}.jsonl"
            if not path.is_file():
                continue
            with path.open(encoding="utf-8") as f:
                for line in f:
                    if not line.strip():
                        continue
                    if split == "train" and train_ids is not None and json.loads(line)["id"] not in train_ids:
                        continue
                    raw.write(f"{split}\t{_row_hash(line)}\n".encode())
    os.replace(tmp, out)
    return out


def read_row_hashes(run_dir: Path) -> dict[str, Counter[str]] | None:
    """{split: Counter of row hashes} from a run's data-rows.txt.gz, or None when it has none."""
    path = Path(run_dir) / ROWS_FILE
    if not path.is_file():
        return None
    rows: dict[str, Counter[str]] = {}
    with gzip.open(path, "rt", encoding="utf-8") as f:
        for line in f:
            split, _, digest = line.rstrip("\n").partition("\t")
            rows.setdefault(split, Counter())[digest] += 1
    return rows


# --------------------------------------------------------------------------- 7. compare A and B


def compare(cfg: ProjectConfig, a: str | Path, b: str | Path) -> dict[str, Any]:
    """What differs between runs A and B: config, data and metrics.

    Returns {"a", "b": the runs in brief, "config": [{key, a, b}], "data": per-split row or hash
    differences, "metrics": each run's own evaluation against the base model, plus a paired
    bootstrap of B - A when both were evaluated on the same test set and kept their answers}.
    """
    run_a = get_run(cfg, a)
    run_b = get_run(cfg, b, refresh=False)
    return {
        "a": _brief(run_a),
        "b": _brief(run_b),
        "config": config_diff(run_a["config"], run_b["config"]),
        "data": data_diff(run_a, run_b),
        "metrics": metric_diff(cfg, run_a, run_b),
    }


def _brief(run: dict[str, Any]) -> dict[str, Any]:
    keys = ("id", "path", "status", "missing", "kind", "group", "created", "method", "config_sha256", "data_sha256")
    return {k: run[k] for k in keys}


def flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    """A nested mapping as {dotted.key: value}; lists are values, not expanded."""
    if not isinstance(value, dict) or (not value and prefix):
        return {prefix: value}
    flat: dict[str, Any] = {}
    for key, child in value.items():
        flat.update(flatten(child, f"{prefix}.{key}" if prefix else str(key)))
    return flat


def config_diff(a_yaml: str, b_yaml: str) -> list[dict[str, Any]]:
    """[{key, a, b}] for every dotted config key whose value differs (a key one side lacks is None there)."""
    a, b = flatten(yaml.safe_load(a_yaml) or {}), flatten(yaml.safe_load(b_yaml) or {})
    keys = list(a) + [k for k in b if k not in a]
    return [{"key": k, "a": a.get(k), "b": b.get(k)} for k in keys if a.get(k) != b.get(k) or (k in a) != (k in b)]


def data_diff(run_a: dict[str, Any], run_b: dict[str, Any]) -> dict[str, Any]:
    """Per split: rows kept, added and removed from A to B (from data-rows.txt.gz), or, when either
    run has no row hashes, whether the split file is the same (from the manifests' sha256)."""
    rows_a = None if run_a["missing"] else read_row_hashes(Path(run_a["path"]))
    rows_b = None if run_b["missing"] else read_row_hashes(Path(run_b["path"]))
    if rows_a is not None and rows_b is not None:
        names = [s for s in SPLITS if s in rows_a or s in rows_b]
        names += sorted((set(rows_a) | set(rows_b)) - set(names))
        splits = {}
        for name in names:
            ca, cb = rows_a.get(name, Counter()), rows_b.get(name, Counter())
            splits[name] = {
                "rows_a": sum(ca.values()),
                "rows_b": sum(cb.values()),
                "kept": sum((ca & cb).values()),
                "added": sum((cb - ca).values()),
                "removed": sum((ca - cb).values()),
            }
        same = all(s["added"] == 0 and s["removed"] == 0 for s in splits.values())
        return {"by": "rows", "same": same, "splits": splits}
    data_a, data_b = run_a["data"] or {}, run_b["data"] or {}
    names = [s for s in SPLITS if s in data_a or s in data_b]
    names += sorted((set(data_a) | set(data_b)) - set(names))
    splits = {}
    for name in names:
        sa, sb = data_a.get(name, {}), data_b.get(name, {})
        known = sa.get("sha256") is not None and sb.get("sha256") is not None
        splits[name] = {
            "same": sa.get("sha256") == sb.get("sha256") if known else None,
            "sha256_a": sa.get("sha256"),
            "sha256_b": sb.get("sha256"),
            "rows_a": sa.get("rows"),
            "rows_b": sb.get("rows"),
        }
    same = run_a["data_sha256"] == run_b["data_sha256"] if run_a["data_sha256"] and run_b["data_sha256"] else None
    return {"by": "manifest", "same": same, "splits": splits}


def metric_diff(cfg: ProjectConfig, run_a: dict[str, Any], run_b: dict[str, Any]) -> dict[str, Any]:
    """Each run's own evaluation against the base, and a direct paired comparison of B with A where possible."""
    result: dict[str, Any] = {
        "a": (run_a["evaluation"] or {}).get("metrics"),
        "b": (run_b["evaluation"] or {}).get("metrics"),
        "paired": None,
        "notes": [],
    }
    notes = result["notes"]
    ev_a, ev_b = run_a["evaluation"], run_b["evaluation"]
    for run, ev in ((run_a, ev_a), (run_b, ev_b)):
        if ev is None:
            notes.append(
                f"{run['id']} has not been evaluated (eval/metrics.json); run `tuneloop eval --run {run['id']}`"
            )
    if ev_a is None or ev_b is None:
        return result
    if ev_a["test_sha256"] != ev_b["test_sha256"]:
        notes.append("the runs were evaluated on different test sets, so they cannot be compared directly")
        return result
    paths = [Path(r["path"]) / "eval" / "outputs.jsonl" for r in (run_a, run_b)]
    if not all(p.is_file() for p in paths):
        notes.append(
            "no direct comparison: eval/outputs.jsonl is missing in "
            + " and ".join(r["id"] for r, p in zip((run_a, run_b), paths, strict=True) if not p.is_file())
        )
        return result
    result["paired"] = paired_comparison(cfg, paths[0], ev_a["system"], paths[1], ev_b["system"], notes)
    return result


def paired_comparison(
    cfg: ProjectConfig, outputs_a: Path, system_a: str, outputs_b: Path, system_b: str, notes: list[str]
) -> dict[str, Any] | None:
    """B - A for each task metric, by paired bootstrap over the test examples both answered.

    Appends to `notes` what could not be compared and why; returns None when no example is shared.
    """
    from tuneloop.evaluate.compare import bootstrap_indices
    from tuneloop.evaluate.compare import compare as compare_scores

    ids_b = {r["id"] for r in _read_outputs(outputs_b)}
    ids_a = [r["id"] for r in _read_outputs(outputs_a)]
    common = [i for i in ids_a if i in ids_b]
    if not common:
        notes.append("no direct comparison: the two evaluations share no test example")
        return None
    if len(common) < max(len(ids_a), len(ids_b)):
        notes.append(f"compared directly on the {len(common)} test examples both evaluations answered")
    scored_a = rescore_outputs(cfg, outputs_a, system_a, common)
    scored_b = rescore_outputs(cfg, outputs_b, system_b, common)
    notes.extend(n for n in dict.fromkeys(scored_a.notes + scored_b.notes) if n not in notes)
    indices = bootstrap_indices(len(common), cfg.eval.bootstrap, cfg.eval.seed)
    metrics = {
        name: compare_scores(scored_a.scores[name], scored_b.scores[name], indices, cfg.eval.confidence).to_json()
        for name in cfg.task.metrics
        if name in scored_a.scores and name in scored_b.scores
    }
    return {
        "examples": len(common),
        "confidence": cfg.eval.confidence,
        "bootstrap": cfg.eval.bootstrap,
        "metrics": metrics,
    }


@dataclass
class Rescored:
    """One system's task metrics recomputed from an eval's outputs.jsonl."""

    ids: list[str]
    scores: dict[str, Any] = field(default_factory=dict)  # metric -> MetricScores or MeanScores (resamplable)
    notes: list[str] = field(default_factory=list)  # metrics not rescored, or rescored differently, and why


def _read_outputs(path: Path) -> list[dict[str, Any]]:
    try:
        return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    except (OSError, json.JSONDecodeError) as e:
        raise UserError(f"cannot read {path}: {e}; re-run `tuneloop eval` for that run") from None


def rescore_outputs(cfg: ProjectConfig, outputs_path: Path, system: str, ids: list[str] | None = None) -> Rescored:
    """Score one system's answers in an eval's outputs.jsonl with the config's task.metrics.

    Text metrics are recomputed from the prompts, references and answers (so corpus metrics like
    BLEU resample correctly). Metrics that need the model (perplexity) cannot be: their stored
    per-example scores are used when present, else they are left out with a note. `ids` restricts
    and orders the examples, so two systems can be paired example by example.
    """
    import numpy as np

    from tuneloop.evaluate.compare import MeanScores
    from tuneloop.evaluate.metrics import METRIC_INFO, compute, needs_reference

    rows = _read_outputs(Path(outputs_path))
    if ids is not None:
        by_id = {r["id"]: r for r in rows}
        absent = [i for i in ids if i not in by_id]
        if absent:
            raise UserError(f"{outputs_path} has no answers for test examples {', '.join(absent[:5])}")
        rows = [by_id[i] for i in ids]
    if not rows:
        raise UserError(f"{outputs_path} has no answers; re-run `tuneloop eval` for that run")
    if any(system not in r for r in rows):
        systems = [k for k, v in rows[0].items() if isinstance(v, dict)]
        raise UserError(f"{outputs_path} has no answers from {system!r}; it has {', '.join(systems)}")
    answers = [r[system] for r in rows]
    references = [r.get("reference") or "" for r in rows]
    has_refs = any(references)
    schema = _json_schema(cfg) if "json_schema" in cfg.task.metrics else None
    result = Rescored([str(r["id"]) for r in rows])
    for name in cfg.task.metrics:
        stored = [(a.get("scores") or {}).get(name) for a in answers]
        stored_scores = np.asarray(stored, dtype=np.float64) if all(s is not None for s in stored) else None
        info = METRIC_INFO.get(name)
        higher = info.higher_is_better if info else True
        if info is not None and info.model_based:
            if stored_scores is None:
                result.notes.append(
                    f"{name}: not compared: it needs the model's log-likelihoods, and the outputs.jsonl "
                    f"of {system} has no per-example {name} scores"
                )
                continue
            # Stored per-example perplexity scores are mean NLLs; outputs.jsonl lacks the token counts
            # the report weights them by, so the rescored value is exp(mean NLL) over examples.
            result.scores[name] = MeanScores(name, stored_scores, higher, exp_mean=name == "perplexity")
            if name == "perplexity":
                result.notes.append(
                    "perplexity: compared as exp(mean per-example NLL), since outputs.jsonl has no token "
                    "counts; the eval reports weight examples by their tokens"
                )
            continue
        try:
            result.scores[name] = compute(
                name,
                ids=result.ids,
                prompts=[r.get("prompt") or "" for r in rows],
                predictions=[a.get("output") or "" for a in answers],
                references=references if has_refs or not needs_reference(name) else None,
                labels=cfg.data.labels or None,
                schema=schema,
                search_path=cfg.root,
            )
        except UserError as e:
            if stored_scores is None:
                result.notes.append(f"{name}: not compared: {e}")
                continue
            result.scores[name] = MeanScores(name, stored_scores, higher)
            result.notes.append(f"{name}: rescoring failed ({e}); compared the mean of the stored per-example scores")
    return result


def _json_schema(cfg: ProjectConfig) -> dict | None:
    if not cfg.eval.json_schema:
        return None
    path = cfg.path(cfg.eval.json_schema)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise UserError(f"cannot read eval.json_schema {path}: {e}") from None


# --------------------------------------------------------------------------- 8. the MLflow mirror

_MLFLOW_STATUS = {"completed": "FINISHED", "early_stopped": "FINISHED", "stopped": "KILLED", "failed": "FAILED"}
_MLFLOW_LIMITS = {"params": 100, "metrics": 1000, "tags": 100}  # entities per log_batch call
_MLFLOW_PARAM_LENGTH = 6000


def mirror_mlflow(cfg: ProjectConfig, uri: str, run_ids: list[str] | None = None) -> dict[str, str]:
    """Mirror indexed runs (all, or `run_ids`) to the MLflow tracking server at `uri`; return {run id: MLflow run id}.

    The experiment is named after the project folder. Params are the flattened resolved config,
    metrics the training log (per step) and the evaluation against the base, tags the status,
    kind, group and data hash. Mirroring again updates each run (found by its `tuneloop.run_id`
    tag) with what is new, never duplicating it.
    """
    client, experiment_id = _mlflow_experiment(cfg, uri)
    from mlflow.exceptions import MlflowException

    sync(cfg)
    with _connect(cfg) as conn:
        runs = [_entry(conn, r) for r in conn.execute("SELECT * FROM runs ORDER BY created, id")]
    if run_ids is not None:
        unknown = sorted(set(run_ids) - {r["id"] for r in runs})
        if unknown:
            raise UserError(f"no run {', '.join(unknown)} in the registry; `tuneloop runs list` shows the run ids")
        runs = [r for r in runs if r["id"] in set(run_ids)]
    try:
        existing = _mlflow_mirrored(client, experiment_id)
        return {run["id"]: _mirror_run(client, experiment_id, run, existing.get(run["id"])) for run in runs}
    except MlflowException as e:
        raise UserError(f"MLflow at {uri}: {e.message}") from None


def _mlflow_experiment(cfg: ProjectConfig, uri: str) -> tuple[Any, str]:
    try:
        from mlflow.exceptions import MlflowException
        from mlflow.tracking import MlflowClient
    except ImportError:
        raise UserError("mirroring to MLflow needs its client: pip install mlflow-skinny") from None
    name = cfg.root.name
    try:
        client = MlflowClient(tracking_uri=uri)
        experiment = client.get_experiment_by_name(name)
        if experiment is None:
            return client, client.create_experiment(name)
        if experiment.lifecycle_stage == "deleted":
            client.restore_experiment(experiment.experiment_id)
        return client, experiment.experiment_id
    except MlflowException as e:
        raise UserError(f"MLflow at {uri}: {e.message}") from None


def _mlflow_mirrored(client: Any, experiment_id: str) -> dict[str, Any]:
    """{tuneloop run id: MLflow run} for the runs already mirrored into the experiment."""
    found, token = {}, None
    while True:
        page = client.search_runs([experiment_id], max_results=1000, page_token=token)
        for run in page:
            if "tuneloop.run_id" in run.data.tags:
                found[run.data.tags["tuneloop.run_id"]] = run
        token = page.token
        if not token:
            return found


def _mirror_run(client: Any, experiment_id: str, run: dict[str, Any], existing: Any) -> str:
    from mlflow.entities import Metric, Param, RunTag

    tags = {
        "tuneloop.run_id": run["id"],
        "tuneloop.status": "missing" if run["missing"] else run["status"],
        "tuneloop.kind": run["kind"],
        "tuneloop.group": run["group"] or "",
        "tuneloop.data_sha256": run["data_sha256"] or "",
        "tuneloop.config_sha256": run["config_sha256"],
        "tuneloop.path": run["path"],
    }
    if existing is None:
        created = client.create_run(experiment_id, start_time=_ms(run["created"]), tags=tags, run_name=run["id"])
        mlflow_id, old_params, old_metrics, old_status = created.info.run_id, {}, set(), None
    else:
        mlflow_id, old_params, old_status = existing.info.run_id, existing.data.params, existing.info.status
        old_metrics = set(existing.data.metrics)

    params = {_mlflow_key(k): _param_value(v) for k, v in flatten(yaml.safe_load(run["config"]) or {}).items()}
    changed = sorted(k for k, v in params.items() if k in old_params and old_params[k] != v)
    if changed:
        console.warn(f"MLflow params cannot change; run {run['id']} keeps its mirrored values of {', '.join(changed)}")
    new_params = [Param(k, v) for k, v in params.items() if k not in old_params]

    metrics = _mlflow_metrics(run)
    seen: set[tuple[str, int, float]] = set()
    for key in {m[0] for m in metrics} & old_metrics:
        seen |= {(key, m.step, m.value) for m in client.get_metric_history(mlflow_id, key)}
    new_metrics = [Metric(k, v, ts, step) for k, v, ts, step in metrics if (k, step, v) not in seen]

    batches = {
        "params": new_params,
        "metrics": new_metrics,
        "tags": [RunTag(k, v) for k, v in tags.items()],
    }
    for kind, items in batches.items():
        size = _MLFLOW_LIMITS[kind]
        for start in range(0, len(items), size):
            client.log_batch(mlflow_id, **{kind: items[start : start + size]})
    status = _MLFLOW_STATUS.get(run["status"], "RUNNING" if run["status"] == "running" else "FAILED")
    if status != old_status and status != "RUNNING":
        client.set_terminated(mlflow_id, status=status, end_time=_end_time(run))
    return mlflow_id


def _mlflow_metrics(run: dict[str, Any]) -> list[tuple[str, float, int, int]]:
    """(key, value, timestamp ms, step): the training log per step, then the evaluation against the base."""
    out = []
    path = Path(run["path"]) / "metrics.jsonl"
    if not run["missing"] and path.is_file():
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue
            step, stamp = int(row.get("step", 0)), int(float(row.get("time", 0)) * 1000) or _ms(None)
            for key, value in row.items():
                if key not in ("step", "time") and _finite(value):
                    out.append((_mlflow_key(key), float(value), stamp, step))
    evaluation = run["evaluation"]
    if evaluation:
        step, stamp = run["training"]["steps"] or 0, _ms(evaluation["created"])
        for metric, e in evaluation["metrics"].items():
            for field_name in ("baseline", "value", "delta", "ci_low", "ci_high"):
                if _finite(e[field_name]):
                    out.append((_mlflow_key(f"eval.{metric}.{field_name}"), float(e[field_name]), stamp, step))
    return out


def _finite(value: Any) -> bool:
    # NaN never equals itself, so a NaN point would be re-sent on every mirror: skip non-finite values.
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _mlflow_key(key: str) -> str:
    # MLflow allows letters, digits, _ - . / and space in names; user metrics are 'module:function'.
    return re.sub(r"[^\w\-./ ]", "_", key)[:250]


def _param_value(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value)
    return text[:_MLFLOW_PARAM_LENGTH]


def _end_time(run: dict[str, Any]) -> int | None:
    summary = Path(run["path"]) / "summary.json"
    return int(summary.stat().st_mtime * 1000) if not run["missing"] and summary.is_file() else None


def _ms(iso: str | None) -> int:
    if iso:
        try:
            return int(datetime.fromisoformat(iso).timestamp() * 1000)
        except ValueError:
            pass
    return int(time.time() * 1000)


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")
