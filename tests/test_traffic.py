"""The traffic store (tuneloop.traffic): round trip, --since, redaction, and files that cannot be used."""

from __future__ import annotations

import sqlite3
import threading
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from tuneloop import traffic
from tuneloop.errors import UserError
from tuneloop.traffic import TrafficLog, TrafficRow


def row(i: int, at: str | None = None, **changes) -> TrafficRow:
    base = TrafficRow(
        id=f"chatcmpl-{i}",
        time=at or traffic.now(),
        route="/v1/chat/completions",
        model="tiny",
        adapter=None,
        messages=[{"role": "user", "content": f"question {i}"}],
        prompt=None,
        output=f"answer {i}",
        outputs=[f"answer {i}", f"other {i}"],
        finish_reason="stop",
        prompt_tokens=7,
        completion_tokens=3,
        latency_s=0.25,
        params={"temperature": 0.0, "max_tokens": 16, "n": 2},
    )
    base.update(changes)  # type: ignore[typeddict-item]
    return base


@pytest.fixture
def fast_locks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(traffic, "WRITE_BUSY_MS", 100)
    monkeypatch.setattr(traffic, "READ_BUSY_MS", 100)
    monkeypatch.setattr(traffic, "REOPEN_EVERY_S", 0.0)


def test_round_trip_requests_and_feedback(tmp_path: Path) -> None:
    path = tmp_path / "monitor" / "traffic.sqlite"
    log = TrafficLog.open(path)
    assert log.write(row(1)) and log.write(row(2, adapter="billing", messages=None, prompt="Once upon"))
    assert log.add_feedback("chatcmpl-1", "down", correction="the right answer", comment="wrong team")
    assert log.add_feedback("chatcmpl-1", "up")
    assert log.add_feedback("chatcmpl-2", None, comment="slow")
    assert log.has_request("chatcmpl-1") is True and log.has_request("nope") is False
    log.close()

    rows = traffic.read_requests(path)
    assert [r["id"] for r in rows] == ["chatcmpl-1", "chatcmpl-2"]
    expected = dict(row(1), redacted=False, time=rows[0]["time"])
    assert rows[0] == expected
    assert rows[1]["prompt"] == "Once upon" and rows[1]["messages"] is None and rows[1]["adapter"] == "billing"
    feedback = traffic.read_feedback(path)
    assert [(f["response_id"], f["rating"]) for f in feedback] == [
        ("chatcmpl-1", "down"),
        ("chatcmpl-1", "up"),
        ("chatcmpl-2", None),
    ]
    assert feedback[0]["correction"] == "the right answer" and feedback[0]["comment"] == "wrong team"
    latest = traffic.latest_feedback(path)
    assert latest["chatcmpl-1"]["rating"] == "up" and latest["chatcmpl-1"]["correction"] is None
    assert latest["chatcmpl-2"]["comment"] == "slow"
    assert path.stat().st_mode & 0o777 == 0o600  # production prompts: the owner's alone
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()[0] == "1"


def test_bad_rating_is_the_callers_bug(tmp_path: Path) -> None:
    log = TrafficLog.open(tmp_path / "t.sqlite")
    with pytest.raises(ValueError, match="rating"):
        log.add_feedback("x", "meh")  # type: ignore[arg-type]
    log.close()


