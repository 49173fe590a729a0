"""The registry's SQLite file: schema, version, connection, and its index of the test-set usage log.

`<output.dir>/registry.sqlite` only indexes: the run folders, and `test-usage.jsonl` (usage.py), the
append-only record of every look at a test set. Deleting it loses nothing; the next command rebuilds
the test-set index from the log, and `tuneloop runs sync` re-indexes the run folders.
"""

from __future__ import annotations

import json
import sqlite3
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from tuneloop import console
from tuneloop.config import ProjectConfig
from tuneloop.errors import UserError
from tuneloop.registry import usage

REGISTRY_FILE = "registry.sqlite"
SCHEMA_VERSION = 1
LEGACY_USAGE_LOG = usage.USAGE_LOG  # the same file: it was the record before the registry, and is again

# --------------------------------------------------------------------------- the database

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
    """An open, up-to-date registry (created on first use), its test-set index in step with the usage log."""
    path = registry_path(cfg)
    path.parent.mkdir(parents=True, exist_ok=True)
    # Autocommit mode: transactions are explicit (`_transaction`), so a check-then-write is atomic.
    conn = sqlite3.connect(path, timeout=30, isolation_level=None)
    conn.row_factory = sqlite3.Row
    try:
        # WAL lets `runs list` read while a training process records its run.
        conn.execute("PRAGMA journal_mode=WAL")
        _migrate(conn, path)
        _index_usage(conn, path.parent)
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
                "upgrade tuneloop to read it"
            )
        for target in range(version + 1, SCHEMA_VERSION + 1):
            for statement in _MIGRATIONS[target]:
                conn.execute(statement)
            conn.execute("UPDATE schema_version SET version = ?", (target,))


# --------------------------------------------------------------------------- test-set usage


def record_test_use(cfg: ProjectConfig, sha256: str, runs: list[str], private: bool) -> int:
    """Record one evaluation of the test set with this hash; return how many times it has now been evaluated.

    A private test set is evaluated once only: a second use raises UserError before anything is recorded.
    The entry goes to the usage log first (durably, under its lock), then into this index.
    """
    folder = registry_path(cfg).parent
    with _connect(cfg):
        pass  # indexing moves uses only an older registry knew into the log, before the check below
    with usage.locked(folder) as entries:
        same = [e for e in entries if e["test_sha256"] == sha256]
        if private and same:
            raise UserError(
                f"the private test set was already evaluated on {same[0]['time']} (runs "
                f"{', '.join(same[0]['runs'])}); it is evaluated once only, so its verdict stays "
                f"unbiased (recorded in {folder / usage.USAGE_LOG}). Register a new private set to look again"
            )
        usage.append(folder, usage.Use(time=_now(), test_sha256=sha256, runs=list(runs), private=private))
    with _connect(cfg):
        pass  # the index takes the new entry
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


def _index_usage(conn: sqlite3.Connection, folder: Path) -> None:
    """Make the `test_uses` table mirror the usage log; first copy into the log any use only the table knows
    (recorded by a tuneloop that kept usage in the registry alone), so nothing is lost either way."""
    rows = conn.execute("SELECT time, sha256, runs, private FROM test_uses ORDER BY id").fetchall()
    indexed = [(r["time"], r["sha256"], r["runs"], r["private"]) for r in rows]
    logged = usage.read(folder)
    unlogged = Counter(indexed) - Counter(map(_row, logged))
    if unlogged:
        with usage.locked(folder) as current:
            unlogged = Counter(indexed) - Counter(map(_row, current))
            for time, sha, runs, private in unlogged.elements():
                usage.append(
                    folder, usage.Use(time=time, test_sha256=sha, runs=json.loads(runs), private=bool(private))
                )
        console.note(f"registry: {sum(unlogged.values())} test-set uses copied into {folder / usage.USAGE_LOG}")
        logged = usage.read(folder)
    if list(map(_row, logged)) == indexed:
        return
    with _transaction(conn):
        conn.execute("DELETE FROM test_uses")
        conn.executemany("INSERT INTO test_uses (time, sha256, runs, private) VALUES (?, ?, ?, ?)", map(_row, logged))


def _row(use: usage.Use) -> tuple[str, str, str, int]:
    """A log entry as the table stores it."""
    return use["time"], use["test_sha256"], json.dumps(use["runs"]), int(use["private"])


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")
