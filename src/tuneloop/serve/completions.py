"""Answering one generation request: checking it against the caps, handing its rows to the batcher,
and turning their events into OpenAI's response, whole or as server-sent events.

A request becomes a `Job`: n rows per prompt, each streaming its text back through the event loop.
Its end (finished, timed out, or the client gone) cancels what is left, counts the tokens for
/metrics and writes one row of the request log.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from tuneloop.serve.adapters import Entry, ModelSet
from tuneloop.serve.batcher import Batcher, Event, Row, Sampling, TextStream
from tuneloop.serve.metrics import Metrics
from tuneloop.serve.reqlog import RequestLog
from tuneloop.serve.schemas import ApiError, ChatRequest, CompletionRequest
from tuneloop.traffic import FinishReason, TrafficRow, now


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
            self.served.log.record(self.traffic_row())

    def traffic_row(self) -> TrafficRow:
        """This request and its answers as one row of the traffic log."""
        prompts = self.logged.get("prompt")
        params = dict(self.params, prompts=prompts) if prompts and len(prompts) > 1 else self.params
        return TrafficRow(
            id=self.id,
            time=self.arrived,
            route=self.route,
            model=self.model,
            adapter=self.adapter,
            messages=self.logged.get("messages"),
            prompt=prompts[0] if prompts else None,
            output=self.texts[0],
            outputs=list(self.texts),
            finish_reason=self.reasons[0] or "cancelled",
            prompt_tokens=self.prompt_tokens,
            completion_tokens=sum(self.tokens),
            latency_s=round(time.perf_counter() - self.started, 4),
            params=params,
        )

    def usage(self) -> dict[str, int]:
        done = sum(self.tokens)
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": done,
            "total_tokens": self.prompt_tokens + done,
        }


def build_job(
    served: Served,
    request: Request,
    route: str,
    body: ChatRequest | CompletionRequest,
    entry: Entry,
    prompts: list[list[int]],
    prompt_field: str,
) -> Job:
    """Check the request against the caps and build its rows (n per prompt); nothing runs yet."""
    limits = served.limits
    if body.n > limits.max_n:
        raise ApiError(400, f"'n' is {body.n}; this server allows at most {limits.max_n}", "n", "invalid_value")
    limit_field = "max_completion_tokens" if getattr(body, "max_completion_tokens", None) else "max_tokens"
    requested = body.limit()
    if requested is not None and requested > limits.max_tokens:
        raise ApiError(
            400,
            f"'{limit_field}' is {requested}; this server allows at most {limits.max_tokens}",
            limit_field,
            "invalid_value",
        )
    context = served.models.context_length
    longest = max(len(p) for p in prompts)
    cap = min(limits.max_input_tokens, context - 1) if context else limits.max_input_tokens
    if longest > cap:
        raise ApiError(
            400,
            f"'{prompt_field}' is {longest} tokens; this server accepts at most {cap}",
            prompt_field,
            "context_length_exceeded",
        )
    room = context - longest if context else limits.max_tokens
    max_tokens = min(requested or limits.max_tokens, limits.max_tokens, room)
    if requested is not None and requested > room:
        raise ApiError(
            400,
            f"'{prompt_field}' ({longest} tokens) plus '{limit_field}' ({requested}) exceed the "
            f"model's context of {context} tokens",
            limit_field,
            "context_length_exceeded",
        )
    job = Job(
        served,
        request,
        route,
        entry.name,
        entry.adapter,
        [],
        sum(len(p) for p in prompts),
        params={
            "temperature": body.temperature,
            "top_p": body.top_p,
            "max_tokens": max_tokens,
            "stop": body.stop_list(),
            "seed": body.seed,
            "n": body.n,
        },
        id=("chatcmpl-" if route.endswith("chat/completions") else "cmpl-") + uuid.uuid4().hex[:24],
    )
    loop = asyncio.get_running_loop()

    def emit(event: Event) -> None:
        loop.call_soon_threadsafe(job.events.put_nowait, event)

    base_seed = body.seed if body.seed is not None else secrets.randbits(62)
    for p, prompt in enumerate(prompts):
        for i in range(body.n):
            index = p * body.n + i
            seed = (base_seed + i) % 2**64  # any JSON integer becomes a seed torch accepts
            sampling = Sampling(body.temperature, body.top_p, max_tokens, tuple(body.stop_list()), seed)
            stream = TextStream(entry.tokenizer, sampling.stop)
            job.rows.append(Row(index, prompt, sampling, entry.adapter, stream, entry.stop_ids, emit))
    job.texts, job.tokens, job.reasons = [""] * len(job.rows), [0] * len(job.rows), [None] * len(job.rows)
    return job


async def respond(job: Job, stream: bool, include_usage: bool | None) -> Response:
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
        raise ApiError(
            504,
            f"the request took longer than the server's timeout of {job.served.limits.timeout:g} s",
            type="timeout",
            code="timeout",
        ) from None
    finally:
        job.close("cancelled")
    _raise_row_error(job)
    return JSONResponse(_final_body(job))


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
    chat = job.route.endswith("chat/completions")

    def chunk(index: int, text: str | None, reason: str | None) -> str:
        if chat:
            delta = {"role": "assistant", "content": ""} if text is None else ({"content": text} if text else {})
            choice: dict[str, Any] = {"index": index, "delta": delta, "logprobs": None, "finish_reason": reason}
            obj = "chat.completion.chunk"
        else:
            choice, obj = (
                {"index": index, "text": text or "", "logprobs": None, "finish_reason": reason},
                "text_completion",
            )
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
                job.served.metrics.errors.labels(job.route, "500").inc()  # sent in the stream, after a 200
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
        job.served.metrics.errors.labels(job.route, "504").inc()
        yield _data(ApiError(504, "the request exceeded the server's timeout", type="timeout", code="timeout").body())
        return
    if include_usage:
        yield _data(
            {
                "id": job.id,
                "object": "chat.completion.chunk" if chat else "text_completion",
                "created": job.created,
                "model": job.model,
                "choices": [],
                "usage": job.usage(),
            }
        )
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
    return {
        "id": job.id,
        "object": "chat.completion" if chat else "text_completion",
        "created": job.created,
        "model": job.model,
        "choices": choices,
        "usage": job.usage(),
        "system_fingerprint": None,
    }