def test_since_filters_requests_and_feedback(tmp_path: Path) -> None:
    path = tmp_path / "t.sqlite"
    log = TrafficLog.open(path)
    current = datetime(2026, 11, 30, 12, 0, tzinfo=timezone.utc)
    for days in (10, 3, 0):
        at = (current - timedelta(days=days)).isoformat(timespec="milliseconds")
        log.write(row(days, at=at))
        log.add_feedback(f"chatcmpl-{days}", "down", at=at)
    log.close()
    since = traffic.parse_since("7d", now_=current)
    assert [r["id"] for r in traffic.read_requests(path, since)] == ["chatcmpl-3", "chatcmpl-0"]
    assert [f["response_id"] for f in traffic.read_feedback(path, since)] == ["chatcmpl-3", "chatcmpl-0"]
    # a time zone other than UTC compares by the instant, not the text
    later = datetime(2026, 11, 27, 13, 0, tzinfo=timezone(timedelta(hours=1)))  # 12:00 UTC, exactly 3 days
    assert [r["id"] for r in traffic.read_requests(path, later)] == ["chatcmpl-3", "chatcmpl-0"]
    assert len(traffic.read_requests(path)) == 3
    assert [r["id"] for r in traffic.read_requests(path, ids={"chatcmpl-10", "chatcmpl-0", "other"})] == [
        "chatcmpl-10",
        "chatcmpl-0",
    ]
    assert [r["id"] for r in traffic.read_requests(path, since, ids=["chatcmpl-10", "chatcmpl-0"])] == ["chatcmpl-0"]
    assert traffic.read_requests(path, ids=[]) == []


def test_parse_since() -> None:
    current = datetime(2026, 11, 30, 12, 0, tzinfo=timezone.utc)
    assert traffic.parse_since("7d", now_=current) == current - timedelta(days=7)
    assert traffic.parse_since("24h", now_=current) == current - timedelta(hours=24)
    assert traffic.parse_since("30m", now_=current) == current - timedelta(minutes=30)
    assert traffic.parse_since("2w", now_=current) == current - timedelta(weeks=2)
    assert traffic.parse_since("2026-11-01") == datetime(2026, 11, 1, tzinfo=timezone.utc)
    assert traffic.parse_since("2026-11-01T09:00+01:00") == datetime(2026, 11, 1, 8, tzinfo=timezone.utc)
    with pytest.raises(UserError, match="7d"):
        traffic.parse_since("last week")


def test_redactor_runs_on_every_text_before_it_is_written(tmp_path: Path) -> None:
    path = tmp_path / "t.sqlite"
    secret = "jane@example.com"
    log = TrafficLog.open(path, redactor=lambda text: text.replace(secret, "[EMAIL]"))
    log.write(
        row(
            1,
            messages=[{"role": "system", "content": "be brief"}, {"role": "user", "content": f"I am {secret}"}],
            output=f"Hello {secret}",
            outputs=[f"Hello {secret}", f"Hi {secret}"],
            prompt=f"from {secret}",
            params={"prompts": [f"from {secret}", "two"], "n": 1},
        )
    )
    log.add_feedback("chatcmpl-1", "down", correction=f"Write to {secret}", comment=f"me: {secret}")
    log.close()
    assert secret not in path.read_bytes().decode("utf-8", "replace")
    (stored,) = traffic.read_requests(path)
    assert stored["redacted"] is True
    assert stored["messages"][1]["content"] == "I am [EMAIL]" and stored["outputs"] == ["Hello [EMAIL]", "Hi [EMAIL]"]
    assert stored["params"]["prompts"] == ["from [EMAIL]", "two"]
    assert traffic.read_feedback(path)[0]["correction"] == "Write to [EMAIL]"


