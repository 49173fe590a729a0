"""`tuneloop serve --log`: traffic in SQLite with PII redacted, /v1/feedback, /metrics, and a log that
cannot be written (read-only place, corrupt or locked file) while the server keeps serving."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.serve_helpers import running
from tuneloop import config, traffic
from tuneloop.serve import adapters
from tuneloop.serve.app import Limits, create_app
from tuneloop.serve.reqlog import RequestLog

KEY = "k-123"
EMAIL = "jane.doe@example.com"


@pytest.fixture(scope="module")
def models(tiny_llama: Path) -> adapters.ModelSet:
    return adapters.load(adapters.plan(str(tiny_llama), name="m"))


def _post(url: str, path: str, body: object, key: str | None = KEY) -> httpx.Response:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return httpx.post(url + path, json=body, headers=headers, timeout=60)


def _chat(url: str, text: str = "hello", key: str | None = KEY) -> dict:
    body = {"model": "m", "messages": [{"role": "user", "content": text}], "max_tokens": 3, "temperature": 0}
    r = _post(url, "/v1/chat/completions", body, key)
    assert r.status_code == 200, r.text
    return r.json()


def _metrics(url: str, key: str | None = KEY) -> dict[str, float]:
    """Every sample of /metrics by name and labels, parsed with prometheus-client's own parser."""
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    text = httpx.get(url + "/metrics", headers=headers).text
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
            out[f"{sample.name}{{{labels}}}"] = sample.value
    return out


def test_traffic_is_logged_with_pii_redacted_and_feedback_joins_its_response(tmp_path: Path, models) -> None:
    path = tmp_path / "monitor" / "traffic.sqlite"
    log = RequestLog(path, traffic.redactor_for(config.PiiConfig()))
    app = create_app(models, Limits(api_key=KEY), log)
    with running(app) as url:
        reply = _chat(url, f"my email is {EMAIL}, call +44 20 7946 0958")
        r = _post(url, "/v1/feedback", {"id": reply["id"], "rating": "down", "correction": f"Mail {EMAIL} now"})
        assert r.status_code == 200 and r.json()["stored"] is True, r.text
        assert _post(url, "/v1/feedback", {"id": reply["id"], "rating": "up", "comment": "fine now"}).status_code == 200
        seen = _metrics(url)
    assert seen["tuneloop_feedback_total{rating=down}"] == 1 and seen["tuneloop_feedback_total{rating=up}"] == 1
    raw = b"".join(p.read_bytes() for p in path.parent.iterdir())  # the database, its WAL and index
    assert EMAIL.encode() not in raw and b"7946" not in raw
    (row,) = traffic.read_requests(path)
    assert row["id"] == reply["id"] and row["redacted"] is True
    assert row["messages"] == [{"role": "user", "content": "my email is [EMAIL], call [PHONE]"}]
    assert row["output"] == reply["choices"][0]["message"]["content"]
    assert row["completion_tokens"] == reply["usage"]["completion_tokens"]
    given = traffic.read_feedback(path)
    assert [f["rating"] for f in given] == ["down", "up"] and given[0]["correction"] == "Mail [EMAIL] now"
    assert traffic.latest_feedback(path)[reply["id"]]["comment"] == "fine now"


def test_feedback_bad_input_is_a_4xx_naming_the_field(tmp_path: Path, models) -> None:
    log = RequestLog(tmp_path / "traffic.sqlite")
    app = create_app(models, Limits(api_key=KEY), log)
    with running(app) as url:
        reply = _chat(url)
        assert _post(url, "/v1/feedback", {"id": reply["id"], "rating": "up"}, key=None).status_code == 401
        for body, status, param in (
            ({"id": reply["id"], "rating": "meh"}, 400, "rating"),
            ({"rating": "up"}, 400, "id"),
            ({"id": reply["id"], "rating": "up", "stars": 5}, 400, "stars"),
            ({"id": reply["id"], "correction": 3}, 400, "correction"),
            ({"id": reply["id"]}, 400, "rating"),
            ({"id": "chatcmpl-nobody", "rating": "down"}, 404, "id"),
        ):
            r = _post(url, "/v1/feedback", body)
            assert r.status_code == status and r.json()["error"]["param"] == param, (body, r.text)
        assert _post(url, "/v1/feedback", [1, 2]).status_code == 400
        assert _chat(url)["choices"]  # nothing above harmed the server
    assert traffic.read_feedback(tmp_path / "traffic.sqlite") == []


def test_feedback_without_a_log_is_a_clear_409(models) -> None:
    app = create_app(models, Limits())
    with running(app) as url:
        reply = _chat(url, key=None)
        r = _post(url, "/v1/feedback", {"id": reply["id"], "rating": "up"}, key=None)
        assert r.status_code == 409 and "--log" in r.json()["error"]["message"]


