"""Reading the data stage's output: the prepared splits and the manifest that vouches for them."""

from __future__ import annotations

import json

from tuneloop.config import ProjectConfig
from tuneloop.data.formats import Example
from tuneloop.errors import UserError


def load_split(cfg: ProjectConfig, name: str) -> tuple[list[Example], dict]:
    """Examples of one prepared split, plus the manifest that vouches for them."""
    folder = cfg.path(cfg.data.prepared_dir)
    manifest_path = folder / "manifest.json"
    if not manifest_path.is_file():
        raise UserError(f"no prepared data in {folder}; run `tuneloop data prepare --config {cfg.root}/...` first")
    manifest = json.loads(manifest_path.read_text())
    path = folder / f"{name}.jsonl"
    if not path.is_file():
        return [], manifest
    examples = [Example.from_json(json.loads(line)) for line in path.open(encoding="utf-8") if line.strip()]
    return examples, manifest
