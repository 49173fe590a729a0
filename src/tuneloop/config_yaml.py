"""Reading the config's YAML: key paths to line numbers, `--set a.b=c` overrides, and validation
errors explained at their line with the closest valid key.

`tuneloop.config` holds the sections; this module holds the machinery, so that a stage can define
its own section (on `Section`) in its own module without growing config.py.
"""

from __future__ import annotations

import difflib
import re
from typing import Any, get_args, get_origin

import yaml
from pydantic import BaseModel, ConfigDict

from tuneloop.errors import UserError


class Section(BaseModel):
    """Base for every section: unknown keys are errors, assignments are validated."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


def parse_yaml(text: str, name: str) -> tuple[dict, dict[tuple[str, ...], int]]:
    """Parse YAML into a dict plus a map from key path to the line it is on."""
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        where = f"{name}:{mark.line + 1}:{mark.column + 1}" if mark else name
        raise UserError(f"{where}: invalid YAML: {e.problem or e.context}") from e
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise UserError(f"{name}: the config must be a mapping of sections (task:, model:, ...)")
    lines: dict[tuple[str, ...], int] = {}
    _collect_lines(node, (), lines)
    return data, lines


def _collect_lines(node: Any, prefix: tuple[str, ...], out: dict[tuple[str, ...], int]) -> None:
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            key = (*prefix, str(key_node.value))
            out[key] = key_node.start_mark.line + 1
            _collect_lines(value_node, key, out)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            key = (*prefix, str(i))
            out[key] = item.start_mark.line + 1
            _collect_lines(item, key, out)


def apply_override(data: dict, item: str) -> tuple[str, ...]:
    """Apply one `a.b.c=value` override in place; the value is parsed as YAML (1e-4, true, [a, b])."""
    if "=" not in item:
        raise ValueError("expected KEY=VALUE, e.g. --set train.learning_rate=1e-4")
    dotted, raw = item.split("=", 1)
    keys = tuple(k.strip() for k in dotted.split("."))
    if not all(keys):
        raise ValueError(f"'{dotted}' is not a dotted key like train.learning_rate")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as e:
        raise ValueError(f"cannot parse value {raw!r}: {e}") from e
    node = data
    for depth, key in enumerate(keys[:-1]):
        child = node.setdefault(key, {})
        if not isinstance(child, dict):
            raise ValueError(f"{'.'.join(keys[: depth + 1])} is a value, not a section")
        node = child
    node[keys[-1]] = value
    return keys


def describe(
    err: dict, name: str, lines: dict[tuple[str, ...], int], origins: dict, root: type[BaseModel]
) -> tuple[int, str]:
    """(line, message) for one validation error: where, which key, what is wrong, what to do."""
    line, text = 0, _explain(err, name, lines, origins, root)
    loc = tuple(str(p) for p in err["loc"])
    for n in range(len(loc), 0, -1):
        if loc[:n] in lines and loc not in origins:
            line = lines[loc[:n]]
            break
    return line, text


def _explain(err: dict, name: str, lines: dict[tuple[str, ...], int], origins: dict, root: type[BaseModel]) -> str:
    loc = tuple(str(p) for p in err["loc"])
    # Pydantic adds the union member or validator name to the location; drop what is not a key.
    loc = tuple(p for p in loc if not p.startswith(("literal[", "list[", "function-")))
    dotted = ".".join(loc) or "(top level)"
    where = origins.get(loc)
    if where is None:
        for n in range(len(loc), 0, -1):
            if loc[:n] in lines:
                where = f"{name}:{lines[loc[:n]]}"
                break
        else:
            where = name
    kind = err["type"]
    if kind == "extra_forbidden":
        valid = _keys_at(root, loc[:-1])
        close = difflib.get_close_matches(loc[-1], valid, n=1, cutoff=0.5)
        parent = ".".join(loc[:-1])
        prefix = f"{parent}." if parent else ""
        if close:
            return f"{where}: unknown key '{dotted}'; did you mean '{prefix}{close[0]}'?"
        return f"{where}: unknown key '{dotted}'; valid keys here: {', '.join(valid)}"
    if kind == "missing":
        return f"{where}: '{dotted}' is required"
    msg = err["msg"]
    if kind == "literal_error":
        choices = re.findall(r"'([^']*)'", err.get("ctx", {}).get("expected", ""))
        close = difflib.get_close_matches(str(err.get("input")), choices, n=1, cutoff=0.5)
        if close:
            msg += f" (did you mean '{close[0]}'?)"
    msg = msg.removeprefix("Value error, ")
    return f"{where}: {dotted}: {msg}"


def _keys_at(root: type[BaseModel], loc: tuple[str, ...]) -> list[str]:
    """The valid keys of the section at `loc`, found by walking the pydantic models."""
    model: Any = root
    for key in loc:
        field = model.model_fields.get(key) if isinstance(model, type) else None
        if field is None:
            return []
        model = _section_type(field.annotation)
    return list(model.model_fields) if isinstance(model, type) and issubclass(model, BaseModel) else []


def _section_type(annotation: Any) -> Any:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    if get_origin(annotation) is not None:
        for arg in get_args(annotation):
            found = _section_type(arg)
            if found is not None:
                return found
    return None
