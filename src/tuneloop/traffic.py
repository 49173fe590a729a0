"""The traffic store: every request `tuneloop serve --log` answered, and the feedback people gave.

One SQLite file, `<project>/monitor/traffic.sqlite`, in WAL mode so that the server writes while
`tuneloop monitor` reads. Two tables:

  requests   one row per response: when, which route, model and adapter, the messages or prompt,
             the answers, finish reason, token counts, latency, sampling settings
  feedback   thumbs up/down and an optional correction for a response id; a response may get
             several, and the latest one counts

The server writes through `TrafficLog`, which never raises: a write that fails (read-only folder,
corrupt or locked file) is logged as a warning and counted as dropped, and serving goes on.
Readers (`read_requests`, `read_feedback`, `latest_feedback`) raise a UserError that says what
to do instead.

With a redactor (the data stage's PII scanner when `data.pii` is on), every text — messages,
prompt, answers, corrections, comments — is redacted before it reaches the file.
"""

from __future__ import annotations

import json
import logging
import os
import re
import sqlite3
import threading
import time
from collections.abc import Callable, Collection
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Literal, TypedDict

from tuneloop.errors import UserError

SCHEMA_VERSION = 1
FILENAME = Path("monitor") / "traffic.sqlite"
WRITE_BUSY_MS = 2000  # a server writer waits this long for a lock, then drops the record
READ_BUSY_MS = 5000
REOPEN_EVERY_S = 5.0  # a writer whose file could not be opened tries again this often

FinishReason = Literal["stop", "length", "cancelled", "timeout", "error"]
Rating = Literal["up", "down"]
RATINGS: tuple[Rating, ...] = ("up", "down")

