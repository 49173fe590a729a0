"""The request log: one JSON line per served request, appended and flushed as each one ends.

`monitor` reads it. Rows are only ever appended, each written whole and flushed at once, so a
crash of the server loses nothing that was already logged.
"""

from __future__ import annotations

import json
import threading
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal, TypedDict

FinishReason = Literal["stop", "length", "cancelled", "timeout", "error"]


class LogRow(TypedDict):
    time: str  # when the request arrived, UTC ISO 8601
    id: str  # the response id the client saw (chatcmpl-..., cmpl-...)
    route: str  # /v1/chat/completions or /v1/completions
    model: str  # the requested model name
    adapter: str | None  # the PEFT adapter that answered; None for the base or a merged model
    messages: list[dict[str, str]] | None  # chat requests
    prompt: list[str] | None  # text completions
    params: dict[str, Any]  # temperature, top_p, max_tokens, stop, seed, n
    outputs: list[str]  # one per choice
    finish_reasons: list[FinishReason]
    prompt_tokens: int
    completion_tokens: int
    latency_s: float


class RequestLog:
    """Append-only JSONL writer, safe to call from several threads."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._file = path.open("a", encoding="utf-8")
        self._lock = threading.Lock()

    def write(self, row: LogRow) -> None:
        line = json.dumps(row, ensure_ascii=False) + "\n"
        with self._lock:
            self._file.write(line)
            self._file.flush()

    def close(self) -> None:
        with self._lock:
            self._file.close()


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")
