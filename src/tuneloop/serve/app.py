"""The OpenAI-compatible HTTP app: routes, the key / size / concurrency guard, and SSE streams.

  GET  /health                 liveness and the served names (never needs a key)
  GET  /v1/models              the served names: base, merged model, adapters
  POST /v1/chat/completions    chat, rendered with the training renderer; `stream: true` for SSE
  POST /v1/completions         raw text prompts
  POST /v1/feedback            thumbs up/down, a correction for a response id (needs --log)
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
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException

from tuneloop.serve.adapters import Entry, ModelSet, read_run
from tuneloop.serve.batcher import Batcher
from tuneloop.serve.completions import Limits, Served, build_job, respond
from tuneloop.serve.metrics import Metrics
from tuneloop.serve.reqlog import RequestLog
from tuneloop.serve.schemas import (
    AdapterRequest,
    ApiError,
    ChatRequest,
    CompletionRequest,
    FeedbackRequest,
    parse,
    too_large,
)

log = logging.getLogger("tuneloop.serve")
GENERATION_ROUTES = ("/v1/chat/completions", "/v1/completions")
LIMITED_ROUTES = (*GENERATION_ROUTES, "/v1/classify")  # each holds a concurrency slot (a classifier's too)
KNOWN_ROUTES = ("/health", "/v1/models", *LIMITED_ROUTES, "/v1/feedback", "/metrics", "/admin/adapters")


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
        models.use,
        models.pad_id,
        max_batch=limits.max_batch,
        window=limits.batch_window,
        on_batch=metrics.batch_size.observe,
    )
    served = Served(models, batcher, limits, metrics, request_log, resolve_run)
    metrics.queue_depth.set_function(batcher.depth)
    if request_log is not None:
        request_log.on_drop = metrics.log_dropped.inc

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
        if error is None and route in LIMITED_ROUTES:
            if self.served.in_flight >= self.served.limits.max_concurrent:
                n = self.served.limits.max_concurrent
                error = ApiError(
                    429,
                    f"the server is serving {n} requests, its limit; retry shortly",
                    type="requests",
                    code="rate_limit_exceeded",
                )
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
            if status["code"] >= 400:
                self.served.metrics.errors.labels(route, str(status["code"])).inc()
            self.served.metrics.latency.labels(route).observe(time.perf_counter() - start)

    def _check(self, scope: dict, path: str) -> ApiError | None:
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        limits = self.served.limits
        key = limits.admin_key if path.startswith("/admin") else limits.api_key
        if path != "/health" and key is not None and not _key_matches(headers.get("authorization", ""), key):
            return ApiError(
                401,
                "missing or wrong API key: send the header 'Authorization: Bearer <key>'",
                type="invalid_request_error",
                code="invalid_api_key",
            )
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
        job = build_job(served, request, "/v1/chat/completions", body, entry, [prompt], "messages")
        job.logged = {"messages": messages, "prompt": None}
        return await respond(job, body.stream, body.stream_options and body.stream_options.include_usage)

    @app.post("/v1/completions")
    async def completions(request: Request) -> Response:
        body = parse(await _read(request, served.limits.max_body_bytes), CompletionRequest)
        entry = _entry(served, body.model)
        prompts = [list(entry.tokenizer(p).input_ids) for p in body.prompts()]
        if any(not p for p in prompts):
            raise ApiError(400, "'prompt' is empty: give the text to continue", "prompt", "invalid_value")
        job = build_job(served, request, "/v1/completions", body, entry, prompts, "prompt")
        job.logged = {"messages": None, "prompt": body.prompts()}
        return await respond(job, body.stream, body.stream_options and body.stream_options.include_usage)

    @app.post("/v1/feedback")
    async def feedback(request: Request) -> dict[str, Any]:
        body = parse(await _read(request, served.limits.max_body_bytes), FeedbackRequest)
        return await store_feedback(served.log, served.metrics, body)

    if served.limits.admin_key is not None:
        _admin_routes(app, served)


async def store_feedback(request_log: RequestLog | None, metrics: Metrics, body: FeedbackRequest) -> dict[str, Any]:
    """POST /v1/feedback after parsing (the generative and the classifier server alike): stored, or why not."""
    if request_log is None:
        raise ApiError(
            409,
            "this server keeps no traffic log, so feedback has nowhere to go: restart it with --log",
            code="logging_off",
        )
    if body.rating is None and body.correction is None and body.comment is None:
        raise ApiError(400, "give at least one of 'rating' (up or down), 'correction' or 'comment'", "rating")
    outcome = await asyncio.wrap_future(request_log.feedback(body.id, body.rating, body.correction, body.comment))
    if outcome == "unknown":
        raise ApiError(404, f"no logged response has the id {body.id!r}", "id", "not_found")
    if outcome == "dropped":
        raise ApiError(503, "the traffic log cannot be written now; the server's log says why", type="server_error")
    metrics.feedback.labels(body.rating or "none").inc()
    return {"id": body.id, "object": "feedback", "stored": True}


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
        raise ApiError(
            404, f"the model {name!r} does not exist; this server serves: {known}", "model", "model_not_found"
        )
    return entry


def _model_card(entry: Entry) -> dict[str, Any]:
    return {
        "id": entry.name,
        "object": "model",
        "created": entry.created,
        "owned_by": "tuneloop",
        "root": entry.source,
        "parent": None if entry.adapter is None else "base",
    }


async def _read(request: Request, limit: int) -> bytes:
    """The body, refused (413) as soon as it grows past `limit`, declared length or not."""
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise too_large(limit)
        chunks.append(chunk)
    return b"".join(chunks)