def test_concurrent_writers_lose_nothing(tmp_path: Path) -> None:
    """Two writers (two connections, like two server processes) and four threads each: every row lands."""
    path = tmp_path / "t.sqlite"
    logs = [TrafficLog.open(path), TrafficLog.open(path)]

    def work(log: TrafficLog, start: int) -> None:
        for i in range(start, start + 50):
            assert log.write(row(i))
            assert log.add_feedback(f"chatcmpl-{i}", "up")

    threads = [threading.Thread(target=work, args=(logs[t % 2], t * 1000)) for t in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for log in logs:
        assert log.dropped == 0
        log.close()
    assert len(traffic.read_requests(path)) == 400
    assert len(traffic.latest_feedback(path)) == 400


def test_corrupt_file_readers_explain_and_writer_drops(tmp_path: Path) -> None:
    path = tmp_path / "t.sqlite"
    path.write_bytes(b"this is not a database at all, just bytes" * 100)
    with pytest.raises(UserError, match=r"corrupt.*move it aside"):
        traffic.read_requests(path)
    with pytest.raises(UserError, match="corrupt"):
        traffic.latest_feedback(path)
    drops: list[int] = []
    log = TrafficLog.open(path, on_drop=lambda: drops.append(1))
    assert log.write(row(1)) is False
    assert log.add_feedback("chatcmpl-1", "up") is False
    assert log.dropped == 2 and len(drops) == 2 and not log.healthy
    assert log.has_request("chatcmpl-1") is None
    log.close()


def test_corrupt_file_moved_aside_heals_the_writer(tmp_path: Path, fast_locks: None) -> None:
    path = tmp_path / "t.sqlite"
    path.write_bytes(b"garbage" * 1000)
    log = TrafficLog.open(path)
    assert log.write(row(1)) is False
    path.rename(tmp_path / "t.sqlite.bad")
    assert log.write(row(2)) is True
    log.close()
    assert [r["id"] for r in traffic.read_requests(path)] == ["chatcmpl-2"]


def test_locked_file_readers_explain_and_writer_drops(tmp_path: Path, fast_locks: None) -> None:
    path = tmp_path / "t.sqlite"
    TrafficLog.open(path).close()
    # another process holds an exclusive lock: nobody else may read or write until it lets go
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("PRAGMA locking_mode = EXCLUSIVE")
    holder.execute("BEGIN EXCLUSIVE")
    holder.execute("INSERT INTO meta VALUES ('holder', 'x')")
    try:
        with pytest.raises(UserError, match=r"locked.*try again"):
            traffic.read_requests(path)
        log = TrafficLog.open(path)
        assert log.write(row(1)) is False
        assert log.dropped == 1
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert log.write(row(2)) is True  # the lock went away: writing resumes without a restart
    log.close()
    assert [r["id"] for r in traffic.read_requests(path)] == ["chatcmpl-2"]


def test_a_writer_blocked_mid_run_drops_while_readers_still_read(tmp_path: Path, fast_locks: None) -> None:
    path = tmp_path / "t.sqlite"
    log = TrafficLog.open(path)
    assert log.write(row(1))
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")  # a long write transaction elsewhere
    try:
        assert log.write(row(2)) is False and log.dropped == 1
        assert [r["id"] for r in traffic.read_requests(path)] == ["chatcmpl-1"]  # WAL: readers are not blocked
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert log.write(row(3)) is True
    log.close()
    assert [r["id"] for r in traffic.read_requests(path)] == ["chatcmpl-1", "chatcmpl-3"]


def test_unwritable_place_drops_and_never_raises(tmp_path: Path) -> None:
    blocker = tmp_path / "monitor"
    blocker.write_text("a file where the folder should be")
    log = TrafficLog.open(blocker / "traffic.sqlite")
    assert log.write(row(1)) is False and log.dropped == 1
    log.close()


def test_missing_file_and_foreign_file_are_user_errors(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="serve --log"):
        traffic.read_requests(tmp_path / "none.sqlite")
    assert not (tmp_path / "none.sqlite").exists()
    foreign = tmp_path / "other.sqlite"
    with sqlite3.connect(foreign) as conn:
        conn.execute("CREATE TABLE x (a)")
    with pytest.raises(UserError, match="not a tuneloop traffic log"):
        traffic.read_requests(foreign)


def test_newer_schema_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "t.sqlite"
    TrafficLog.open(path).close()
    with sqlite3.connect(path) as conn:
        conn.execute("UPDATE meta SET value = '99' WHERE key = 'schema_version'")
    with pytest.raises(UserError, match="upgrade tuneloop"):
        traffic.read_requests(path)


def test_default_path_is_in_the_project(project: Path) -> None:
    from tuneloop import config

    cfg = config.load(project / "tuneloop.yaml")
    assert traffic.default_path(cfg) == project.resolve() / "monitor" / "traffic.sqlite"
