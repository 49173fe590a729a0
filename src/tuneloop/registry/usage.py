"""The test-set usage log: `<output.dir>/test-usage.jsonl`, one line per look at a test set, append-only.

It is the record; `registry.sqlite` only indexes it (store.py rebuilds its `test_uses` table from the
log whenever they disagree), so the reuse count and the private-test once-only guard survive a deleted
or corrupted registry. Each entry is written and fsynced before the evaluation it records starts, under
a lock held from the check to the write, so two evaluations cannot both see a private set as unused.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TypedDict

from tuneloop import console
from tuneloop.errors import UserError

USAGE_LOG = "test-usage.jsonl"
IMPORTED_SUFFIX = ".imported"  # what a registry-only tuneloop renamed the log to after importing it


class Use(TypedDict):
    time: str
    test_sha256: str
    runs: list[str]
    private: bool


@contextmanager
def locked(folder: Path) -> Iterator[list[Use]]:
    """The log's entries, read under an exclusive lock that is held until the block ends."""
    from filelock import FileLock

    folder.mkdir(parents=True, exist_ok=True)
    with FileLock(str(folder / (USAGE_LOG + ".lock")), timeout=60):
        yield read(folder)


def read(folder: Path) -> list[Use]:
    """Every entry of the log (and of a log an older tuneloop renamed to `.imported`), oldest first."""
    log, imported = folder / USAGE_LOG, folder / (USAGE_LOG + IMPORTED_SUFFIX)
    entries = _parse(log) if log.is_file() else []
    if imported.is_file():
        entries += [e for e in _parse(imported) if e not in entries]
    return sorted(entries, key=lambda e: e["time"])  # stable: same-second entries keep their order


def append(folder: Path, use: Use) -> None:
    """Add one entry durably: written, flushed and fsynced (the folder too when the log is new)."""
    path = folder / USAGE_LOG
    new = not path.exists()
    if not new and (data := path.read_bytes()) and not data.endswith(b"\n"):
        # An entry cut short by a crash during its write: that evaluation never started. Drop the
        # fragment rather than glue the next entry onto it.
        os.truncate(path, data.rfind(b"\n") + 1)
    with path.open("a", encoding="utf-8") as f:
        f.write(json.dumps(use) + "\n")
        f.flush()
        os.fsync(f.fileno())
    if new:
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _parse(path: Path) -> list[Use]:
    text = path.read_text(encoding="utf-8")
    lines = text.split("\n")
    entries: list[Use] = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            e = json.loads(line)
            entries.append(
                Use(
                    time=e["time"],
                    test_sha256=e["test_sha256"],
                    runs=list(e.get("runs") or []),
                    private=bool(e.get("private")),
                )
            )
        except (json.JSONDecodeError, KeyError, TypeError) as err:
            if number == len(lines):  # no newline after it: a write cut short by a crash, before its fsync
                console.warn(f"{path}:{number}: an unfinished last entry (a crash while writing it) is ignored")
                continue
            raise UserError(
                f"{path}:{number}: not a test-usage entry ({err}). This file is the record of every look at "
                'a test set: repair that line (each line is {"time", "test_sha256", "runs", "private"})'
            ) from None
    return entries
