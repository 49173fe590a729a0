"""Reward functions: the built-ins (valid JSON, JSON-Schema valid, exact match, fields right, length penalty) and the
user's own.

Every reward has one signature, `reward(prompt, response, reference) -> float`: `prompt` is the last user
message, `reference` the example's reference answer (None when it has none). GRPO trains against them
(`grpo.rewards`), and `tuneloop data candidates --score NAME` ranks sampled answers with them.

A user reward is `module:function`, imported from the project folder (then sys.path), called as
`fn(prompt, response, reference)` — or `fn(prompt, response)` when it takes two parameters — the same
convention as a user metric in `task.metrics`.
"""

from __future__ import annotations

import importlib
import inspect
import math
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tuneloop.data.json_values import parse_strict
from tuneloop.errors import UserError

Reward = Callable[[str, str, "str | None"], float]
BUILTINS = ("json_valid", "json_schema", "exact_match", "json_fields", "length")


def json_valid(prompt: str, response: str, reference: str | None = None) -> float:
    """1 when the response is strict JSON as a whole, else 0."""
    return float(parse_strict(response)[1])


def json_schema(schema: dict[str, Any]) -> Reward:
    """1 when the response is strict JSON that validates against `schema`, else 0."""
    from jsonschema.exceptions import SchemaError
    from jsonschema.validators import validator_for

    cls = validator_for(schema)
    try:
        cls.check_schema(schema)
    except SchemaError as err:
        raise UserError(f"reward json_schema: the schema is not a valid JSON Schema: {err.message}") from None
    validator = cls(schema)

    def reward(prompt: str, response: str, reference: str | None = None) -> float:
        value, ok = parse_strict(response)
        return float(ok and validator.is_valid(value))

    reward.__name__ = "json_schema"
    return reward


def exact_match(prompt: str, response: str, reference: str | None = None) -> float:
    """1 when the response equals the reference answer (surrounding whitespace aside), else 0."""
    if reference is None:
        raise ValueError("reward exact_match needs a reference answer, and this example has none")
    return float(response.strip() == reference.strip())


def json_fields(prompt: str, response: str, reference: str | None = None) -> float:
    """The share of the reference record's fields that the response gets right, from 0 to 1.

    The eval report's per-field accuracy for one answer (the same comparison): an answer that is not a JSON
    object scores 0. Unlike exact_match, a record with three fields of four right earns 0.75, so the reward
    still separates the answers of a group when none is entirely right. Keys the reference lacks are not
    counted here (json_schema is what refuses them).
    """
    from tuneloop.data.json_values import field_scores, object_fields

    if reference is None:
        raise ValueError("reward json_fields needs a reference answer, and this example has none")
    fields = object_fields([reference])
    if fields is None:
        raise ValueError(
            "reward json_fields compares JSON records, and this reference is not a JSON object: use exact_match"
        )
    scores = field_scores([response], [reference], fields)
    return float(sum(score[0] for score in scores.values()) / len(fields))


def length_penalty(max_chars: int) -> Reward:
    """0 up to `max_chars` characters, then falling linearly: -1 at twice `max_chars` (and lower beyond)."""

    def reward(prompt: str, response: str, reference: str | None = None) -> float:
        return -max(0, len(response) - max_chars) / max_chars

    reward.__name__ = "length"
    return reward


def load(spec: str, *, schema: dict[str, Any] | None = None, max_chars: int = 512, root: Path | None = None) -> Reward:
    """The reward named `spec`: a built-in (json_valid, json_schema, exact_match, json_fields, length) or
    `module:function`.

    `schema` is json_schema's JSON Schema; `max_chars` length's allowance; `root` is searched first for a
    user module (the project folder).
    """
    if spec == "json_valid":
        return json_valid
    if spec == "json_schema":
        if schema is None:
            raise UserError(
                "reward json_schema needs a JSON Schema: set eval.json_schema (GRPO) or pass --schema FILE (candidates)"
            )
        return json_schema(schema)
    if spec == "exact_match":
        return exact_match
    if spec == "json_fields":
        return json_fields
    if spec == "length":
        return length_penalty(max_chars)
    if spec.count(":") != 1 or not all(spec.split(":")):
        raise UserError(f"unknown reward {spec!r}: use one of {', '.join(BUILTINS)}, or module:function")
    return _user_reward(spec, root)


def _user_reward(spec: str, root: Path | None) -> Reward:
    module_name, function_name = spec.split(":")
    if root is not None and str(root) not in sys.path:
        sys.path.insert(0, str(root))  # kept: the function may import project modules when it runs
    importlib.invalidate_caches()
    try:
        module = importlib.import_module(module_name)
    except Exception as err:
        raise UserError(
            f"reward {spec}: cannot import {module_name!r} ({type(err).__name__}: {err}); "
            f"put {module_name}.py in the project folder or on PYTHONPATH"
        ) from None
    fn = getattr(module, function_name, None)
    if not callable(fn):
        raise UserError(f"reward {spec}: module {module_name!r} has no function {function_name!r}")
    try:
        positional = [
            p
            for p in inspect.signature(fn).parameters.values()
            if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD, p.VAR_POSITIONAL)
        ]
    except (TypeError, ValueError):
        positional = []
    takes_reference = len(positional) != 2

    def reward(prompt: str, response: str, reference: str | None = None) -> float:
        result = fn(prompt, response, reference) if takes_reference else fn(prompt, response)
        try:
            value = float(result)
        except (TypeError, ValueError):
            raise ValueError(f"reward {spec} returned {result!r}, not a number") from None
        if not math.isfinite(value):
            raise ValueError(f"reward {spec} returned {value}, not a finite number")
        return value

    reward.__name__ = spec.replace(":", ".")
    return reward
