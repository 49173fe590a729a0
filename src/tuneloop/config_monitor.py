"""The `monitor:` section: how `tuneloop monitor` samples traffic and which thresholds raise an alert.

A threshold of `null` turns its alert off; the statistic is still computed and reported.
"""

from __future__ import annotations

from pydantic import Field, model_validator

from tuneloop.config_yaml import Section

_RATE = {"ge": 0, "le": 1}


class MonitorConfig(Section):
    """`tuneloop monitor`: drift of logged traffic against the training prompts, output signals, feedback."""

    drift_alpha: float = Field(
        default=0.05,
        gt=0,
        lt=1,
        description="False-alarm rate of the drift alarm on in-distribution traffic. It is split between its two "
        "tests (embedding MMD and input length, alpha/2 each, Bonferroni), so the alarm as a whole stays within it.",
    )
    min_requests: int = Field(
        default=50,
        ge=5,
        description="Fewer logged prompts than this: the drift tests report 'not enough traffic' instead of testing.",
    )
    traffic_sample: int = Field(
        default=500, ge=5, description="The drift tests use at most this many of the most recent prompts."
    )
    train_sample: int = Field(
        default=1000, ge=5, description="The drift tests compare with a seeded sample of this many training prompts."
    )
    permutations: int = Field(
        default=500, ge=99, description="Permutations of the MMD test; its p-value is at least 1/(permutations+1)."
    )
    seed: int = Field(default=0, description="Seeds the training sample and the permutations.")
    encoder: str = Field(
        default="minilm-l6", description="Sentence encoder for the embedding drift test (a model name or folder)."
    )
    max_new_term_rate: float | None = Field(
        default=0.2, **_RATE, description="Share of traffic words never seen in the training prompts."
    )
    max_empty_rate: float | None = Field(default=0.05, **_RATE, description="Share of empty answers.")
    max_truncated_rate: float | None = Field(
        default=0.1, **_RATE, description="Share of answers cut off by the token limit (finish_reason 'length')."
    )
    max_refusal_rate: float | None = Field(default=0.1, **_RATE, description="Share of answers that decline.")
    max_repetition_rate: float | None = Field(default=0.05, **_RATE, description="Share of answers that loop.")
    repetition_threshold: float = Field(
        default=0.5, gt=0, le=1, description="An answer loops when this share of its word 3-grams repeat earlier ones."
    )
    max_error_rate: float | None = Field(
        default=0.05, **_RATE, description="Share of requests that ended in an error or a timeout."
    )
    min_json_valid_rate: float | None = Field(
        default=0.95,
        **_RATE,
        description="Share of answers that are strict JSON (checked when task.metrics has json_valid or "
        "json_schema, or eval.json_schema is set) and, with eval.json_schema, valid against it.",
    )
    max_thumbs_down_rate: float | None = Field(
        default=0.2, **_RATE, description="Share of rated answers rated thumbs down."
    )
    min_feedback: int = Field(
        default=10, ge=1, description="The thumbs-down alert needs at least this many rated answers."
    )
    max_p95_latency_s: float | None = Field(
        default=None, gt=0, description="95th percentile request latency in seconds (off by default: it is hardware's)."
    )
    top_terms: int = Field(default=20, ge=1, description="New terms listed in the report.")
    top_examples: int = Field(default=10, ge=1, description="Most drifted prompts listed in the report.")

    @model_validator(mode="after")
    def _test_can_fire(self) -> MonitorConfig:
        # The smallest permutation p-value is 1/(permutations+1); below alpha/2 it could never alarm.
        if 1 / (self.permutations + 1) > self.drift_alpha / 2:
            need = int(2 / self.drift_alpha)
            raise ValueError(
                f"monitor.permutations={self.permutations} cannot give a p-value below drift_alpha/2="
                f"{self.drift_alpha / 2:g}; use at least {need} permutations"
            )
        return self
