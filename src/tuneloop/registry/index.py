"""Indexing run folders (`record`, `sync`) and querying the index (`list_runs`, `get_run`)."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

from tuneloop.config import RESOLVED_FILENAME, ProjectConfig
from tuneloop.errors import UserError
from tuneloop.registry.folder import _read_folder, _signature
from tuneloop.registry.store import _connect, _transaction


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


# --------------------------------------------------------------------------- queries


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
    # A folder relative to here, or to the project (runs/<id>, as the config's own paths are).
    for folder in (Path(ref_text), cfg.path(ref_text)):
        if folder.is_dir():
            return record(cfg, folder)
    with _connect(cfg) as conn:
        query = "SELECT * FROM runs WHERE substr(id, 1, ?) = ? ORDER BY id"  # exact, case-sensitive prefix
        rows = conn.execute(query, (len(ref_text), ref_text)).fetchall()
        if len(rows) == 1:
            return _entry(conn, rows[0])
    if not rows:
        raise UserError(f"no run {ref_text!r} in the registry; `tuneloop runs list` shows the run ids")
    names = ", ".join(r["id"] for r in rows[:5]) + (", ..." if len(rows) > 5 else "")
    raise UserError(f"{ref_text!r} matches {len(rows)} runs ({names}); give more of the id")
