"""The OpenAI-compatible HTTP app: routes, the key / size / concurrency guard, and SSE streams.

  GET  /health                 liveness and the served names (never needs a key)
  GET  /v1/models              the served names: base, merged model, adapters
  POST /v1/chat/completions    chat, rendered with the training renderer; `stream: true` for SSE
  POST /v1/completions         raw text prompts
  GET  /metrics                Prometheus metrics
  POST /admin/adapters         load a run's adapter under a name     (only with an admin key)
  DELETE /admin/adapters/NAME  unload it                              (only with an admin key)

Every error is OpenAI's JSON shape, so the `openai` client raises its usual exceptions.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import secrets
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException

from tuneloop.serve.adapters import Entry, ModelSet, read_run
from tuneloop.serve.batcher import Batcher, Event, Row, Sampling, TextStream
from tuneloop.serve.metrics import Metrics
from tuneloop.serve.reqlog import FinishReason, LogRow, RequestLog, now
from tuneloop.serve.schemas import (
    AdapterRequest,
    ApiError,
    ChatRequest,
    CompletionRequest,
    parse,
    too_large,
)

log = logging.getLogger("tuneloop.serve")
GENERATION_ROUTES = ("/v1/chat/completions", "/v1/completions")
KNOWN_ROUTES = ("/health", "/v1/models", *GENERATION_ROUTES, "/metrics", "/admin/adapters")


@dataclass(frozen=True)
class Limits:
    """The server's caps (see `tuneloop serve --help`); requests beyond them get a 4xx naming the field."""

    api_key: str | None = None  # required on every route but /health when set
    admin_key: str | None = None  # enables /admin/*, which then requires it
    max_body_bytes: int = 1 << 20
    max_input_tokens: int = 4096
    max_tokens: int = 1024
    max_n: int = 8
    max_concurrent: int = 64  # requests being served at once; more get 429
    timeout: float = 300.0  # seconds for one request
    max_batch: int = 16
    batch_window: float = 0.01


@dataclass
class Served:
    """Everything the routes share (app.state.served)."""

    models: ModelSet
    batcher: Batcher
    limits: Limits
    metrics: Metrics
    log: RequestLog | None
    resolve_run: Callable[[str], Path] | None
    in_flight: int = 0


def create_app(
    models: ModelSet,
    limits: Limits = Limits(),
    request_log: RequestLog | None = None,
    resolve_run: Callable[[str], Path] | None = None,
) -> FastAPI:
    """The app for `models`. Its generation thread starts with the app and stops with it.

    `resolve_run` turns an admin request's `run` (an id, 'latest' or a folder) into a run folder.
    """
    metrics = Metrics()
    batcher = Batcher(
        models.use, models.pad_id, max_batch=limits.max_batch, window=limits.batch_window,
        on_batch=metrics.batch_size.observe,
    )  # fmt: skip
    served = Served(models, batcher, limits, metrics, request_log, resolve_run)
    metrics.queue_depth.set_function(batcher.depth)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        batcher.start()
        try:
            yield
        finally:
            await asyncio.to_thread(batcher.stop)
            if request_log is not None:
                request_log.close()

    app = FastAPI(title="tuneloop serve", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.served = served
    app.add_middleware(Guard, served=served)
    app.add_exception_handler(ApiError, _api_error)
    app.add_exception_handler(HTTPException, _http_error)
    app.add_exception_handler(Exception, _server_error)
    _routes(app, served)
    return app


# -- the guard: keys, body size, concurrency, metrics -------------------------------------------------


class Guard:
    """ASGI middleware in front of every route.

    It checks the API key (constant-time) on every route but /health, the admin key on /admin/*,
    refuses declared bodies over the cap before reading them (413), holds one of `max_concurrent`
    slots for each generation request until its response has ended or its client went away (429
    when none is free), and counts requests, statuses and latency for /metrics.
    """

    def __init__(self, app: Any, served: Served) -> None:
        self.app, self.served = app, served

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start, path = time.perf_counter(), scope["path"]
        route = next((r for r in KNOWN_ROUTES if path == r or path.startswith(r + "/")), "other")
        status = {"code": 500}

        async def send_status(message: dict) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        error, slot = self._check(scope, path), False
        if error is None and route in GENERATION_ROUTES:
            if self.served.in_flight >= self.served.limits.max_concurrent:
                n = self.served.limits.max_concurrent
                error = ApiError(429, f"the server is serving {n} requests, its limit; retry shortly",
                                 type="requests", code="rate_limit_exceeded")  # fmt: skip
            else:
                slot = True
                self.served.in_flight += 1
                self.served.metrics.in_flight.inc()
        try:
            if error is not None:
                await _json(error.status, error.body())(scope, receive, send_status)
            else:
                await self.app(scope, receive, send_status)
        finally:
            if slot:
                self.served.in_flight -= 1
                self.served.metrics.in_flight.dec()
            self.served.metrics.requests.labels(route, str(status["code"])).inc()
            self.served.metrics.latency.labels(route).observe(time.perf_counter() - start)

    def _check(self, scope: dict, path: str) -> ApiError | None:
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        limits = self.served.limits
        key = limits.admin_key if path.startswith("/admin") else limits.api_key
        if path != "/health" and key is not None and not _key_matches(headers.get("authorization", ""), key):
            return ApiError(401, "missing or wrong API key: send the header 'Authorization: Bearer <key>'",
                            type="invalid_request_error", code="invalid_api_key")  # fmt: skip
        declared = headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limits.max_body_bytes:
            return too_large(limits.max_body_bytes)
        return None


def _key_matches(header: str, key: str) -> bool:
    scheme, _, given = header.partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), key.encode())


