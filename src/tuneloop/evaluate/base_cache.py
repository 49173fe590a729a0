"""The base model's evaluation, computed once per project: answers, probe answers, perplexities, forgetting.

What the base model says is a pure function of its weights and tokenizer (chat template included),
the test prompts and references, the decoding settings, the red-team probes, the forgetting set, and
the code that generates (tuneloop, torch and transformers versions). All of those are hashed into
one key; a second evaluation in the project with the same key reads the base's outputs from
`<output.dir>/.cache/base-eval/<key>.json` instead of generating them again, so it pays only for
the tuned models. Anything that changes a single input changes the key: nothing stale is reused.
`eval.cache_base: false` turns it off.
"""

from __future__ import annotations

import hashlib
import json
import os
from importlib.metadata import version
from pathlib import Path
from typing import Any

import numpy as np

from tuneloop import __version__

CACHE_FOLDER = Path(".cache") / "base-eval"


def cache_key(cfg: Any, tokenizer: Any, cases: list[Any], probes: list[Any], general: Any) -> str:
    """sha256 of everything the base model's outputs depend on."""
    from tuneloop.models import fingerprint, resolve

    e = cfg.eval
    inputs = {
        "model": fingerprint(resolve(cfg.model.name, cfg.model.revision)),
        "dtype": cfg.model.dtype,
        "chat_template": getattr(tokenizer, "chat_template", None),
        "tokenizer_class": type(tokenizer).__name__,
        "cases": [[c.id, c.conversation, c.reference] for c in cases],
        "perplexity": "perplexity" in cfg.task.metrics,
        "decoding": [e.max_new_tokens, e.batch_size, e.temperature, e.seed, e.backend],
        "probes": [[p.id, p.messages] for p in probes],
        "general": None if general is None else [general.text_ids, general.texts, [repr(q) for q in general.questions]],
        "code": [__version__, version("torch"), version("transformers")],
    }
    return hashlib.sha256(json.dumps(inputs, sort_keys=True, default=str).encode()).hexdigest()


def cache_path(cfg: Any, key: str) -> Path:
    """Where the base outputs for `key` are kept in this project."""
    return cfg.path(cfg.output.dir) / CACHE_FOLDER / f"{key}.json"


def load(cfg: Any, key: str) -> dict[str, Any] | None:
    """The cached base outputs for `key` as SystemOutputs fields, or None when there are none (or they cannot be
    read: then they are measured again)."""
    from tuneloop.generate import Generation

    path = cache_path(cfg, key)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    nll = data["completion_nll"]
    return {
        "answers": [Generation(**a) for a in data["answers"]],
        "completion_nll": None if nll is None else (np.asarray(nll[0]), np.asarray(nll[1])),
        "general": data["general"],
        "probes": [Generation(**a) for a in data["probes"]],
    }


def store(cfg: Any, key: str, outputs: Any) -> Path:
    """Write the base's outputs for `key` atomically (a crash never leaves a half-written entry)."""
    nll = outputs.completion_nll
    data = {
        "answers": [vars(a) for a in outputs.answers],
        "probes": [vars(a) for a in outputs.probes],
        "completion_nll": None if nll is None else [np.asarray(nll[0]).tolist(), np.asarray(nll[1]).tolist()],
        "general": outputs.general,
    }
    path = cache_path(cfg, key)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data), encoding="utf-8")
    os.replace(tmp, path)
    return path
