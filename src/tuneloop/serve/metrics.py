"""Prometheus metrics for /metrics, in a registry of the server's own (so tests can run several)."""

from __future__ import annotations

from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

# Latency of whole requests: from a few milliseconds (errors, tiny models) to minutes (long answers).
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)


@dataclass
class Metrics:
    registry: CollectorRegistry = field(default_factory=CollectorRegistry)

    def __post_init__(self) -> None:
        r = self.registry
        self.requests = Counter(
            "tuneloop_requests", "HTTP requests by route and status", ["route", "status"], registry=r
        )
        self.latency = Histogram(
            "tuneloop_request_seconds",
            "Time from request to the end of the response",
            ["route"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.prompt_tokens = Counter("tuneloop_prompt_tokens", "Prompt tokens processed", ["model"], registry=r)
        self.completion_tokens = Counter("tuneloop_completion_tokens", "Tokens generated", ["model"], registry=r)
        self.batch_size = Histogram(
            "tuneloop_batch_size", "Rows decoded together in one batch", buckets=BATCH_BUCKETS, registry=r
        )
        self.queue_depth = Gauge("tuneloop_queue_depth", "Rows waiting for the generation worker", registry=r)
        self.in_flight = Gauge("tuneloop_in_flight", "Requests being served (queued or generating)", registry=r)
        self.errors = Counter(
            "tuneloop_errors",
            "Responses with an error status (4xx, 5xx) by route and status",
            ["route", "status"],
            registry=r,
        )
        self.log_dropped = Counter(
            "tuneloop_log_dropped", "Traffic log records (requests, feedback) that could not be written", registry=r
        )
        self.feedback = Counter("tuneloop_feedback", "Feedback stored, by rating", ["rating"], registry=r)

    def render(self) -> bytes:
        return generate_latest(self.registry)
