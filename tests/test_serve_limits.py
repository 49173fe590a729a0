"""`tuneloop serve`'s limits and edges: 429, a client that leaves mid-stream, timeouts, the CLI's refusals,
the vLLM hand-off, and the text stream that cuts stop strings."""

from __future__ import annotations

import itertools
import threading
import time
from pathlib import Path

import httpx
import openai
import pytest

from tests.serve_helpers import make_adapter_run, make_lively_llama, running
from tuneloop import traffic
from tuneloop.errors import UserError
from tuneloop.serve import adapters
from tuneloop.serve.app import Limits, create_app
from tuneloop.serve.reqlog import RequestLog

CHAT = [{"role": "user", "content": "How do I reset my password?"}]


@pytest.fixture(scope="module")
def lively(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_lively_llama(tmp_path_factory.mktemp("lively") / "tiny")


def _metric(url: str, name: str) -> float:
    text = httpx.get(url + "/metrics").text
    return float(next(line.split()[1] for line in text.splitlines() if line.startswith(name + " ")))


def _in_flight(url: str) -> float:
    return _metric(url, "tuneloop_in_flight")


def test_429_above_the_limit_and_a_client_that_leaves_frees_its_slot(tmp_path: Path, lively: Path) -> None:
    models = adapters.load(adapters.plan(str(lively), name="m"))
    log = tmp_path / "traffic.sqlite"
    app = create_app(models, Limits(max_concurrent=1), RequestLog(log))
    release = threading.Event()
    with running(app) as url:
        client = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=60)
        # Keep the generation worker busy, so the streaming request below holds its slot for sure.
        app.state.served.batcher.call(lambda: release.wait(60))
        try:
            body = {"model": "m", "messages": CHAT, "max_tokens": 50, "stream": True}
            with httpx.stream("POST", url + "/v1/chat/completions", json=body, timeout=60) as stream:
                lines = stream.iter_lines()  # kept: a dropped iterator would close the connection at once
                first = next(lines)
                assert first.startswith("data: ") and '"role": "assistant"' in first
                assert _in_flight(url) == 1
                with pytest.raises(openai.RateLimitError) as e:
                    client.chat.completions.create(model="m", messages=CHAT, max_tokens=4)
                assert e.value.body["code"] == "rate_limit_exceeded"
            # The client hung up mid-stream: its slot comes back while the worker is still busy.
            deadline = time.monotonic() + 30
            while _in_flight(url) != 0:
                assert time.monotonic() < deadline, "the slot of a disconnected client was never freed"
                time.sleep(0.1)
            release.set()
            reply = client.chat.completions.create(model="m", messages=CHAT, max_tokens=4)
            assert reply.choices[0].message.content is not None
            # The abandoned row was dropped, never decoded: one batch of one row ran, for the reply above.
            assert _metric(url, "tuneloop_batch_size_sum") == 1
        finally:
            release.set()
    rows = traffic.read_requests(log)  # the app's shutdown wrote what was queued
    assert rows[0]["finish_reason"] == "cancelled" and rows[0]["completion_tokens"] == 0  # never generated
    assert rows[1]["finish_reason"] in ("stop", "length")


def test_a_request_past_the_timeout_is_504(lively: Path) -> None:
    models = adapters.load(adapters.plan(str(lively), name="m"))
    app = create_app(models, Limits(timeout=1.0))
    release = threading.Event()
    with running(app) as url:
        app.state.served.batcher.call(lambda: release.wait(60))
        try:
            r = httpx.post(url + "/v1/chat/completions", json={"model": "m", "messages": CHAT}, timeout=60)
            assert r.status_code == 504 and r.json()["error"]["code"] == "timeout"
        finally:
            release.set()
        assert httpx.get(url + "/health").status_code == 200


# --------------------------------------------------------------------------- the text stream, rows


def test_text_stream_never_shows_a_stop_string_or_its_start() -> None:
    from tuneloop.serve.batcher import TextStream
    from tuneloop.tiny import make_tokenizer

    tokenizer = make_tokenizer()
    ids = tokenizer("Go to Settings, then Security, then Reset password.").input_ids
    stream = TextStream(tokenizer, ["then Sec", "xyz"])
    released, stopped = "", False
    for token in ids:
        text, stopped = stream.add(token)
        released += text
        assert "then S" not in released
        if stopped:
            break
    assert stopped and released + stream.flush() == "Go to Settings, "

    # Characters split across byte-level tokens come out whole, never as U+FFFD halves.
    ids = tokenizer("Refunds 😀 for the café, ünïcode résumé.").input_ids
    plain = TextStream(tokenizer, [])
    pieces = [plain.add(t)[0] for t in ids]
    assert "".join(pieces) + plain.flush() == tokenizer.decode(ids) == "Refunds 😀 for the café, ünïcode résumé."
    assert not any("\ufffd" in piece for piece in pieces)


def test_a_row_ends_on_its_end_of_turn_token_and_at_max_tokens() -> None:
    from tuneloop.serve.batcher import Row, Sampling, TextStream
    from tuneloop.tiny import make_tokenizer

    tokenizer = make_tokenizer()
    events = []
    word = tokenizer("billing").input_ids[0]
    eos = tokenizer.eos_token_id

    def row(max_tokens: int) -> Row:
        return Row(
            0,
            [1],
            Sampling(0.0, 1.0, max_tokens, (), 0),
            None,
            TextStream(tokenizer, ()),
            frozenset({eos}),
            events.append,
        )

    stopping = row(5)
    assert stopping.advance(word) and not stopping.advance(eos)
    assert (events[-1].finish_reason, events[-1].tokens) == ("stop", 2)
    capped = row(2)
    assert capped.advance(word) and not capped.advance(word)
    assert (events[-1].finish_reason, events[-1].tokens) == ("length", 2)


