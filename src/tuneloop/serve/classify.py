"""`tuneloop serve` for a classifier (a classification run, or a folder `tuneloop export` wrote for one).

  GET  /health            liveness and the served name (never needs a key)
  GET  /v1/models         the served name
  POST /v1/classify       {"input": "text" | ["text", ...], "model"?: name} → each text's label and probabilities
  GET  /metrics           Prometheus metrics

The same guard as the generative server stands in front (app.py's Guard: API key, body size, concurrency
limit, metrics), errors have the same JSON shape, and a bad field gets a 400 naming it. One worker thread
at a time runs the model (a lock), so concurrent requests queue rather than compete for the cores.
"""

from __future__ import annotations

import asyncio
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import Response
from pydantic import Field
from starlette.exceptions import HTTPException

from tuneloop.classifier import label_names, max_tokens, probabilities
from tuneloop.serve.app import Guard, _api_error, _http_error, _read, _server_error
from tuneloop.serve.completions import Limits
from tuneloop.serve.metrics import Metrics
from tuneloop.serve.schemas import ApiError, _Body, parse

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
    metrics: Metrics = field(default_factory=Metrics)
    in_flight: int = 0
    created: int = field(default_factory=lambda: int(time.time()))
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def labels(self) -> list[str]:
        return label_names(self.model)


def create_classifier_app(served: ClassifierServed) -> FastAPI:
    """The app that serves one classifier."""
    app = FastAPI(title="tuneloop serve (classifier)", docs_url=None, redoc_url=None, openapi_url=None)
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
        labels = served.labels
        data = []
        for i, row in enumerate(probs):
            ranked = sorted(zip(labels, row.tolist(), strict=True), key=lambda item: -item[1])
            shown = ranked[: body.top_k] if body.top_k else ranked
            data.append({"index": i, "label": ranked[0][0], "probabilities": dict(shown)})
        return {"object": "list", "model": served.name, "data": data, "usage": {"input_tokens": sum(counts)}}

    return app