log = logging.getLogger("tuneloop.traffic")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS requests (
    id TEXT PRIMARY KEY,
    time TEXT NOT NULL,
    route TEXT NOT NULL,
    model TEXT NOT NULL,
    adapter TEXT,
    messages TEXT,
    prompt TEXT,
    output TEXT NOT NULL,
    outputs TEXT NOT NULL,
    finish_reason TEXT NOT NULL,
    prompt_tokens INTEGER NOT NULL,
    completion_tokens INTEGER NOT NULL,
    latency_s REAL NOT NULL,
    params TEXT NOT NULL,
    redacted INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS requests_time ON requests (time);
CREATE TABLE IF NOT EXISTS feedback (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    response_id TEXT NOT NULL,
    time TEXT NOT NULL,
    rating TEXT,
    correction TEXT,
    comment TEXT
);
CREATE INDEX IF NOT EXISTS feedback_response ON feedback (response_id);
CREATE INDEX IF NOT EXISTS feedback_time ON feedback (time);
"""

_COLUMNS = (
    "id",
    "time",
    "route",
    "model",
    "adapter",
    "messages",
    "prompt",
    "output",
    "outputs",
    "finish_reason",
    "prompt_tokens",
    "completion_tokens",
    "latency_s",
    "params",
    "redacted",
)


class Message(TypedDict):
    role: str
    content: str


class _TrafficRowBase(TypedDict):
    id: str  # the response id the client saw (chatcmpl-..., cmpl-...)
    time: str  # when the request arrived: UTC ISO 8601 with milliseconds (see `now`)
    route: str  # /v1/chat/completions, /v1/completions or /v1/classify (one row per classified text)
    model: str  # the model name the client asked for
    adapter: str | None  # the PEFT adapter that answered; None for a base or merged model
    messages: list[Message] | None  # chat requests
    prompt: str | None  # text completions (the first prompt; all of them in params["prompts"] when several);
    # a classified text
    output: str  # the first choice's text; a classified text's predicted label
    outputs: list[str]  # every choice's text
    finish_reason: FinishReason  # the first choice's
    prompt_tokens: int
    completion_tokens: int
    latency_s: float
    params: dict[str, Any]  # temperature, top_p, max_tokens, stop, seed, n; a classification: {"probabilities"}


class TrafficRow(_TrafficRowBase, total=False):
    """One answered request. `redacted` is set by the writer (True when PII redaction ran) and read back."""

    redacted: bool


class FeedbackRow(TypedDict):
    id: int
    response_id: str  # joins TrafficRow["id"]
    time: str
    rating: Rating | None
    correction: str | None  # the answer the person says the model should have given
    comment: str | None


def now() -> str:
    """The current time as the store writes it: UTC ISO 8601 with milliseconds (sorts as text)."""
    return _stamp(datetime.now(timezone.utc))


def _stamp(moment: datetime) -> str:
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return moment.astimezone(timezone.utc).isoformat(timespec="milliseconds")


def default_path(cfg: Any) -> Path:
    """Where a project's traffic lives: `<project root>/monitor/traffic.sqlite` (cfg is a ProjectConfig)."""
    return cfg.root / FILENAME


def redactor_for(pii: Any, root: Path | None = None) -> Callable[[str], str] | None:
    """The data stage's PII redaction as a text → text function, for a `data.pii` section (PiiConfig);
    None when its mode is not 'redact' ('detect' or 'off' leave training text as it is, so traffic too)."""
    if pii.mode != "redact":
        return None
    from tuneloop.data.pii import PiiScanner

    scanner = PiiScanner.from_config(pii, root)
    return lambda text: scanner.redact(text)[0]


# -- the writer -------------------------------------------------------------------------------------


class TrafficLog:
    """Writes requests and feedback; safe to call from several threads; never raises.

    A failed write returns False, adds one to `dropped`, calls `on_drop` and logs a warning (the
    first failure, each new kind of failure, and every 1000th after). A file that could not be
    opened is tried again at most every REOPEN_EVERY_S seconds, so a lock that goes away or a
    corrupt file that is moved aside heals without a restart.
    """

    def __init__(
        self,
        path: Path,
        redactor: Callable[[str], str] | None = None,
        on_drop: Callable[[], None] | None = None,
    ) -> None:
        self.path = Path(path)
        self.redactor = redactor
        self.on_drop = on_drop
        self.dropped = 0
        self.written = 0
        self._lock = threading.Lock()
        self._conn: sqlite3.Connection | None = None
        self._next_open = 0.0
        self._last_error = ""

    @classmethod
    def open(
        cls,
        path: Path,
        redactor: Callable[[str], str] | None = None,
        on_drop: Callable[[], None] | None = None,
    ) -> TrafficLog:
        """A writer for `path`, created with its folder when missing. A file that cannot be opened now
        is reported (warning) and retried on later writes; this never raises."""
        writer = cls(path, redactor, on_drop)
        with writer._lock:
            writer._connect()
        return writer

    @property
    def healthy(self) -> bool:
        """Whether the file is open and the last write succeeded."""
        return self._conn is not None and not self._last_error

    def write(self, row: TrafficRow) -> bool:
        """Store one answered request (redacted first when there is a redactor). False if it was dropped."""
        try:
            values = self._request_values(row)
        except Exception as e:  # a row that cannot be encoded is a drop, not a crash
            return self._drop(f"cannot encode request {row.get('id')!r}: {type(e).__name__}: {e}")
        sql = f"INSERT OR REPLACE INTO requests ({', '.join(_COLUMNS)}) VALUES ({', '.join('?' * len(_COLUMNS))})"
        return self._execute(sql, values)

    def add_feedback(
        self,
        response_id: str,
        rating: Rating | None = None,
        correction: str | None = None,
        comment: str | None = None,
        at: str | None = None,
    ) -> bool:
        """Store one piece of feedback on a response (texts redacted first). False if it was dropped.

        ValueError for a rating other than 'up', 'down' or None: that is the caller's bug, not a drop.
        """
        if rating is not None and rating not in RATINGS:
            raise ValueError(f"rating must be one of {', '.join(RATINGS)} or None, not {rating!r}")
        values = (response_id, at or now(), rating, self._redact(correction), self._redact(comment))
        sql = "INSERT INTO feedback (response_id, time, rating, correction, comment) VALUES (?, ?, ?, ?, ?)"
        return self._execute(sql, values)

    def has_request(self, response_id: str) -> bool | None:
        """Whether a request with this id is stored; None when the file cannot be read now."""
        with self._lock:
            if not self._connect():
                return None
            assert self._conn is not None
            try:
                found = self._conn.execute("SELECT 1 FROM requests WHERE id = ?", (response_id,)).fetchone()
            except sqlite3.Error as e:
                self._note(f"cannot read {self.path}: {e}")
                return None
        return found is not None

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    # -- inside -----------------------------------------------------------------------------------

    def _redact(self, text: str | None) -> str | None:
        return text if text is None or self.redactor is None else self.redactor(text)

    def _request_values(self, row: TrafficRow) -> tuple[Any, ...]:
        redact = self._redact
        messages = row.get("messages")
        if messages is not None:
            messages = [{"role": m["role"], "content": redact(m["content"])} for m in messages]
        params = dict(row.get("params") or {})
        if isinstance(params.get("prompts"), list):
            params["prompts"] = [redact(p) for p in params["prompts"]]
        outputs = [redact(o) for o in row["outputs"]]
        return (
            row["id"],
            row["time"],
            row["route"],
            row["model"],
            row.get("adapter"),
            None if messages is None else json.dumps(messages, ensure_ascii=False),
            redact(row.get("prompt")),
            redact(row["output"]),
            json.dumps(outputs, ensure_ascii=False),
            row["finish_reason"],
            int(row["prompt_tokens"]),
            int(row["completion_tokens"]),
            float(row["latency_s"]),
            json.dumps(params, ensure_ascii=False),
            int(self.redactor is not None),
        )

    def _execute(self, sql: str, values: tuple[Any, ...]) -> bool:
        with self._lock:
            if not self._connect():
                return self._drop(self._last_error or f"cannot open {self.path}", held=True)
            assert self._conn is not None
            try:
                self._conn.execute(sql, values)  # autocommit: one statement, one transaction
            except sqlite3.DatabaseError as e:
                if not _is_locked(e):  # corrupt or replaced: reopen later rather than keep a bad handle
                    self._conn.close()
                    self._conn = None
                    self._next_open = time.monotonic() + REOPEN_EVERY_S
                return self._drop(f"cannot write to {self.path}: {e}", held=True)
            except Exception as e:
                return self._drop(f"cannot write to {self.path}: {type(e).__name__}: {e}", held=True)
            self.written += 1
            self._last_error = ""
        return True

    def _connect(self) -> bool:
        """Open the file if it is not open (at most every REOPEN_EVERY_S after a failure). Holds the lock."""
        if self._conn is not None:
            return True
        if time.monotonic() < self._next_open:
            return False
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            if not self.path.exists():  # production prompts: readable by the owner only (WAL files follow)
                os.close(os.open(self.path, os.O_CREAT | os.O_WRONLY, 0o600))
            conn = sqlite3.connect(
                self.path, timeout=WRITE_BUSY_MS / 1000, isolation_level=None, check_same_thread=False
            )
            try:
                _prepare(conn, WRITE_BUSY_MS)
            except Exception:
                conn.close()
                raise
        except (sqlite3.Error, OSError, UserError) as e:
            self._next_open = time.monotonic() + REOPEN_EVERY_S
            self._note(f"cannot open the traffic log {self.path}: {_explain(e, self.path)}")
            return False
        self._conn = conn
        return True

    def _drop(self, reason: str, held: bool = False) -> bool:
        if held:  # the caller holds self._lock
            self.dropped += 1
            self._note(reason)
        else:
            with self._lock:
                self.dropped += 1
                self._note(reason)
        if self.on_drop is not None:
            self.on_drop()
        return False

    def _note(self, reason: str) -> None:
        if reason != self._last_error or self.dropped % 1000 == 1:
            log.warning("%s (%d records dropped so far; serving goes on)", reason, self.dropped)
        self._last_error = reason


def _prepare(conn: sqlite3.Connection, busy_ms: int) -> None:
    """WAL, a busy timeout, and the schema (created, or checked against this version)."""
    conn.execute(f"PRAGMA busy_timeout = {int(busy_ms)}")
    mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
    if str(mode).lower() != "wal":
        log.warning("the traffic log %s stays in %s journal mode (WAL refused)", conn, mode)
    conn.execute("PRAGMA synchronous = NORMAL")  # WAL + NORMAL: durable across app crashes, one fsync per checkpoint
    conn.executescript(
        f"BEGIN IMMEDIATE;{_SCHEMA}INSERT OR IGNORE INTO meta VALUES ('schema_version', '{SCHEMA_VERSION}');COMMIT;"
    )
    _check_version(conn)


def _check_version(conn: sqlite3.Connection) -> None:
    found = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
    if found is None or int(found[0]) > SCHEMA_VERSION:
        version = "no version" if found is None else f"schema version {found[0]}"
        raise UserError(
            f"the traffic log has {version}; this tuneloop reads version {SCHEMA_VERSION}: upgrade tuneloop, "
            "or move the file aside to start a new log"
        )


def _is_locked(e: BaseException) -> bool:
    text = str(e).lower()
    return "locked" in text or "busy" in text


def _explain(e: BaseException, path: Path) -> str:
    """What went wrong with the file and what to do, in one sentence."""
    if isinstance(e, UserError):
        return str(e)
    text = str(e).lower()
    if _is_locked(e):
        return (
            f"{path} is locked by another process ({e}); wait for it to finish (a server holding an exclusive "
            "lock, a backup or an editor) and try again"
        )
    if "not a database" in text or "malformed" in text or "corrupt" in text:
        return (
            f"{path} is not a readable SQLite database ({e}); it is corrupt: move it aside (keep it for "
            "inspection) and restart `tuneloop serve --log` to start a new log"
        )
    if "no such table" in text or "no such column" in text:
        return f"{path} is a SQLite file but not a tuneloop traffic log ({e}); point at the right file"
    if "readonly" in text or "read-only" in text or isinstance(e, PermissionError) or "unable to open" in text:
        return f"{path} cannot be opened for writing ({e}); make its folder writable or log elsewhere"
    return f"{path}: {type(e).__name__}: {e}"


# -- readers ----------------------------------------------------------------------------------------


def read_requests(path: Path, since: datetime | None = None, ids: Collection[str] | None = None) -> list[TrafficRow]:
    """Every stored request, oldest first; only those that arrived at or after `since`, and only those
    whose id is in `ids`, when given."""
    sql = f"SELECT {', '.join(_COLUMNS)} FROM requests"
    clauses, args = [], []
    if since is not None:
        clauses.append("time >= ?")
        args.append(_stamp(since))
    if ids is not None:
        wanted = sorted(set(ids))
        if not wanted:
            return []
        # one JSON parameter rather than `IN (?, ?, ...)`: SQLite caps the number of parameters
        clauses.append("id IN (SELECT value FROM json_each(?))")
        args.append(json.dumps(wanted))
    if clauses:
        sql += " WHERE " + " AND ".join(clauses)
    rows = _query(path, sql + " ORDER BY time, id", tuple(args))
    return [_request_row(r) for r in rows]


def read_feedback(path: Path, since: datetime | None = None) -> list[FeedbackRow]:
    """Every feedback row, oldest first; only those given at or after `since` when given."""
    sql = "SELECT id, response_id, time, rating, correction, comment FROM feedback"
    args: tuple[Any, ...] = ()
    if since is not None:
        sql, args = sql + " WHERE time >= ?", (_stamp(since),)
    return [_feedback_row(r) for r in _query(path, sql + " ORDER BY id", args)]


def latest_feedback(path: Path) -> dict[str, FeedbackRow]:
    """The feedback that counts for each response id: the latest row given for it."""
    sql = (
        "SELECT id, response_id, time, rating, correction, comment FROM feedback "
        "WHERE id IN (SELECT MAX(id) FROM feedback GROUP BY response_id) ORDER BY id"
    )
    return {row["response_id"]: row for row in map(_feedback_row, _query(path, sql, ()))}


def _query(path: Path, sql: str, args: tuple[Any, ...]) -> list[tuple[Any, ...]]:
    path = Path(path)
    if not path.is_file():
        raise UserError(
            f"no traffic log at {path}: start the server with `tuneloop serve --log` (from the project folder) "
            "so that it records requests, then try again"
        )
    try:
        # mode=rw: never create a file here; a reader needs write access only for WAL's shared-memory index
        conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=rw", uri=True, timeout=READ_BUSY_MS / 1000)
    except sqlite3.Error as e:
        raise UserError(_explain(e, path)) from None
    try:
        conn.execute(f"PRAGMA busy_timeout = {READ_BUSY_MS}")
        _check_version(conn)
        return conn.execute(sql, args).fetchall()
    except sqlite3.Error as e:
        raise UserError(_explain(e, path)) from None
    finally:
        conn.close()


def _request_row(r: tuple[Any, ...]) -> TrafficRow:
    d = dict(zip(_COLUMNS, r, strict=True))
    return TrafficRow(
        id=d["id"],
        time=d["time"],
        route=d["route"],
        model=d["model"],
        adapter=d["adapter"],
        messages=None if d["messages"] is None else json.loads(d["messages"]),
        prompt=d["prompt"],
        output=d["output"],
        outputs=json.loads(d["outputs"]),
        finish_reason=d["finish_reason"],
        prompt_tokens=d["prompt_tokens"],
        completion_tokens=d["completion_tokens"],
        latency_s=d["latency_s"],
        params=json.loads(d["params"]),
        redacted=bool(d["redacted"]),
    )


def _feedback_row(r: tuple[Any, ...]) -> FeedbackRow:
    return FeedbackRow(id=r[0], response_id=r[1], time=r[2], rating=r[3], correction=r[4], comment=r[5])


# -- --since ----------------------------------------------------------------------------------------

_SPAN = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([wdhm])\s*$", re.IGNORECASE)
_UNITS = {"w": "weeks", "d": "days", "h": "hours", "m": "minutes"}


def parse_since(text: str, now_: datetime | None = None) -> datetime:
    """`7d`, `24h`, `30m`, `2w` (that long before now) or an ISO date or time (naive = UTC) → a UTC datetime."""
    match = _SPAN.match(text)
    current = now_ or datetime.now(timezone.utc)
    if match:
        return current - timedelta(**{_UNITS[match.group(2).lower()]: float(match.group(1))})
    try:
        moment = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise UserError(
            f"--since {text!r}: give a span before now such as 7d, 24h, 30m or 2w, or an ISO date such as "
            "2026-11-01 (UTC) or 2026-11-01T09:00+01:00"
        ) from None
    return moment.replace(tzinfo=timezone.utc) if moment.tzinfo is None else moment.astimezone(timezone.utc)