# --------------------------------------------------------------------------- the CLI and run folders


def test_cli_refuses_to_bind_beyond_loopback_without_a_key(cli, lively: Path) -> None:
    result = cli("serve", "--model", str(lively), "--host", "0.0.0.0")
    assert result.code == 1 and "--api-key" in result.err


def test_cli_errors_are_clear(cli, tmp_path: Path, lively: Path) -> None:
    bad = cli("serve", "--adapter", "no-equals-sign")
    assert bad.code == 1 and "NAME=RUN" in bad.err
    missing = cli("serve", "--run", str(tmp_path / "nope"), "--config", str(tmp_path / "tuneloop.yaml"))
    assert missing.code == 1 and "no run folder" in missing.err
    nothing = cli("serve")
    assert nothing.code == 1 and "nothing to serve" in nothing.err
    pickled = tmp_path / "pickled"
    pickled.mkdir()
    (pickled / "config.json").write_text('{"architectures": ["LlamaForCausalLM"]}')
    (pickled / "pytorch_model.bin").write_bytes(b"not loaded")
    refused = cli("serve", "--model", str(pickled))
    assert refused.code == 1 and "safetensors" in refused.err


def test_an_adapter_saved_as_a_pickle_is_refused(tmp_path: Path, lively: Path) -> None:
    run = make_adapter_run(tmp_path, lively, 1)
    final = run / "final"
    (final / "adapter_model.safetensors").rename(final / "adapter_model.bin")
    with pytest.raises(UserError, match="safetensors"):
        adapters.read_run(run)


def test_an_adapter_from_another_base_is_refused(tmp_path: Path, lively: Path) -> None:
    from tuneloop.tiny import make_tiny_llama

    other = make_tiny_llama(tmp_path / "other-base")
    run = make_adapter_run(tmp_path, lively, 1)
    with pytest.raises(UserError, match="only works on its own base"):
        adapters.load(adapters.plan(str(other), adapters={"a": adapters.read_run(run)}))


def test_vllm_command_serves_the_same_base_adapters_and_template(tmp_path: Path, lively: Path) -> None:
    from tuneloop.serve import vllm

    run_a = make_adapter_run(tmp_path, lively, 1)
    run_b = make_adapter_run(tmp_path, lively, 2)
    plan = adapters.plan(run=adapters.read_run(run_a), adapters={"b": adapters.read_run(run_b)})
    argv = vllm.command(vllm.plan_for(plan), "127.0.0.1", 8123, 32)
    assert argv[1:3] == ["-m", "vllm.entrypoints.openai.api_server"]
    flags = dict(itertools.pairwise(argv))
    assert flags["--model"] == str(lively.resolve()) and flags["--served-model-name"] == lively.name
    assert flags["--chat-template"] == str(run_a / "final" / "chat_template.jinja")
    assert flags["--max-num-seqs"] == "32" and flags["--port"] == "8123" and flags["--max-lora-rank"] == "8"
    modules = argv[argv.index("--lora-modules") + 1 :]
    assert modules == [f"{run_a.name}={run_a / 'final'}", f"b={run_b / 'final'}"]
    assert "--enable-lora" in argv and "--trust-remote-code" not in argv


def test_vllm_backend_without_vllm_or_a_gpu_is_a_clear_error(cli, lively: Path, monkeypatch) -> None:
    import importlib.util

    import torch

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "vllm" else real(name, *a))
    result = cli("serve", "--model", str(lively), "--backend", "vllm")
    assert result.code == 1 and "pip install vllm" in result.err
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: object() if name == "vllm" else real(name, *a))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    result = cli("serve", "--model", str(lively), "--backend", "vllm")
    assert result.code == 1 and "NVIDIA GPU" in result.err


def test_cli_serves_a_run_by_id_with_its_key_log_and_caps(cli, tmp_path: Path, lively: Path, monkeypatch) -> None:
    """`tuneloop serve --run ID` wires the registry, the plan, the caps, the key and the log into the app."""
    import uvicorn

    run = make_adapter_run(tmp_path, lively, 1)
    project = run.parent.parent
    started = {}
    monkeypatch.setattr(uvicorn, "run", lambda app, **kwargs: started.update(app=app, **kwargs))
    monkeypatch.chdir(project)
    result = cli("serve", "--run", run.name[:12], "--api-key", "k", "--max-n", "2", "--port", "8123", "--log")
    assert result.code == 0, result.err
    assert (started["host"], started["port"]) == ("127.0.0.1", 8123)
    with running(started["app"]) as url:
        client = openai.OpenAI(base_url=url + "/v1", api_key="k", max_retries=0, timeout=60)
        assert {m.id for m in client.models.list()} == {run.name, lively.name}
        reply = client.chat.completions.create(model=run.name, messages=CHAT, max_tokens=3)
        with pytest.raises(openai.BadRequestError, match="at most 2"):
            client.chat.completions.create(model=run.name, messages=CHAT, max_tokens=3, n=3)
        assert httpx.get(url + "/v1/models").status_code == 401
    (row,) = traffic.read_requests(project / "monitor" / "traffic.sqlite")
    assert row["id"] == reply.id and row["redacted"]  # the project's data.pii is on by default
    latest = cli("serve", "--run", "latest")
    assert latest.code == 0 and run.name in started["app"].state.served.models.entries
    assert started["app"].state.served.log is None  # logging is opt-in
