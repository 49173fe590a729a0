"""The `method.grpo:` section: reinforcement learning from rewards with `method.name: grpo` (TRL's GRPOTrainer).

For every prompt of the prepared train split, the policy samples `num_generations` answers; each answer's
reward is the weighted sum of `rewards`; each answer is pushed up or down by how its reward compares with its
group's mean, with a KL penalty (`beta`) against the starting model. The guard stops a run that goes wrong.
See train/grpo.py.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from tuneloop.config_yaml import Section


class GrpoGuardConfig(Section):
    """When a GRPO run is stopped (with a checkpoint) because the policy is going somewhere it should not."""

    max_kl: float | None = Field(
        default=1.0,
        gt=0,
        description="Stop when the mean per-token KL to the reference exceeds this (a blow-up). null: never.",
    )
    max_length_growth: float | None = Field(
        default=3.0,
        gt=1,
        description="Stop when the mean answer length exceeds this many times its value at the first step "
        "(reward hacking by length). null: never.",
    )
    max_collapsed_share: float | None = Field(
        default=0.9,
        gt=0,
        le=1,
        description="Stop when, at every step of a `window`, more than this share of prompts got K identical "
        "answers (collapse to one answer: no group left to compare). null: never.",
    )
    window: int = Field(default=5, ge=1, description="Steps the collapse must last before it stops the run.")


class GrpoConfig(Section):
    """`method.name: grpo`: what rewards the answers, how many are sampled, how far the policy may move."""

    rewards: list[str] = Field(
        default_factory=list,
        description="Reward functions, summed: json_valid, json_schema (eval.json_schema's schema), exact_match "
        "(against the example's answer), json_fields (the share of its JSON fields right), length (a penalty beyond "
        "max_chars), or module:function from the project "
        "folder, fn(prompt, response[, reference]) -> float.",
    )
    weights: list[float] | None = Field(default=None, description="One weight per reward (default: all 1).")
    adapter: Literal["lora", "dora", "full"] = Field(
        default="lora",
        description="Which weights train: lora or dora (method.lora settings; the reference is the model with "
        "the adapter off), or full (a frozen copy of the model is the reference).",
    )
    start: str | None = Field(
        default=None,
        description="A run folder (usually an SFT run of this project) whose final model is the starting point and "
        "the KL reference; its adapter is folded into the base first, and final/ is then a whole model. "
        "Empty: the base model (model.name).",
    )
    num_generations: int = Field(default=4, ge=2, description="Answers sampled per prompt (the group, K).")
    max_completion_length: int = Field(default=128, ge=1, description="Longest sampled answer, in tokens.")
    temperature: float = Field(default=1.0, gt=0, description="Sampling temperature of the answers.")
    beta: float = Field(
        default=0.04,
        ge=0,
        description="Weight of the KL penalty against the reference; 0 turns the penalty (and its logging) off.",
    )
    max_chars: int = Field(default=512, ge=1, description="The length reward's allowance, in characters.")
    guard: GrpoGuardConfig = Field(default_factory=GrpoGuardConfig)

    @model_validator(mode="after")
    def _start_needs_an_adapter(self) -> GrpoConfig:
        if self.start and self.adapter == "full":
            # TRL builds a full run's reference from the model's config path: the base, not the start run.
            raise ValueError("method.grpo.start needs adapter lora or dora (the adapter-off model is the start run)")
        return self

    @model_validator(mode="after")
    def _weights_match(self) -> GrpoConfig:
        if self.weights is not None and len(self.weights) != len(self.rewards):
            raise ValueError(
                f"method.grpo.weights has {len(self.weights)} values for {len(self.rewards)} rewards; give one each"
            )
        return self
