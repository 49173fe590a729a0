"""`tuneloop serve` for a classifier (a classification run, or a folder `tuneloop export` wrote for one).

  GET  /health            liveness and the served name (never needs a key)
  GET  /v1/models         the served name
  POST /v1/classify       {"input": "text" | ["text", ...], "model"?: name} → each text's id, label and probabilities
  POST /v1/feedback       thumbs up/down, a correction (one of the labels) for a text's id (needs --log)
  GET  /metrics           Prometheus metrics

The same guard as the generative server stands in front (app.py's Guard: API key, body size, concurrency
limit, metrics), errors have the same JSON shape, and a bad field gets a 400 naming it. One worker thread
at a time runs the model (a lock), so concurrent requests queue rather than compete for the cores.

With `--log`, every classified text is one row of the traffic log (tuneloop.traffic), as a completion is:
the text as its prompt, the predicted label as its output, every label's probability in its params, and
the request's latency; the writer redacts PII as the generative server's does. So `tuneloop monitor`
measures drift on classifier traffic, and `tuneloop monitor export` turns a corrected label into a
`{text, label}` training record.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import Response
from pydantic import Field
from starlette.exceptions import HTTPException

from tuneloop.classifier import label_names, max_tokens, probabilities
from tuneloop.serve.app import Guard, _api_error, _http_error, _read, _server_error, store_feedback
from tuneloop.serve.completions import Limits
from tuneloop.serve.metrics import Metrics
from tuneloop.serve.reqlog import RequestLog
from tuneloop.serve.schemas import ApiError, FeedbackRequest, _Body, parse
from tuneloop.traffic import TrafficRow, now

MAX_INPUTS = 256  # texts in one request; more is a 400 (the body cap bounds their size)


class ClassifyRequest(_Body):
    input: str | list[str]
    model: str | None = None
    top_k: int | None = Field(default=None, ge=1, description="Return only the k most probable labels per text.")

    def texts(self) -> list[str]:
        return [self.input] if isinstance(self.input, str) else list(self.input)


@dataclass
class ClassifierServed:
    """What the classifier's routes share; `limits`, `metrics` and `in_flight` are what the Guard reads."""

    name: str
    model: Any
    tokenizer: Any
    source: str
    limits: Limits
    log: RequestLog | None = None  # the traffic log (--log)
    metrics: Metrics = field(default_factory=Metrics)
    in_flight: int = 0
    created: int = field(default_factory=lambda: int(time.time()))
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def labels(self) -> list[str]:
        return label_names(self.model)


def create_classifier_app(served: ClassifierServed) -> FastAPI:
    """The app that serves one classifier. Its traffic log, if any, is closed when the app stops."""
    if served.log is not None:
        served.log.on_drop = served.metrics.log_dropped.inc

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        try:
            yield
        finally:
            if served.log is not None:
                await asyncio.to_thread(served.log.close)

    app = FastAPI(
        title="tuneloop serve (classifier)", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None
    )
    app.state.served = served
    app.add_middleware(Guard, served=served)
    app.add_exception_handler(ApiError, _api_error)
    app.add_exception_handler(HTTPException, _http_error)
    app.add_exception_handler(Exception, _server_error)
    card = {"id": served.name, "object": "model", "created": served.created, "owned_by": "tuneloop"}
    card |= {"root": served.source, "parent": None, "task": "text-classification", "labels": served.labels}

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "models": [served.name]}

    @app.get("/v1/models")
    async def list_models() -> dict[str, Any]:
        return {"object": "list", "data": [card]}

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(served.metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")

    @app.post("/v1/classify")
    async def classify(request: Request) -> dict[str, Any]:
        arrived, started = now(), time.perf_counter()
        body = parse(await _read(request, served.limits.max_body_bytes), ClassifyRequest)
        if body.model is not None and body.model != served.name:
            raise ApiError(
                404, f"the model {body.model!r} does not exist; this server serves {served.name!r}", "model",
                "model_not_found",
            )  # fmt: skip
        texts = body.texts()
        if not texts:
            raise ApiError(400, "'input' is empty: give a text or a list of texts", "input", "invalid_value")
        if len(texts) > MAX_INPUTS:
            raise ApiError(400, f"'input' has {len(texts)} texts; at most {MAX_INPUTS} per request", "input")
        counts = [len(ids) for ids in served.tokenizer(texts, add_special_tokens=True).input_ids]
        for i, n in enumerate(counts):
            if n > served.limits.max_input_tokens:
                param = "input" if isinstance(body.input, str) else f"input[{i}]"
                raise ApiError(
                    400, f"'{param}' has {n} tokens; the server's limit is {served.limits.max_input_tokens}", param
                )

        def work() -> Any:
            with served.lock:
                return probabilities(served.model, served.tokenizer, texts, max_tokens(served.model))

        try:
            probs = await asyncio.wait_for(asyncio.to_thread(work), served.limits.timeout)
        except TimeoutError:
            raise ApiError(504, f"the request took longer than {served.limits.timeout:g}s", type="timeout") from None
        served.metrics.prompt_tokens.labels(served.name).inc(sum(counts))
        labels, request_id = served.labels, "clf-" + uuid.uuid4().hex[:24]
        data = []
        for i, row in enumerate(probs):
            ranked = sorted(zip(labels, row.tolist(), strict=True), key=lambda item: -item[1])
            shown = ranked[: body.top_k] if body.top_k else ranked
            data.append({"index": i, "id": f"{request_id}-{i}", "label": ranked[0][0], "probabilities": dict(shown)})
        if served.log is not None:
            latency = round(time.perf_counter() - started, 4)
            for item, text, n, row in zip(data, texts, counts, probs, strict=True):
                every = dict(zip(labels, row.tolist(), strict=True))  # all labels, whatever top_k showed
                served.log.record(traffic_row(served.name, item, text, n, every, arrived, latency))
        return {"object": "list", "model": served.name, "data": data, "usage": {"input_tokens": sum(counts)}}

    @app.post("/v1/feedback")
    async def feedback(request: Request) -> dict[str, Any]:
        body = parse(await _read(request, served.limits.max_body_bytes), FeedbackRequest)
        if body.correction is not None and body.correction.strip() not in served.labels:
            raise ApiError(
                400,
                f"'correction' must be one of this classifier's labels ({', '.join(served.labels)}), "
                f"not {body.correction!r}",
                "correction",
                "invalid_value",
            )
        return await store_feedback(served.log, served.metrics, body)

    return app


def traffic_row(
    model: str, item: dict[str, Any], text: str, tokens: int, probs: dict[str, float], arrived: str, latency: float
) -> TrafficRow:
    """One classified text as a row of the traffic log: its text is the prompt, its label the output, and
    every label's probability is in params (the request's latency is each of its texts')."""
    return TrafficRow(
        id=item["id"],
        time=arrived,
        route="/v1/classify",
        model=model,
        adapter=None,
        messages=None,
        prompt=text,
        output=item["label"],
        outputs=[item["label"]],
        finish_reason="stop",
        prompt_tokens=tokens,
        completion_tokens=0,
        latency_s=latency,
        params={"probabilities": probs},
    )
