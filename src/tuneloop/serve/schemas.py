"""The OpenAI request bodies the server accepts, and its errors in OpenAI's JSON shape.

Bodies are validated strictly: an unknown field, a wrong type or a value out of range is a 400
whose `param` names the field (`messages[1].role`), so a client sees what to fix. Fields of the
OpenAI API that tuneloop does not implement (logprobs, tools, penalties, ...) are refused the same
way rather than silently ignored.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Annotated, Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

# -- errors ---------------------------------------------------------------------------------------


@dataclass
class ApiError(Exception):
    """An HTTP error in OpenAI's shape: {"error": {"message", "type", "param", "code"}}."""

    status: int
    message: str
    param: str | None = None
    code: str | None = None
    type: str = "invalid_request_error"

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


def too_large(limit: int) -> ApiError:
    return ApiError(413, f"the request body is larger than the server's limit of {limit:,} bytes", code="too_large")


# -- request bodies --------------------------------------------------------------------------------


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class TextPart(_Body):
    type: Literal["text"]
    text: str


Role = Literal["system", "developer", "user", "assistant"]


class Message(_Body):
    role: Role
    content: str | list[TextPart]
    name: str | None = None

    def text(self) -> str:
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text for part in self.content)


class StreamOptions(_Body):
    include_usage: bool = False


Stop = str | Annotated[list[str], Field(max_length=4)] | None


class _Sampling(_Body):
    """The generation settings shared by chat and text completions (OpenAI's names and defaults)."""

    model: str
    temperature: Annotated[float, Field(ge=0.0, le=2.0)] = 1.0
    top_p: Annotated[float, Field(gt=0.0, le=1.0)] = 1.0
    n: Annotated[int, Field(ge=1)] = 1
    max_tokens: Annotated[int, Field(ge=1)] | None = None
    stop: Stop = None
    seed: int | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: str | None = None

    @field_validator("stop")
    @classmethod
    def _no_empty_stop(cls, value: Stop) -> Stop:
        texts = [value] if isinstance(value, str) else value or []
        if any(not s for s in texts):
            raise ValueError("stop strings must not be empty")
        return value

    def stop_list(self) -> list[str]:
        return [self.stop] if isinstance(self.stop, str) else list(self.stop or [])


class ChatRequest(_Sampling):
    messages: Annotated[list[Message], Field(min_length=1)]
    max_completion_tokens: Annotated[int, Field(ge=1)] | None = None

    def limit(self) -> int | None:
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens

    def conversation(self) -> list[dict[str, str]]:
        # "developer" is OpenAI's newer name for the system role; chat templates know "system".
        return [{"role": "system" if m.role == "developer" else m.role, "content": m.text()} for m in self.messages]


class CompletionRequest(_Sampling):
    prompt: str | Annotated[list[str], Field(min_length=1)]
    max_tokens: Annotated[int, Field(ge=1)] | None = 16  # OpenAI's default for text completions

    def limit(self) -> int | None:
        return self.max_tokens

    def prompts(self) -> list[str]:
        return [self.prompt] if isinstance(self.prompt, str) else list(self.prompt)


class AdapterRequest(_Body):
    """POST /admin/adapters: load a run's adapter under `name`."""

    name: Annotated[str, Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9._:-]+$")]
    run: Annotated[str, Field(min_length=1)]


class FeedbackRequest(_Body):
    """POST /v1/feedback: a thumbs up or down, and optionally the answer that should have been given."""

    id: Annotated[str, Field(min_length=1, max_length=128)]  # the response id the client saw
    rating: Literal["up", "down"] | None = None
    correction: Annotated[str, Field(min_length=1, max_length=100_000)] | None = None
    comment: Annotated[str, Field(max_length=10_000)] | None = None


Body = TypeVar("Body", bound=_Body)


def parse(raw: bytes, schema: type[Body]) -> Body:
    """Decode and validate a JSON body; raise ApiError(400) naming the first bad field."""
    try:
        data = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ApiError(400, f"the request body is not valid JSON: {e}", code="invalid_json") from None
    if not isinstance(data, dict):
        raise ApiError(400, "the request body must be a JSON object", code="invalid_json")
    try:
        return schema.model_validate(data)
    except ValidationError as e:
        raise _field_error(e) from None


def _field_error(error: ValidationError) -> ApiError:
    # A union (str | list) reports one error per member; the first names the field well enough.
    first = error.errors()[0]
    param = field_path(first["loc"])
    if first["type"] == "extra_forbidden":
        return ApiError(400, f"unknown field '{param}': tuneloop serve does not support it", param, "unknown_field")
    if first["type"] == "missing":
        return ApiError(400, f"'{param}' is required", param, "missing_field")
    message = first["msg"].removeprefix("Value error, ")
    return ApiError(400, f"'{param}': {message} (got {_short(first.get('input'))})", param, "invalid_value")


def field_path(loc: tuple[Any, ...]) -> str:
    """('messages', 1, 'role') → 'messages[1].role'; union member tags (`str`, `list[...]`) are dropped."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif isinstance(part, str) and not _is_type_tag(part):
            out += f".{part}" if out else part
    return out


def _is_type_tag(part: str) -> bool:
    return part in ("str", "int", "float", "bool", "none") or part.startswith(("list[", "function-", "constrained-"))


def _short(value: Any) -> str:
    text = json.dumps(value) if not isinstance(value, str) else repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
