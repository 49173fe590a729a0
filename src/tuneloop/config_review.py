"""The `review:` section of tuneloop.yaml: how `tuneloop review` builds and serves human reviews."""

from __future__ import annotations

from pydantic import Field, field_validator

from tuneloop.config_yaml import Section

DEFAULT_CRITERIA = ["factual accuracy", "tone", "helpfulness", "follows policy"]


class ReviewConfig(Section):
    """Human review of model outputs (`tuneloop review create / serve / results / export`)."""

    criteria: list[str] = Field(
        default_factory=lambda: list(DEFAULT_CRITERIA),
        description="Rubric criteria, each scored 1-5 by reviewers in rubric mode.",
    )
    overlap: int = Field(
        default=2,
        ge=1,
        description="Reviewers who see each item; 2 or more lets `review results` measure their agreement.",
    )
    sample: int = Field(default=100, gt=0, description="Items drawn for a new review (--sample overrides it).")
    seed: int = Field(default=0, description="Seeds the sample and the hidden order of the answers.")
    dir: str = Field(default="reviews", description="Where reviews.sqlite lives, relative to the config file.")
    max_body_kb: int = Field(default=64, gt=0, description="Largest request the review server accepts, in KiB.")

    @field_validator("criteria")
    @classmethod
    def _criteria(cls, value: list[str]) -> list[str]:
        names = [c.strip() for c in value]
        if not names or any(not c for c in names):
            raise ValueError("give at least one criterion, each a non-empty name")
        if len(set(names)) != len(names):
            raise ValueError("criteria must be unique")
        return names
