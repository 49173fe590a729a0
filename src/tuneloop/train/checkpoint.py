"""Crash-safe checkpoints: write to a staging folder, fsync, rename into place, then mark complete.

A checkpoint folder is `checkpoints/checkpoint-<step>/`. It counts only when it holds the
`COMPLETE` marker, which is written last; a crash at any earlier point leaves a folder without it
(or only the staging folder), which resume ignores and the next save removes. So the previous
complete checkpoint is always usable.
"""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
from pathlib import Path

from tuneloop.errors import UserError

PREFIX = "checkpoint-"
MARKER = "COMPLETE"
STAGING = ".staging"


def fsync_tree(folder: Path) -> None:
    """Flush every file in `folder` (and the folder entries) to disk."""
    for root, _dirs, files in os.walk(folder):
        for name in files:
            with open(os.path.join(root, name), "rb") as f:
                os.fsync(f.fileno())
        fsync_dir(Path(root))


def fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def staging_dir(checkpoints: Path) -> Path:
    """The folder a checkpoint is written into before it is renamed into place (emptied first)."""
    staging = checkpoints / STAGING
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    return staging


def commit(staged: Path, checkpoints: Path, step: int, info: dict) -> Path:
    """Make a fully written staged checkpoint the real one: fsync, rename, mark complete."""
    final = checkpoints / f"{PREFIX}{step}"
    fsync_tree(staged)
    if final.exists():  # an earlier, interrupted save of the same step
        shutil.rmtree(final)
    os.replace(staged, final)
    if staged.parent.name == STAGING:
        staged.parent.rmdir()
    fsync_dir(checkpoints)
    _write_marker(final, step, info)
    return final


def mark_complete(folder: Path, step: int, info: dict) -> Path:
    """Flush a checkpoint written in place (not staged), then mark it complete. A crash before the marker
    leaves an unmarked folder, which resume ignores and `remove_incomplete` deletes."""
    fsync_tree(folder)
    _write_marker(folder, step, info)
    return folder


def _write_marker(folder: Path, step: int, info: dict) -> None:
    marker = folder / MARKER
    tmp = folder / (MARKER + ".tmp")
    tmp.write_text(json.dumps({"step": step, **info}, indent=2) + "\n")
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, marker)
    fsync_dir(folder)


def info(folder: Path) -> dict:
    """A complete checkpoint's marker: its step and what its writer recorded."""
    return json.loads((folder / MARKER).read_text())


def step_of(folder: Path) -> int:
    match = re.fullmatch(rf"{PREFIX}(\d+)", folder.name)
    return int(match.group(1)) if match else -1


def complete(checkpoints: Path) -> list[Path]:
    """Complete checkpoints, oldest first."""
    if not checkpoints.is_dir():
        return []
    found = [p for p in checkpoints.iterdir() if step_of(p) >= 0 and (p / MARKER).is_file()]
    return sorted(found, key=step_of)


def latest(checkpoints: Path) -> Path | None:
    done = complete(checkpoints)
    return done[-1] if done else None


def remove_incomplete(checkpoints: Path) -> list[Path]:
    """Delete checkpoint folders a crash left without their marker; return what was removed."""
    if not checkpoints.is_dir():
        return []
    removed = []
    for p in checkpoints.iterdir():
        if p.name == STAGING or (step_of(p) >= 0 and not (p / MARKER).is_file()):
            shutil.rmtree(p, ignore_errors=True)
            removed.append(p)
    return removed


def rotate(checkpoints: Path, keep_last: int, best: Path | None) -> list[Path]:
    """Keep the newest `keep_last` complete checkpoints plus the best one; return what was deleted."""
    done = complete(checkpoints)
    keep = set(done[-keep_last:])
    if best is not None:
        keep.add(best)
    deleted = [p for p in done if p not in keep]
    for p in deleted:
        shutil.rmtree(p)
    return deleted


def check_disk(folder: Path, needed_bytes: int) -> None:
    """Fail before training when a checkpoint would not fit on the disk."""
    folder.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(folder).free
    # Two checkpoints coexist while one is staged and the previous one is still kept.
    if free < 2 * needed_bytes:
        raise UserError(
            f"not enough disk for checkpoints in {folder}: each needs about {_gb(needed_bytes)}, and two must fit "
            f"while one is written; {_gb(free)} is free. Free space, or set output.dir to a larger disk"
        )


def _gb(n: int) -> str:
    return f"{n / 1e9:.2f} GB" if n >= 1e8 else f"{n / 1e6:.1f} MB"


def is_disk_full(error: BaseException) -> bool:
    """True for an out-of-space or over-quota error (also when a library wrapped it)."""
    while error is not None:
        if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        error = error.__cause__ or error.__context__
    return False


def disk_full_message(checkpoints: Path, what: str, needed_bytes: int) -> str:
    """After an out-of-space error: drop the partial write, then say how much to free and what is still usable."""
    shutil.rmtree(checkpoints / STAGING, ignore_errors=True)  # the partial files hold space the user needs
    last = latest(checkpoints)
    if last is not None:
        needed_bytes = max(needed_bytes, tree_bytes(last))  # a real checkpoint beats the estimate
    free = shutil.disk_usage(checkpoints).free
    short = max(needed_bytes - free, 0) + needed_bytes // 10  # a 10% margin: the next save is not smaller
    kept = (
        f"The previous checkpoint {last} is complete and untouched: `tuneloop train --resume` continues from it"
        if last is not None
        else "No earlier checkpoint exists, so the run must start again"
    )
    return (
        f"the disk filled up while writing {what} in {checkpoints} ({_gb(free)} free; a checkpoint needs about "
        f"{_gb(needed_bytes)}). Free at least {_gb(short)} on that disk (old runs under output.dir, other "
        f"checkpoints), lower train.keep_last, or set output.dir to a larger disk. {kept}"
    )


def tree_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
