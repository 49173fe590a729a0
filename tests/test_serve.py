"""`tuneloop serve` on the tiny Llama: the official openai client over loopback, the training renderer's
prompts, batching, OpenAI semantics, the safety caps, bad input, the admin routes, /metrics and the log."""

from __future__ import annotations

import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import httpx
import openai
import pytest

from tests.serve_helpers import make_adapter_run, make_lively_llama, running
from tuneloop import traffic
from tuneloop.serve import adapters
from tuneloop.serve.app import Limits, create_app
from tuneloop.serve.reqlog import RequestLog

KEY, ADMIN = "test-key-123", "admin-key-456"
CHAT = [{"role": "user", "content": "How do I reset my password?"}]


@dataclass
class Server:
    url: str
    log: Path
    models: adapters.ModelSet
    runs: dict[str, Path]
    request_log: RequestLog

    def client(self, key: str = KEY) -> openai.OpenAI:
        return openai.OpenAI(base_url=self.url + "/v1", api_key=key, max_retries=0, timeout=120)

    def post(self, path: str, body: object, key: str = KEY, **kwargs) -> httpx.Response:
        return httpx.post(self.url + path, json=body, headers={"Authorization": f"Bearer {key}"}, timeout=120, **kwargs)


@pytest.fixture(scope="module")
def lively(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_lively_llama(tmp_path_factory.mktemp("lively") / "tiny")


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory, lively: Path) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("serve-runs")
    return {name: make_adapter_run(root, lively, seed) for name, seed in (("a", 1), ("b", 2), ("c", 3))}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, lively: Path, runs: dict[str, Path]):
    """base + adapters a and b, with an API key, an admin key and small caps; stopped after the module."""
    log = tmp_path_factory.mktemp("serve-log") / "traffic.sqlite"
    plan = adapters.plan(str(lively), adapters={n: adapters.read_run(runs[n]) for n in ("a", "b")}, name="base")
    models = adapters.load(plan)
    limits = Limits(
        api_key=KEY,
        admin_key=ADMIN,
        max_body_bytes=20_000,
        max_input_tokens=200,
        max_tokens=64,
        max_n=4,
        max_batch=8,
        batch_window=0.02,
    )
    request_log = RequestLog(log)
    app = create_app(models, limits, request_log, resolve_run=lambda ref: runs.get(ref, Path(ref)))
    with running(app) as url:
        yield Server(url, log, models, runs, request_log)


def _greedy(client: openai.OpenAI, model: str, messages=CHAT, max_tokens: int = 12, **kwargs):
    return client.chat.completions.create(
        model=model, messages=messages, temperature=0, max_tokens=max_tokens, **kwargs
    )


# --------------------------------------------------------------------------- the openai client


def test_openai_client_chat_picks_each_adapter_by_name(server: Server, lively: Path) -> None:
    """Each name answers with its own weights: the same greedy text as that adapter loaded alone."""
    from peft import PeftModel

    from tuneloop.generate import generate_batch
    from tuneloop.models import load_causal_lm

    client = server.client()
    assert {m.id for m in client.models.list()} == {"base", "a", "b"}
    answers = {}
    for name in ("base", "a", "b"):
        reply = _greedy(client, name)
        assert reply.model == name and reply.object == "chat.completion"
        answers[name] = reply.choices[0].message.content
        model, tokenizer = load_causal_lm(str(lively))
        if name != "base":
            model = PeftModel.from_pretrained(model, str(server.runs[name] / "final"))
        alone = generate_batch(model, tokenizer, [CHAT], max_new_tokens=12)[0]
        assert answers[name].strip() == alone.text
    assert len(set(answers.values())) == 3, answers