# -- errors -----------------------------------------------------------------------------------------


def _json(status: int, body: Any) -> JSONResponse:
    return JSONResponse(body, status_code=status)


async def _api_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ApiError)
    return _json(exc.status, exc.body())


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    message = f"no route {request.method} {request.url.path}" if exc.status_code in (404, 405) else str(exc.detail)
    return _json(exc.status_code, ApiError(exc.status_code, message, code="not_found").body())


async def _server_error(request: Request, exc: Exception) -> Response:
    log.exception("unhandled error on %s", request.url.path)
    body = ApiError(500, f"internal error: {type(exc).__name__}: {exc}", type="server_error").body()
    return _json(500, body)


# -- routes -----------------------------------------------------------------------------------------


def _routes(app: FastAPI, served: Served) -> None:
    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "models": sorted(served.models.entries)}

    @app.get("/v1/models")
    async def list_models() -> dict[str, Any]:
        return {"object": "list", "data": [_model_card(e) for e in served.models.entries.values()]}

    @app.get("/v1/models/{name:path}")
    async def get_model(name: str) -> dict[str, Any]:
        return _model_card(_entry(served, name))

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(served.metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")

    @app.post("/v1/chat/completions")
    async def chat(request: Request) -> Response:
        body = parse(await _read(request, served.limits.max_body_bytes), ChatRequest)
        entry = _entry(served, body.model)
        if entry.renderer is None:
            raise ApiError(400, f"model {entry.name!r} has no chat template; use /v1/completions", "model")
        from tuneloop.data.formats import RowError

        messages = body.conversation()
        try:
            prompt = entry.renderer.prompt_ids(messages)
        except RowError as e:
            raise ApiError(400, f"'messages': {e}", "messages", "invalid_value") from None
        job = _job(served, request, "/v1/chat/completions", body, entry, [prompt], "messages")
        job.logged = {"messages": messages, "prompt": None}
        return await _respond(job, body.stream, body.stream_options and body.stream_options.include_usage)

    @app.post("/v1/completions")
    async def completions(request: Request) -> Response:
        body = parse(await _read(request, served.limits.max_body_bytes), CompletionRequest)
        entry = _entry(served, body.model)
        prompts = [list(entry.tokenizer(p).input_ids) for p in body.prompts()]
        if any(not p for p in prompts):
            raise ApiError(400, "'prompt' is empty: give the text to continue", "prompt", "invalid_value")
        job = _job(served, request, "/v1/completions", body, entry, prompts, "prompt")
        job.logged = {"messages": None, "prompt": body.prompts()}
        return await _respond(job, body.stream, body.stream_options and body.stream_options.include_usage)

    if served.limits.admin_key is not None:
        _admin_routes(app, served)


def _admin_routes(app: FastAPI, served: Served) -> None:
    @app.post("/admin/adapters")
    async def load_adapter(request: Request) -> dict[str, Any]:
        from tuneloop.errors import UserError

        body = parse(await _read(request, served.limits.max_body_bytes), AdapterRequest)
        if served.resolve_run is None:
            raise ApiError(400, "this server cannot load runs (started without a run resolver)", "run")
        try:
            run_dir = served.resolve_run(body.run)
            run = read_run(run_dir)
            future = served.batcher.call(lambda: served.models.add_adapter(body.name, run))
            entry = await asyncio.wrap_future(future)
        except UserError as e:
            raise ApiError(400, str(e), "run", "invalid_run") from None
        return _model_card(entry)

    @app.delete("/admin/adapters/{name:path}")
    async def unload_adapter(name: str) -> dict[str, Any]:
        entry = _entry(served, name)
        if entry.adapter is None:
            raise ApiError(400, f"{name!r} is the base model, not an adapter; it cannot be unloaded", "name")
        await asyncio.wrap_future(served.batcher.call(lambda: served.models.remove(name)))
        return {"id": name, "object": "model", "deleted": True}


def _entry(served: Served, name: str) -> Entry:
    entry = served.models.entries.get(name)
    if entry is None:
        known = ", ".join(sorted(served.models.entries))
        raise ApiError(404, f"the model {name!r} does not exist; this server serves: {known}", "model",
                       "model_not_found")  # fmt: skip
    return entry


def _model_card(entry: Entry) -> dict[str, Any]:
    return {"id": entry.name, "object": "model", "created": entry.created, "owned_by": "tuneloop",
            "root": entry.source, "parent": None if entry.adapter is None else "base"}  # fmt: skip


async def _read(request: Request, limit: int) -> bytes:
    """The body, refused (413) as soon as it grows past `limit`, declared length or not."""
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise too_large(limit)
        chunks.append(chunk)
    return b"".join(chunks)


# -- generation ---------------------------------------------------------------------------------------


class ClientGone(Exception):
    """The client closed the connection before its answer was complete."""


@dataclass
class Job:
    """One generation request: its rows on the worker, and what they have produced so far."""

    served: Served
    request: Request
    route: str
    model: str
    adapter: str | None
    rows: list[Row]
    prompt_tokens: int
    params: dict[str, Any]
    events: asyncio.Queue[Event] = field(default_factory=asyncio.Queue)
    id: str = ""
    created: int = field(default_factory=lambda: int(time.time()))
    started: float = field(default_factory=time.perf_counter)
    arrived: str = field(default_factory=now)
    texts: list[str] = field(default_factory=list)
    reasons: list[FinishReason | None] = field(default_factory=list)
    tokens: list[int] = field(default_factory=list)
    logged: dict[str, Any] = field(default_factory=dict)
    submitted: bool = False
    closed: bool = False

    def submit(self) -> None:
        if not self.submitted:
            self.submitted = True
            self.served.batcher.submit(self.rows)

    def take(self, event: Event) -> None:
        self.texts[event.index] += event.text
        self.tokens[event.index] = event.tokens
        if event.finish_reason is not None:
            self.reasons[event.index] = event.finish_reason

    @property
    def finished(self) -> bool:
        return all(r is not None for r in self.reasons)

    async def next_event(self, deadline: float) -> Event:
        """The next event of any row; TimeoutError past the deadline; ClientGone if the client left."""
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError
            try:
                return await asyncio.wait_for(self.events.get(), min(left, 0.5))
            except TimeoutError:
                if await self.request.is_disconnected():
                    raise ClientGone from None

    def close(self, reason: FinishReason | None = None) -> None:
        """Cancel unfinished rows, count tokens and write the log row (once)."""
        if self.closed:
            return
        self.closed = True
        for row in self.rows:
            row.cancelled.set()
        if reason is not None:
            self.reasons = [r or reason for r in self.reasons]
        m = self.served.metrics
        m.prompt_tokens.labels(self.model).inc(self.prompt_tokens)
        m.completion_tokens.labels(self.model).inc(sum(self.tokens))
        if self.served.log is not None and self.submitted:
            self.served.log.write(
                LogRow(
                    time=self.arrived, id=self.id, route=self.route, model=self.model, adapter=self.adapter,
                    messages=self.logged.get("messages"), prompt=self.logged.get("prompt"), params=self.params,
                    outputs=self.texts, finish_reasons=[r or "cancelled" for r in self.reasons],
                    prompt_tokens=self.prompt_tokens, completion_tokens=sum(self.tokens),
                    latency_s=round(time.perf_counter() - self.started, 4),
                )  # fmt: skip
            )

    def usage(self) -> dict[str, int]:
        done = sum(self.tokens)
        return {"prompt_tokens": self.prompt_tokens, "completion_tokens": done, "total_tokens": self.prompt_tokens + done}


def _job(
    served: Served, request: Request, route: str, body: ChatRequest | CompletionRequest, entry: Entry,
    prompts: list[list[int]], prompt_field: str,
) -> Job:  # fmt: skip
    """Check the request against the caps and build its rows (n per prompt); nothing runs yet."""
    limits = served.limits
    if body.n > limits.max_n:
        raise ApiError(400, f"'n' is {body.n}; this server allows at most {limits.max_n}", "n", "invalid_value")
    limit_field = "max_completion_tokens" if getattr(body, "max_completion_tokens", None) else "max_tokens"
    requested = body.limit()
    if requested is not None and requested > limits.max_tokens:
        raise ApiError(400, f"'{limit_field}' is {requested}; this server allows at most {limits.max_tokens}",
                       limit_field, "invalid_value")  # fmt: skip
    context = served.models.context_length
    longest = max(len(p) for p in prompts)
    cap = min(limits.max_input_tokens, context - 1) if context else limits.max_input_tokens
    if longest > cap:
        raise ApiError(400, f"'{prompt_field}' is {longest} tokens; this server accepts at most {cap}", prompt_field,
                       "context_length_exceeded")  # fmt: skip
    room = context - longest if context else limits.max_tokens
    max_tokens = min(requested or limits.max_tokens, limits.max_tokens, room)
    if requested is not None and requested > room:
        raise ApiError(400, f"'{prompt_field}' ({longest} tokens) plus '{limit_field}' ({requested}) exceed the "
                       f"model's context of {context} tokens", limit_field, "context_length_exceeded")  # fmt: skip
    job = Job(
        served, request, route, entry.name, entry.adapter, [], sum(len(p) for p in prompts),
        params={"temperature": body.temperature, "top_p": body.top_p, "max_tokens": max_tokens,
                "stop": body.stop_list(), "seed": body.seed, "n": body.n},
        id=("chatcmpl-" if route.endswith("chat/completions") else "cmpl-") + uuid.uuid4().hex[:24],
    )  # fmt: skip
    loop = asyncio.get_running_loop()

    def emit(event: Event) -> None:
        loop.call_soon_threadsafe(job.events.put_nowait, event)

    base_seed = body.seed if body.seed is not None else secrets.randbits(62)
    for p, prompt in enumerate(prompts):
        for i in range(body.n):
            index = p * body.n + i
            sampling = Sampling(body.temperature, body.top_p, max_tokens, tuple(body.stop_list()), base_seed + i)
            stream = TextStream(entry.tokenizer, sampling.stop)
            job.rows.append(Row(index, prompt, sampling, entry.adapter, stream, entry.stop_ids, emit))
    job.texts, job.tokens, job.reasons = [""] * len(job.rows), [0] * len(job.rows), [None] * len(job.rows)
    return job


async def _respond(job: Job, stream: bool, include_usage: bool | None) -> Response:
    if stream:
        return EventStream(_sse(job, bool(include_usage)), on_close=job.close, media_type="text/event-stream")
    deadline = time.monotonic() + job.served.limits.timeout
    job.submit()
    try:
        while not job.finished:
            job.take(await job.next_event(deadline))
    except ClientGone:
        return Response(status_code=499)  # nobody reads it; the status shows in /metrics
    except TimeoutError:
        job.close("timeout")
        raise ApiError(504, f"the request took longer than the server's timeout of {job.served.limits.timeout:g} s",
                       type="timeout", code="timeout") from None  # fmt: skip
    finally:
        job.close("cancelled")
    _raise_row_error(job)
    return _json(200, _final_body(job))


def _raise_row_error(job: Job) -> None:
    if "error" in job.reasons:
        raise ApiError(500, "generation failed on the server; see its log", type="server_error")


class EventStream(StreamingResponse):
    """An SSE response that always runs `on_close` when the exchange ends, even if streaming never began."""

    def __init__(self, content: AsyncIterator[str], on_close: Callable[[], None], **kwargs: Any) -> None:
        super().__init__(content, **kwargs)
        self.on_close = on_close

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self.on_close()


async def _sse(job: Job, include_usage: bool) -> AsyncIterator[str]:
    """OpenAI's chunk stream: a role delta per choice, content deltas, a finish chunk each, [DONE]."""
    import json

    chat = job.route.endswith("chat/completions")

    def chunk(index: int, text: str | None, reason: str | None) -> str:
        if chat:
            delta = {"role": "assistant", "content": ""} if text is None else ({"content": text} if text else {})
            choice: dict[str, Any] = {"index": index, "delta": delta, "logprobs": None, "finish_reason": reason}
            obj = "chat.completion.chunk"
        else:
            choice, obj = {"index": index, "text": text or "", "logprobs": None, "finish_reason": reason}, "text_completion"
        return _data({"id": job.id, "object": obj, "created": job.created, "model": job.model, "choices": [choice]})

    def _data(payload: dict[str, Any]) -> str:
        return f"data: {json.dumps(payload, ensure_ascii=False)}\n\n"

    deadline = time.monotonic() + job.served.limits.timeout
    job.submit()
    if chat:
        for i in range(len(job.rows)):
            yield chunk(i, None, None)
    try:
        while not job.finished:
            event = await job.next_event(deadline)
            job.take(event)
            if event.error is not None:
                yield _data(ApiError(500, event.error, type="server_error").body())
                return
            if event.text:
                yield chunk(event.index, event.text, None)
            if event.finish_reason is not None:
                yield chunk(event.index, "", _openai_reason(event.finish_reason))
    except ClientGone:
        return
    except TimeoutError:
        job.close("timeout")
        yield _data(ApiError(504, "the request exceeded the server's timeout", type="timeout", code="timeout").body())
        return
    if include_usage:
        yield _data({"id": job.id, "object": "chat.completion.chunk" if chat else "text_completion",
                     "created": job.created, "model": job.model, "choices": [], "usage": job.usage()})  # fmt: skip
    yield "data: [DONE]\n\n"


def _openai_reason(reason: FinishReason | None) -> str:
    """OpenAI knows "stop" (end of turn or a stop string) and "length" (max_tokens)."""
    return "stop" if reason == "stop" else "length"


def _final_body(job: Job) -> dict[str, Any]:
    chat = job.route.endswith("chat/completions")
    choices = []
    for i, (text, reason) in enumerate(zip(job.texts, job.reasons, strict=True)):
        finish = _openai_reason(reason)
        if chat:
            message = {"role": "assistant", "content": text}
            choices.append({"index": i, "message": message, "logprobs": None, "finish_reason": finish})
        else:
            choices.append({"index": i, "text": text, "logprobs": None, "finish_reason": finish})
    return {"id": job.id, "object": "chat.completion" if chat else "text_completion", "created": job.created,
            "model": job.model, "choices": choices, "usage": job.usage(), "system_fingerprint": None}  # fmt: skip
