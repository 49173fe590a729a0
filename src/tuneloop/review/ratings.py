"""What a reviewer may send, and how the letters they see become systems.

Reviewers see answers as A, B, C...; which system wrote which stays on the server. A submission
names letters; `to_rating` checks it against the review's mode and the item, and resolves each
letter to its system before anything is stored.
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from tuneloop.review.store import Item, Rating, Review

FLAGS = ("hallucination", "unsafe")
MAX_COMMENT = 5_000
MAX_CORRECTION = 20_000
SUBMISSION_ID = re.compile(r"^[A-Za-z0-9_-]{8,64}$")


class FieldError(ValueError):
    """A bad submission: `field` names what to fix, the message says why."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


class Submission(BaseModel):
    """The JSON body of POST /api/r/{review}/{pos}."""

    model_config = ConfigDict(extra="forbid")

    submission_id: str = Field(min_length=8, max_length=64, pattern=SUBMISSION_ID.pattern)
    choice: Literal["A", "B", "tie", "both_bad"] | None = None
    scores: dict[str, int] | None = None
    ranking: list[str] | None = Field(default=None, max_length=26)
    hallucination: list[str] = Field(default_factory=list, max_length=26)
    unsafe: list[str] = Field(default_factory=list, max_length=26)
    comment: str = Field(default="", max_length=MAX_COMMENT)
    correction: str = Field(default="", max_length=MAX_CORRECTION)


def parse(data: object) -> Submission:
    """Validate a decoded JSON body; a FieldError names the first bad field."""
    if not isinstance(data, dict):
        raise FieldError("body", "the request body must be a JSON object")
    try:
        return Submission.model_validate(data)
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "body"
        if first["type"] == "extra_forbidden":
            raise FieldError(where, f"unknown field '{where}'") from None
        raise FieldError(where, f"'{where}': {first['msg']}") from None


def letters(item: Item) -> list[str]:
    """The letters of the answers as this item shows them."""
    return [chr(ord("A") + i) for i in range(len(item.shown))]


def system_of(item: Item, letter: str) -> str:
    return item.candidates[item.shown[ord(letter) - ord("A")]].system


def to_rating(review: Review, item: Item, reviewer: str, body: Submission) -> Rating:
    """Check a submission against the review's mode and this item; resolve letters to systems."""
    shown = letters(item)
    rating = Rating(review.name, item.idx, reviewer, body.submission_id, comment=body.comment.strip())
    rating.correction = body.correction.strip()
    if review.mode == "pairwise":
        if body.choice is None:
            raise FieldError("choice", "'choice' is required: A, B, tie or both_bad")
        rating.choice = system_of(item, body.choice) if body.choice in ("A", "B") else body.choice
    elif body.choice is not None:
        raise FieldError("choice", f"'choice' is for pairwise reviews; this one is {review.mode}")
    if review.mode == "rubric":
        if body.scores is None:
            raise FieldError("scores", f"'scores' is required: 1-5 for each of {', '.join(review.criteria)}")
        missing = [c for c in review.criteria if c not in body.scores]
        unknown = [c for c in body.scores if c not in review.criteria]
        if missing or unknown:
            raise FieldError(
                "scores", f"'scores' must rate exactly {', '.join(review.criteria)}" + _listed(missing, unknown)
            )
        bad = {c: s for c, s in body.scores.items() if not 1 <= s <= 5}
        if bad:
            name = next(iter(bad))
            raise FieldError(f"scores.{name}", f"'scores.{name}' must be 1-5, got {bad[name]}")
        rating.scores = {c: body.scores[c] for c in review.criteria}
    elif body.scores is not None:
        raise FieldError("scores", f"'scores' are for rubric reviews; this one is {review.mode}")
    if review.mode == "ranking":
        if body.ranking is None or sorted(body.ranking) != shown:
            raise FieldError("ranking", f"'ranking' must list each of {', '.join(shown)} once, best first")
        rating.ranking = [system_of(item, x) for x in body.ranking]
    elif body.ranking is not None:
        raise FieldError("ranking", f"'ranking' is for ranking reviews; this one is {review.mode}")
    for flag in FLAGS:
        given = getattr(body, flag)
        wrong = [x for x in given if x not in shown]
        if wrong:
            raise FieldError(flag, f"'{flag}' lists answers {wrong}; this item shows {', '.join(shown)}")
        for x in dict.fromkeys(given):
            rating.flags.setdefault(system_of(item, x), []).append(flag)
    return rating


def to_letters(item: Item, rating: Rating) -> dict[str, object]:
    """A stored rating as the page shows it again (letters instead of systems), to prefill the form."""
    letter_of = {system_of(item, x): x for x in letters(item)}
    return {
        "choice": letter_of.get(rating.choice, rating.choice) if rating.choice else None,
        "scores": rating.scores,
        "ranking": [letter_of[s] for s in rating.ranking] if rating.ranking else None,
        **{f: [letter_of[s] for s, raised in rating.flags.items() if f in raised] for f in FLAGS},
        "comment": rating.comment,
        "correction": rating.correction,
    }


def _listed(missing: list[str], unknown: list[str]) -> str:
    parts = ([f"missing {', '.join(missing)}"] if missing else []) + (
        [f"unknown {', '.join(unknown)}"] if unknown else []
    )
    return " (" + "; ".join(parts) + ")"