def test_openai_client_streams_chat_and_completions(server: Server) -> None:
    client = server.client()
    whole = _greedy(client, "a")
    chunks = list(_greedy(client, "a", stream=True, stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == whole.choices[0].finish_reason
    assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens

    done = client.completions.create(model="b", prompt="Refunds are", max_tokens=8, temperature=0)
    streamed = client.completions.create(model="b", prompt="Refunds are", max_tokens=8, temperature=0, stream=True)
    assert "".join(c.choices[0].text for c in streamed) == done.choices[0].text
    assert done.usage.prompt_tokens == len(server.models.tokenizer("Refunds are").input_ids)


def test_usage_n_and_length_finish(server: Server) -> None:
    reply = server.client().chat.completions.create(
        model="base", messages=CHAT, max_tokens=5, n=3, temperature=1.0, seed=3
    )
    assert len(reply.choices) == 3 and [c.index for c in reply.choices] == [0, 1, 2]
    tokens = reply.usage.completion_tokens
    assert reply.usage.total_tokens == reply.usage.prompt_tokens + tokens
    assert tokens <= 15
    if tokens == 15:
        assert {c.finish_reason for c in reply.choices} == {"length"}


def test_completions_take_several_prompts_with_n_choices_each(server: Server) -> None:
    prompts = ["Refunds are", "Go to Settings, then"]
    reply = server.client().completions.create(model="a", prompt=prompts, n=2, max_tokens=4, temperature=0)
    assert [c.index for c in reply.choices] == [0, 1, 2, 3]
    assert reply.choices[0].text == reply.choices[1].text  # greedy: both choices of a prompt agree
    tokenizer = server.models.tokenizer
    assert reply.usage.prompt_tokens == sum(len(tokenizer(p).input_ids) for p in prompts)


def test_same_seed_same_sample(server: Server) -> None:
    client = server.client()

    def sample(seed: int) -> str:
        r = client.chat.completions.create(model="a", messages=CHAT, temperature=1.3, max_tokens=16, seed=seed)
        return r.choices[0].message.content

    assert sample(11) == sample(11)
    assert len({sample(s) for s in (1, 2, 3, 4)}) > 1  # the seed is used: different seeds differ
    # Extreme values are answers, not a failed batch: a huge seed, a vanishing temperature (greedy).
    odd = client.chat.completions.create(model="a", messages=CHAT, temperature=1e-300, max_tokens=12, seed=2**70)
    assert odd.choices[0].message.content == _greedy(client, "a").choices[0].message.content


def test_stop_strings_cut_before_the_stop(server: Server) -> None:
    client = server.client()
    full = _greedy(client, "b", max_tokens=24).choices[0].message.content
    stop = full[len(full) // 2 : len(full) // 2 + 2]
    assert stop.strip(), full  # the tiny model must say something to cut
    expected = full[: full.index(stop)]
    cut = _greedy(client, "b", max_tokens=24, stop=[stop, "never-said"])
    assert cut.choices[0].message.content == expected
    assert cut.choices[0].finish_reason == "stop"
    streamed = _greedy(client, "b", max_tokens=24, stop=stop, stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in streamed) == expected


# --------------------------------------------------------------------------- prompts are the trainer's


def test_server_prompt_ids_are_the_trainers_ids(server: Server) -> None:
    """The prompt the server builds is exactly the trainer's tokens up to the assistant's answer."""
    from tuneloop.data.formats import Example
    from tuneloop.data.render import Renderer

    conversation = [
        {"role": "system", "content": "You route tickets."},
        {"role": "user", "content": "refund please"},
        {"role": "assistant", "content": "billing"},
        {"role": "user", "content": "and my password?"},
    ]
    entry = server.models.entries["a"]
    prompt = entry.renderer.prompt_ids(conversation)
    trained = Renderer(entry.tokenizer).render(
        Example("t:1", "chat", messages=[*conversation, {"role": "assistant", "content": "account"}])
    )
    assert trained.input_ids[: len(prompt)] == prompt
    assert trained.weights[len(prompt) - 1] == 0 and trained.weights[len(prompt)] > 0  # the answer starts there
    reply = _greedy(server.client(), "a", messages=conversation)
    assert reply.usage.prompt_tokens == len(prompt)


def test_a_runs_own_chat_template_is_used(tmp_path: Path, lively: Path) -> None:
    """A run serves with the template in its final/ tokenizer, and so does its base (as eval compared them)."""
    from tuneloop.tiny import CHATML_TEMPLATE

    template = CHATML_TEMPLATE.replace("You are a helpful assistant.", "You answer support tickets.")
    run = make_adapter_run(tmp_path, lively, 5, template=template)
    models = adapters.load(adapters.plan(run=adapters.read_run(run)))
    assert set(models.entries) == {run.name, lively.name}
    for entry in models.entries.values():
        assert entry.tokenizer.chat_template == template
        assert "You answer support tickets." in entry.tokenizer.decode(entry.renderer.prompt_ids(CHAT))


# --------------------------------------------------------------------------- batching


def test_batched_greedy_equals_each_request_alone(lively: Path) -> None:
    """Left padding, the mask and position ids are right: a row decodes the same in a batch as alone."""
    from tuneloop.serve.batcher import Batcher, Row, Sampling, TextStream

    plan = adapters.plan(str(lively), name="tiny")
    models = adapters.load(plan)
    entry = models.entries["tiny"]
    prompts = [entry.renderer.prompt_ids([{"role": "user", "content": "refund " * n}]) for n in (1, 9, 3, 14, 6)]
    sizes: list[int] = []
    batcher = Batcher(models.use, models.pad_id, max_batch=8, window=0.5, on_batch=sizes.append).start()

    def run(batch: list[list[int]]) -> list[list[int]]:
        done = threading.Event()
        rows = [
            Row(
                i,
                p,
                Sampling(0.0, 1.0, 10, (), 0),
                None,
                TextStream(entry.tokenizer, ()),
                entry.stop_ids,
                lambda e: done.set() if all(r.done for r in rows) else None,
            )
            for i, p in enumerate(batch)
        ]
        batcher.submit(rows)
        assert done.wait(60)
        return [r.stream.ids for r in rows]

    try:
        together = run(prompts)
        alone = [run([p])[0] for p in prompts]
    finally:
        batcher.stop()
    assert sizes[0] == 5 and sizes[1:] == [1] * 5
    assert together == alone
    assert len({tuple(ids) for ids in together}) > 1  # different prompts, different answers


# --------------------------------------------------------------------------- safety


def test_every_route_but_health_needs_the_key(server: Server) -> None:
    assert httpx.get(server.url + "/health").status_code == 200
    with pytest.raises(openai.AuthenticationError):
        server.client(key="wrong").models.list()
    for path in ("/v1/models", "/metrics"):
        r = httpx.get(server.url + path)
        assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
    r = httpx.post(server.url + "/v1/chat/completions", json={"model": "a", "messages": CHAT})
    assert r.status_code == 401
    r = server.post("/v1/chat/completions", {"model": "a", "messages": CHAT}, key=KEY + "x")
    assert r.status_code == 401


def test_oversize_body_is_413_declared_or_streamed(server: Server) -> None:
    big = {"model": "a", "messages": [{"role": "user", "content": "x" * 30_000}]}
    r = server.post("/v1/chat/completions", big)
    assert r.status_code == 413 and r.json()["error"]["code"] == "too_large"

    def chunks():
        data = json.dumps(big).encode()
        for i in range(0, len(data), 4096):
            yield data[i : i + 4096]

    r = httpx.post(server.url + "/v1/chat/completions", content=chunks(), headers={"Authorization": f"Bearer {KEY}"})
    assert r.status_code == 413
    assert httpx.get(server.url + "/health").status_code == 200


@pytest.mark.parametrize(
    ("change", "param"),
    [
        ({"max_tokens": 65}, "max_tokens"),
        ({"max_completion_tokens": 500}, "max_completion_tokens"),
        ({"n": 5}, "n"),
        ({"messages": [{"role": "user", "content": "refund " * 300}]}, "messages"),
    ],
)
def test_caps_are_400_naming_the_field(server: Server, change: dict, param: str) -> None:
    with pytest.raises(openai.BadRequestError) as e:
        server.client().chat.completions.create(**{"model": "a", "messages": CHAT, **change})
    assert e.value.body["param"] == param
    assert param in e.value.body["message"]


# --------------------------------------------------------------------------- bad input


BAD = [
    (b"{not json", 400, None),
    (b"[1, 2]", 400, None),
    ({"model": "a"}, 400, "messages"),
    ({"model": "a", "messages": []}, 400, "messages"),
    ({"model": "a", "messages": CHAT, "logprobs": True}, 400, "logprobs"),
    ({"model": "a", "messages": CHAT, "temperature": "hot"}, 400, "temperature"),
    ({"model": "a", "messages": CHAT, "temperature": 3}, 400, "temperature"),
    ({"model": "a", "messages": CHAT, "max_tokens": 0}, 400, "max_tokens"),
    ({"model": "a", "messages": CHAT, "stop": ""}, 400, "stop"),
    ({"model": "a", "messages": CHAT, "n": "2"}, 400, "n"),
    ({"model": "a", "messages": [{"role": "wizard", "content": "hi"}]}, 400, "messages[0].role"),
    ({"model": "a", "messages": [{"role": "user"}]}, 400, "messages[0].content"),
    ({"model": "a", "messages": [{"role": "user", "content": 7}]}, 400, "messages[0].content"),
    ({"model": "a", "messages": [{"role": "user", "content": "hi<|im_end|>"}]}, 400, "messages"),
    ({"model": "nope", "messages": CHAT}, 404, "model"),
    ({"model": 5, "messages": CHAT}, 400, "model"),
]


def test_bad_input_is_a_4xx_naming_the_field_and_harms_no_one(server: Server) -> None:
    """Every bad request gets OpenAI's error shape; a request in flight at the same time is unaffected."""
    client = server.client()
    expected = _greedy(client, "a", max_tokens=40).choices[0].message.content
    with ThreadPoolExecutor(1) as pool:
        in_flight = pool.submit(
            lambda: "".join(c.choices[0].delta.content or "" for c in _greedy(client, "a", max_tokens=40, stream=True))
        )
        for body, status, param in BAD:
            kwargs = {"content": body} if isinstance(body, bytes) else {"json": body}
            r = httpx.post(server.url + "/v1/chat/completions", headers={"Authorization": f"Bearer {KEY}"}, **kwargs)
            assert r.status_code == status, (body, r.text)
            error = r.json()["error"]
            assert set(error) == {"message", "type", "param", "code"}
            assert error["param"] == param, (body, error)
            if param:
                assert param.split("[")[0] in error["message"]
        r = httpx.post(
            server.url + "/v1/completions",
            json={"model": "a", "prompt": ""},
            headers={"Authorization": f"Bearer {KEY}"},
        )
        assert r.status_code == 400 and r.json()["error"]["param"] == "prompt"
        assert in_flight.result(timeout=120) == expected
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="missing-adapter", messages=CHAT)


# --------------------------------------------------------------------------- admin, metrics, log


def test_admin_loads_and_unloads_adapters_with_its_key(server: Server) -> None:
    body = {"name": "c", "run": "c"}
    assert server.post("/admin/adapters", body).status_code == 401  # the API key is not the admin key
    r = server.post("/admin/adapters", body, key=ADMIN)
    assert r.status_code == 200, r.text
    client = server.client()
    assert "c" in {m.id for m in client.models.list()}
    answer_c = _greedy(client, "c").choices[0].message.content
    assert answer_c != _greedy(client, "a").choices[0].message.content
    again = server.post("/admin/adapters", body, key=ADMIN)
    assert again.status_code == 400 and "already served" in again.json()["error"]["message"]
    missing = server.post("/admin/adapters", {"name": "d", "run": "/no/such/run"}, key=ADMIN)
    assert missing.status_code == 400 and missing.json()["error"]["param"] == "run"

    r = httpx.delete(server.url + "/admin/adapters/c", headers={"Authorization": f"Bearer {ADMIN}"})
    assert r.status_code == 200 and r.json()["deleted"] is True
    with pytest.raises(openai.NotFoundError):
        _greedy(client, "c")
    assert "c" not in server.models.model.peft_config  # its weights are gone, not just its name
    assert _greedy(client, "a").choices[0].message.content  # the others still answer


def test_metrics_count_requests_tokens_and_batches(server: Server) -> None:
    _greedy(server.client(), "a")
    text = httpx.get(server.url + "/metrics", headers={"Authorization": f"Bearer {KEY}"}).text
    assert 'tuneloop_requests_total{route="/v1/chat/completions",status="200"}' in text
    assert 'tuneloop_request_seconds_bucket{le="0.5",route="/v1/chat/completions"}' in text
    assert 'tuneloop_completion_tokens_total{model="a"}' in text
    for name in (
        "tuneloop_prompt_tokens_total",
        "tuneloop_batch_size_count",
        "tuneloop_queue_depth",
        "tuneloop_in_flight",
    ):
        assert name in text


def test_request_log_rows(server: Server) -> None:
    reply = _greedy(server.client(), "b", messages=[{"role": "user", "content": "log me"}], n=2)
    server.request_log.flush()
    row = next(r for r in traffic.read_requests(server.log) if r["id"] == reply.id)
    assert row["model"] == "b" and row["adapter"] == "b" and row["route"] == "/v1/chat/completions"
    assert row["messages"] == [{"role": "user", "content": "log me"}] and row["prompt"] is None
    assert row["outputs"] == [c.message.content for c in reply.choices]
    assert row["output"] == reply.choices[0].message.content
    assert row["finish_reason"] == reply.choices[0].finish_reason
    assert row["prompt_tokens"] == reply.usage.prompt_tokens
    assert row["completion_tokens"] == reply.usage.completion_tokens
    assert row["latency_s"] > 0 and row["params"]["temperature"] == 0 and row["params"]["n"] == 2
    assert row["redacted"] is False  # this log was opened without a redactor
    text = server.client().completions.create(model="a", prompt=["one", "two"], max_tokens=2)
    server.request_log.flush()
    row = next(r for r in traffic.read_requests(server.log) if r["id"] == text.id)
    assert row["prompt"] == "one" and row["params"]["prompts"] == ["one", "two"] and len(row["outputs"]) == 2


def test_32_concurrent_clients_all_succeed(server: Server) -> None:
    """A short load: 32 clients in a loop for a few seconds, no request fails below the concurrency cap."""
    client = server.client()
    stop_at = time.monotonic() + 4
    failures: list[str] = []

    def loop(i: int) -> int:
        done = 0
        while time.monotonic() < stop_at:
            try:
                client.chat.completions.create(
                    model="ab"[i % 2], messages=[{"role": "user", "content": f"ticket {i}"}], max_tokens=8
                )
                done += 1
            except openai.OpenAIError as e:
                failures.append(repr(e))
        return done

    with ThreadPoolExecutor(32) as pool:
        counts = list(pool.map(loop, range(32)))
    assert not failures, failures[:3]
    assert all(c >= 1 for c in counts)


@pytest.mark.slow
def test_serving_smollm2_answers_what_evaluation_generates() -> None:
    """The embedded SmolLM2 with its real chat template: the server's greedy answer is eval's answer."""
    from tuneloop.generate import generate_batch
    from tuneloop.models import load_causal_lm

    models = adapters.load(adapters.plan("smollm2-135m-instruct"))
    conversations = [
        [{"role": "user", "content": "What is the capital of France?"}],
        [{"role": "system", "content": "Answer in one word."}, {"role": "user", "content": "Is water wet?"}],
    ]
    with running(create_app(models)) as url:
        client = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=300)
        replies = [
            client.chat.completions.create(
                model="smollm2-135m-instruct", messages=c, temperature=0, max_tokens=24
            ).choices[0]
            for c in conversations
        ]
    model, tokenizer = load_causal_lm("smollm2-135m-instruct")
    expected = generate_batch(model, tokenizer, conversations, max_new_tokens=24)
    assert [r.message.content.strip() for r in replies] == [g.text for g in expected]
    assert [r.finish_reason == "stop" for r in replies] == [g.stopped for g in expected]
    assert "Paris" in replies[0].message.content


def test_an_exported_folder_answers_like_the_run_it_came_from(server: Server, tmp_path: Path) -> None:
    """`tuneloop export` writes a merged folder; `serve --model` on it answers what the run's adapter does."""
    from tuneloop import config
    from tuneloop.export import export_run

    run = server.runs["a"]
    result = export_run(config.load(run.parent.parent / "tuneloop.yaml"), run, ["safetensors"], out=tmp_path / "x")
    models = adapters.load(adapters.plan(str(result.out), name="merged"))
    with running(create_app(models)) as url:
        client = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=120)
        merged = _greedy(client, "merged", max_tokens=16)
    assert merged.choices[0].message.content == _greedy(server.client(), "a", max_tokens=16).choices[0].message.content
