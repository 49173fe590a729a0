"""The GPU table: memory, peak TFLOPS, bf16 support and price per hour of each GPU `tuneloop plan` considers.

The shipped table is gpus.yaml beside this file; a project can keep its own next to its tuneloop.yaml.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from tuneloop.config import ProjectConfig
from tuneloop.errors import UserError

GIB = 1024**3
SHIPPED_GPUS = Path(__file__).with_name("gpus.yaml")
PROJECT_GPUS = "gpus.yaml"  # a project's own table, next to its tuneloop.yaml


@dataclass(frozen=True)
class Gpu:
    """One row of the GPU table."""

    name: str
    memory_gb: float
    tflops: float
    bf16: bool
    usd_per_hour: float

    @property
    def memory_bytes(self) -> int:
        return int(self.memory_gb * GIB)


def gpu_table_path(cfg: ProjectConfig, gpus_file: Path | None = None) -> Path:
    """The table to use: --gpus-file, else gpus.yaml next to tuneloop.yaml, else the shipped one."""
    if gpus_file is not None:
        if not gpus_file.is_file():
            raise UserError(f"--gpus-file {gpus_file} not found; copy {SHIPPED_GPUS} there and edit it")
        return gpus_file
    own = cfg.root / PROJECT_GPUS
    return own if own.is_file() else SHIPPED_GPUS


def load_gpus(path: Path = SHIPPED_GPUS) -> dict[str, Gpu]:
    """Read a GPU table (see the shipped gpus.yaml for the format)."""
    try:
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise UserError(f"{path}: invalid YAML: {e}") from e
    entries = doc.get("gpus") if isinstance(doc, dict) else None
    if not isinstance(entries, dict) or not entries:
        raise UserError(f"{path}: expected a 'gpus:' mapping of GPU names to their fields; see {SHIPPED_GPUS}")
    return {str(name): _gpu(path, str(name), fields) for name, fields in entries.items()}


def _gpu(path: Path, name: str, fields: Any) -> Gpu:
    fix = f"give it memory_gb, tflops, bf16 and usd_per_hour (see {SHIPPED_GPUS})"
    if not isinstance(fields, dict) or set(fields) != {"memory_gb", "tflops", "bf16", "usd_per_hour"}:
        got = ", ".join(fields) if isinstance(fields, dict) else repr(fields)
        raise UserError(f"{path}: GPU '{name}' has fields {got}; {fix}")
    for key in ("memory_gb", "tflops", "usd_per_hour"):
        value = fields[key]
        number = isinstance(value, int | float) and not isinstance(value, bool)
        if not number or value < 0 or (value == 0 and key != "usd_per_hour"):  # a free GPU is fine, a 0 GB one not
            raise UserError(f"{path}: GPU '{name}': {key} is {value!r}, expected a positive number; {fix}")
    if not isinstance(fields["bf16"], bool):
        raise UserError(f"{path}: GPU '{name}': bf16 is {fields['bf16']!r}, expected true or false; {fix}")
    return Gpu(name, float(fields["memory_gb"]), float(fields["tflops"]), fields["bf16"], float(fields["usd_per_hour"]))


def _key(name: str) -> str:
    return re.sub(r"[^a-z0-9]", "", name.lower())


def select_gpus(table: dict[str, Gpu], names: list[str] | None) -> list[Gpu]:
    """The GPUs asked for (names match ignoring case, spaces and dashes; a unique prefix is enough), or all."""
    if not names:
        return list(table.values())
    chosen = []
    for name in names:
        exact = [g for n, g in table.items() if _key(n) == _key(name)]
        matches = exact or [g for n, g in table.items() if _key(n).startswith(_key(name))]
        if len(matches) != 1:
            what = "matches " + ", ".join(g.name for g in matches) if matches else "is not in the table"
            raise UserError(
                f"--gpu {name} {what}; choose from: {', '.join(table)} (or add it to your own table with --gpus-file)"
            )
        chosen.append(matches[0])
    return chosen
