"""The server's side of the traffic log (`tuneloop serve --log`): a queue and one writer thread.

A request's handler only puts its record on a queue, which takes microseconds; the writer thread
redacts it (when `data.pii` is on) and inserts it into the traffic store (tuneloop.traffic), so
neither PII scanning nor a slow or locked disk holds up the event loop or the generation worker.
Feedback goes through the same queue, so it is written after the request it refers to.

Nothing here raises into the server: a full queue or a failed write drops the record, counts it
(`dropped`, and /metrics through `on_drop`) and logs a warning.
"""

from __future__ import annotations

import concurrent.futures
import logging
import queue
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

from tuneloop.traffic import Rating, TrafficLog, TrafficRow

log = logging.getLogger("tuneloop.serve")
QUEUE_SIZE = 10_000  # records waiting for the writer; beyond it new ones are dropped (and counted)

FeedbackOutcome = Literal["stored", "unknown", "dropped"]
_STOP = object()


class RequestLog:
    """Queued writes to a TrafficLog from one thread of its own. `close()` writes what is queued, then stops."""

    def __init__(
        self,
        path: Path,
        redactor: Callable[[str], str] | None = None,
        on_drop: Callable[[], None] | None = None,
        queue_size: int = QUEUE_SIZE,
    ) -> None:
        self.path = Path(path)
        self.on_drop = on_drop  # the server points it at its /metrics counter
        self._queue_drops = 0
        self._unreadable = 0  # feedback dropped because the store could not be read to check its id
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=queue_size)
        self.store = TrafficLog.open(self.path, redactor, self._count_drop)
        self._thread = threading.Thread(target=self._run, name="tuneloop-traffic-log", daemon=True)
        self._thread.start()

    @property
    def dropped(self) -> int:
        """Records lost so far: the queue was full, or the store could not write them."""
        return self._queue_drops + self._unreadable + self.store.dropped

    def record(self, row: TrafficRow) -> None:
        """Queue one answered request; never blocks."""
        self._put(("request", row, None))

    def feedback(
        self, response_id: str, rating: Rating | None, correction: str | None, comment: str | None
    ) -> concurrent.futures.Future[FeedbackOutcome]:
        """Queue feedback on a response. The future says whether it was stored, whether no request has
        that id ('unknown': nothing is written), or whether it was dropped."""
        future: concurrent.futures.Future[FeedbackOutcome] = concurrent.futures.Future()
        if not self._put(("feedback", (response_id, rating, correction, comment), future)):
            future.set_result("dropped")
        return future

    def flush(self, timeout: float = 30.0) -> bool:
        """Wait until everything queued so far is written (tests, shutdown). False on timeout."""
        done = threading.Event()
        try:
            self._queue.put(("flush", done, None), timeout=timeout)
        except queue.Full:
            return False
        return done.wait(timeout)

    def close(self) -> None:
        """Write what is queued, then stop the thread and close the file."""
        if self._thread.is_alive():
            self._queue.put(_STOP)
            self._thread.join(60)
        self.store.close()

    def _put(self, item: tuple[str, Any, Any]) -> bool:
        try:
            self._queue.put_nowait(item)
            return True
        except queue.Full:
            self._queue_drops += 1
            if self._queue_drops % 1000 == 1:
                log.warning("the traffic log's queue is full; %d records dropped so far", self._queue_drops)
            self._count_drop()
            return False

    def _count_drop(self) -> None:
        if self.on_drop is not None:
            self.on_drop()

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is _STOP:
                return
            kind, payload, future = item
            try:
                if kind == "request":
                    self.store.write(payload)
                elif kind == "feedback":
                    future.set_result(self._feedback(*payload))
                else:
                    payload.set()
            except Exception:  # the store never raises; this guards the thread against the unforeseen
                log.exception("the traffic log writer failed on a %s record", kind)
                if future is not None and not future.done():
                    future.set_result("dropped")

    def _feedback(
        self, response_id: str, rating: Rating | None, correction: str | None, comment: str | None
    ) -> FeedbackOutcome:
        known = self.store.has_request(response_id)
        if known is None:
            self._unreadable += 1
            self._count_drop()
            return "dropped"
        if not known:
            return "unknown"
        return "stored" if self.store.add_feedback(response_id, rating, correction, comment) else "dropped"