def test_metrics_parse_and_expose_requests_errors_latency_tokens_queue_and_log(tmp_path: Path, models) -> None:
    app = create_app(models, Limits(api_key=KEY), RequestLog(tmp_path / "traffic.sqlite"))
    with running(app) as url:
        _chat(url)
        assert _post(url, "/v1/chat/completions", {"model": "nope", "messages": []}).status_code == 400
        seen = _metrics(url)
    route = "route=/v1/chat/completions"
    assert seen[f"tuneloop_requests_total{{{route},status=200}}"] == 1
    assert seen[f"tuneloop_errors_total{{{route},status=400}}"] == 1
    assert seen[f"tuneloop_request_seconds_count{{{route}}}"] == 2
    assert seen[f"tuneloop_request_seconds_bucket{{le=+Inf,{route}}}"] == 2
    assert seen["tuneloop_prompt_tokens_total{model=m}"] > 0
    assert seen["tuneloop_completion_tokens_total{model=m}"] > 0
    assert seen["tuneloop_queue_depth{}"] == 0 and seen["tuneloop_in_flight{}"] == 0
    assert seen["tuneloop_log_dropped_total{}"] == 0
    assert "tuneloop_batch_size_count{}" in seen


def _unwritable(tmp_path: Path, how: str) -> tuple[Path, sqlite3.Connection | None]:
    if how == "read-only place":  # a file where the folder should be: nothing can be created there
        (tmp_path / "monitor").write_text("not a folder")
        return tmp_path / "monitor" / "traffic.sqlite", None
    path = tmp_path / "traffic.sqlite"
    if how == "corrupt":
        path.write_bytes(b"\x00garbage, not SQLite" * 500)
        return path, None
    traffic.TrafficLog.open(path).close()
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("PRAGMA locking_mode = EXCLUSIVE")
    holder.execute("BEGIN EXCLUSIVE")
    holder.execute("INSERT INTO meta VALUES ('held', 'by another process')")
    return path, holder


@pytest.mark.parametrize("how", ["read-only place", "corrupt", "locked"])
def test_a_log_that_cannot_be_written_drops_counts_and_serving_goes_on(
    tmp_path: Path, models, how: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(traffic, "WRITE_BUSY_MS", 50)
    path, holder = _unwritable(tmp_path, how)
    log = RequestLog(path)
    app = create_app(models, Limits(), log)
    try:
        with running(app) as url:
            replies = [_chat(url, f"question {i}", key=None) for i in range(3)]
            assert all(r["choices"][0]["message"]["content"] is not None for r in replies)
            log.flush()
            feedback = _post(url, "/v1/feedback", {"id": replies[0]["id"], "rating": "up"}, key=None)
            assert feedback.status_code == 503 and "cannot be written" in feedback.json()["error"]["message"]
            seen = _metrics(url, key=None)
            assert seen["tuneloop_requests_total{route=/v1/chat/completions,status=200}"] == 3
            assert seen["tuneloop_log_dropped_total{}"] == 4 == log.dropped  # 3 requests and the feedback
    finally:
        if holder is not None:
            holder.close()


def test_a_full_queue_drops_and_counts_instead_of_blocking(tmp_path: Path) -> None:

    log = RequestLog(tmp_path / "t.sqlite", queue_size=2)
    log.store._lock.acquire()  # the writer thread blocks on its first record
    row = traffic.TrafficRow(
        id="x",
        time=traffic.now(),
        route="/v1/completions",
        model="m",
        adapter=None,
        messages=None,
        prompt="p",
        output="o",
        outputs=["o"],
        finish_reason="stop",
        prompt_tokens=1,
        completion_tokens=1,
        latency_s=0.1,
        params={},
    )
    try:
        for i in range(6):
            log.record(dict(row, id=f"r{i}"))  # type: ignore[arg-type]
        assert log.dropped >= 3  # one taken by the thread, two queued, the rest dropped at once
    finally:
        log.store._lock.release()
    log.close()
    assert len(traffic.read_requests(tmp_path / "t.sqlite")) == 6 - log.dropped


def test_cli_log_needs_a_project_or_a_file(cli, tmp_path: Path, tiny_llama: Path, monkeypatch) -> None:
    import uvicorn

    started = {}
    monkeypatch.setattr(uvicorn, "run", lambda app, **kwargs: started.update(app=app))
    monkeypatch.chdir(tmp_path)
    result = cli("serve", "--model", str(tiny_llama), "--log")
    assert result.code == 1 and "--log-file" in result.err and "Traceback" not in result.err
    result = cli("serve", "--model", str(tiny_llama), "--log-file", str(tmp_path / "t.sqlite"))
    assert result.code == 0, result.err
    log = started["app"].state.served.log
    assert log.path == tmp_path / "t.sqlite" and log.store.redactor is not None  # default data.pii: redact
    log.close()
    (tmp_path / "tuneloop.yaml").write_text("task: {objective: x, type: chat}\ndata: {pii: {mode: 'off'}}\n")
    assert cli("serve", "--model", str(tiny_llama), "--log").code == 0
    log = started["app"].state.served.log
    assert log.path == tmp_path / "monitor" / "traffic.sqlite" and log.store.redactor is None
    log.close()


def test_cli_log_with_the_vllm_backend_is_refused(cli, tiny_llama: Path) -> None:
    result = cli("serve", "--model", str(tiny_llama), "--backend", "vllm", "--log-file", "t.sqlite")
    assert result.code == 1 and "--backend transformers" in result.err
