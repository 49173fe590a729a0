"""One place for what tuneloop prints: results to stdout, notes and warnings to stderr."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from rich.console import Console

# Piped output has no terminal width; 80 columns would truncate tables, so allow more.
_WIDTH = None if sys.stdout.isatty() else 140
out = Console(highlight=False, soft_wrap=True, width=_WIDTH)
err = Console(stderr=True, highlight=False, soft_wrap=True)


def note(message: str) -> None:
    """A progress note on stderr, so stdout stays clean for piping."""
    err.print(f"[dim]{message}[/dim]", markup=True) if err.is_terminal else err.print(message, markup=False)


def warn(message: str) -> None:
    """A warning on stderr; warnings are counted and never silent."""
    err.print(f"[yellow]warning:[/yellow] {message}", markup=True) if err.is_terminal else err.print(
        f"warning: {message}", markup=False
    )


@contextmanager
def progress_bar(label: str, total: int) -> Iterator[Callable[[int], None]]:
    """A bar with an ETA on a terminal; a start and an end note when piped. Yields `advance(n)`."""
    import time

    if not err.is_terminal:
        start = time.perf_counter()
        note(f"{label} ...")
        yield lambda n: None
        note(f"{label}: done in {time.perf_counter() - start:.1f}s")
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn, TimeRemainingColumn

    columns = (f"[dim]{label}[/dim]", BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), TimeRemainingColumn())
    with Progress(*columns, console=err, transient=False) as progress:
        task = progress.add_task(label, total=total)
        yield lambda n: progress.advance(task, n)
