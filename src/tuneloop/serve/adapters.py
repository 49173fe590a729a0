"""What the server serves: one base model in memory and named entries on it.

An entry is what a request's `model` field picks: the base weights (a merged export, a full
fine-tune or the base of some adapters) or a LoRA/DoRA adapter from a run's final/ folder, loaded
next to the others with PEFT (`load_adapter`) and switched per batch (`set_adapter`). Each entry
keeps its own tokenizer and Renderer: a run's final/ tokenizer carries the exact chat template it
was trained with, and that is the one its prompts are rendered with.

Weights load from safetensors only: the model loaders refuse pickled folders, and an adapter
without adapter_model.safetensors is refused here before PEFT could fall back to a pickle.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tuneloop.errors import UserError

# PEFT methods whose adapters can be switched per batch; prompt/prefix tuning change the inputs instead.
SWITCHABLE = {"LORA"}


@dataclass(frozen=True)
class RunModel:
    """A run's final model, as found in its folder."""

    run_dir: Path
    final: Path
    adapter: bool  # final/ is a PEFT adapter (else a full model)
    base: str  # the model.name it was trained from
    revision: str | None
    dtype: str
    trust_remote_code: bool

    @property
    def name(self) -> str:
        return self.run_dir.name


def read_run(run_dir: Path) -> RunModel:
    """Read what a run folder's final/ holds, from the folder alone (its config.resolved.yaml)."""
    from tuneloop import config

    run_dir = Path(run_dir).resolve()
    resolved = run_dir / config.RESOLVED_FILENAME
    if not resolved.is_file():
        raise UserError(
            f"{run_dir} is not a run folder (no {config.RESOLVED_FILENAME}); give a folder made by training"
        )
    final = run_dir / "final"
    if not final.is_dir():
        raise UserError(
            f"{run_dir} has no final/ model (the run did not finish); resume it with `tuneloop train --resume`"
        )
    cfg = config.load(resolved)
    adapter = (final / "adapter_config.json").is_file()
    if adapter:
        if not (final / "adapter_model.safetensors").is_file():
            raise UserError(f"{final} has no adapter_model.safetensors; tuneloop loads safetensors only, never pickles")
        kind = json.loads((final / "adapter_config.json").read_text()).get("peft_type")
        if kind not in SWITCHABLE:
            raise UserError(
                f"{run_dir.name} is a {kind} adapter, which changes the prompt rather than the weights and cannot "
                "be switched per request; serve it alone with `tuneloop generate --run`, or train LoRA/DoRA"
            )
    m = cfg.model
    return RunModel(run_dir, final, adapter, m.name, m.revision, m.dtype, m.trust_remote_code)


@dataclass(frozen=True)
class Entry:
    """One servable model name."""

    name: str
    adapter: str | None  # the PEFT adapter name; None serves the base weights
    tokenizer: Any
    renderer: Any  # tuneloop.data.render.Renderer, or None when the tokenizer has no chat template
    stop_ids: frozenset[int]
    source: str  # the folder it came from
    created: int

    @property
    def chat(self) -> bool:
        return self.renderer is not None


class ModelSet:
    """The base model and its entries. Change it only on the generation thread (Batcher.call)."""

    def __init__(self, model: Any, tokenizer: Any, base_path: Path, trust_remote_code: bool = False) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.base_path = base_path.resolve()
        self.trust_remote_code = trust_remote_code
        self.entries: dict[str, Entry] = {}

    @property
    def pad_id(self) -> int:
        pad = self.tokenizer.pad_token_id
        return pad if pad is not None else min(self.stop_ids(self.tokenizer))

    @property
    def context_length(self) -> int | None:
        cfg = getattr(self.model, "config", None)
        return getattr(cfg, "max_position_embeddings", None)

    def stop_ids(self, tokenizer: Any) -> frozenset[int]:
        from tuneloop.generate import stop_token_ids

        return frozenset(stop_token_ids(self.model, tokenizer))

    def add_base(self, name: str, tokenizer: Any, source: str) -> Entry:
        return self._add(Entry(name, None, tokenizer, _renderer(tokenizer), self.stop_ids(tokenizer), source, _now()))

    def add_adapter(self, name: str, run: RunModel) -> Entry:
        """Load a run's adapter under `name`, next to those already loaded."""
        from peft import PeftModel

        from tuneloop.models import load_tokenizer, resolve

        if name in self.entries:
            raise UserError(f"a model named {name!r} is already served; unload it first or pick another name")
        if not run.adapter:
            raise UserError(f"{run.name} is a full fine-tune, not an adapter; serve it with --run or --model")
        if resolve(run.base, run.revision).resolve() != self.base_path:
            raise UserError(
                f"{run.name} was trained on {run.base}, but this server's base is {self.base_path}; "
                "an adapter only works on its own base model"
            )
        tokenizer = load_tokenizer(run.final, self.trust_remote_code)
        if len(tokenizer) != len(self.tokenizer):
            raise UserError(f"{run.name}'s tokenizer has {len(tokenizer)} tokens, the base's {len(self.tokenizer)}")
        if isinstance(self.model, PeftModel):
            self.model.load_adapter(str(run.final), adapter_name=name)
        else:
            self.model = PeftModel.from_pretrained(self.model, str(run.final), adapter_name=name)
        self.model.eval()
        entry = Entry(name, name, tokenizer, _renderer(tokenizer), self.stop_ids(tokenizer), str(run.run_dir), _now())
        return self._add(entry)

    def remove(self, name: str) -> None:
        """Stop serving `name`; an adapter's weights are freed."""
        entry = self.entries.get(name)
        if entry is None:
            raise KeyError(name)
        self.entries = {k: v for k, v in self.entries.items() if k != name}
        if entry.adapter is not None:
            self.model.delete_adapter(entry.adapter)

    def _add(self, entry: Entry) -> Entry:
        self.entries = {**self.entries, entry.name: entry}  # replaced whole: readers on other threads see old or new
        return entry

    @contextlib.contextmanager
    def use(self, adapter: str | None) -> Iterator[Any]:
        """The model with `adapter` active, or with every adapter off for None."""
        from peft import PeftModel

        if not isinstance(self.model, PeftModel):
            yield self.model
        elif adapter is not None:
            self.model.set_adapter(adapter)
            yield self.model
        elif self.model.peft_config:
            with self.model.disable_adapter():
                yield self.model
        else:
            yield self.model  # every adapter was unloaded: the layers pass the base through


@dataclass(frozen=True)
class Plan:
    """What to load for `tuneloop serve`: the base model and the adapters to put on it."""

    base: str  # a model name or folder, as models.resolve takes it
    base_name: str  # the name the base is served under
    revision: str | None
    dtype: str
    trust_remote_code: bool
    tokenizer: Path | None  # where the base entry's tokenizer comes from, when not the base's own
    adapters: dict[str, RunModel]


def plan(
    model: str | None = None,
    run: RunModel | None = None,
    adapters: dict[str, RunModel] | None = None,
    name: str | None = None,
    dtype: str = "auto",
) -> Plan:
    """Decide the base and the entries from `--model`, `--run` and `--adapter NAME=RUN`.

    The base is `model`, or the run's model (a full fine-tune's final/, an adapter run's base),
    or the adapters' base. `name` renames what `--model`/`--run` serves; an adapter run is served
    under the run's id, and its base under the base's name, rendered with the run's template.
    """
    adapters = dict(adapters or {})
    if model is not None and run is not None:
        raise UserError("give --model or --run, not both")
    base_run = run if run is not None else next(iter(adapters.values()), None)
    if model is not None:
        return Plan(model, name or _display_name(model), None, dtype, False, None, adapters)
    if base_run is None:
        raise UserError("nothing to serve: give --run REF, --model PATH or --adapter NAME=RUN")
    if not base_run.adapter:
        return Plan(str(base_run.final), name or base_run.name, None, dtype, base_run.trust_remote_code, None, adapters)
    if run is not None:
        adapters = {name or run.name: run, **adapters}
    return Plan(
        base_run.base,
        _display_name(base_run.base),
        base_run.revision,
        base_run.dtype,
        base_run.trust_remote_code,
        base_run.final,
        adapters,
    )


def load(p: Plan) -> ModelSet:
    """Load the base model and every adapter of a plan."""
    from tuneloop.models import load_causal_lm, load_tokenizer, resolve

    lm, tokenizer = load_causal_lm(p.base, p.dtype, p.trust_remote_code, p.revision)
    if _cuda():
        lm.to("cuda")  # serve on the GPU when there is one (adapters loaded later follow their base layers)
    models = ModelSet(lm, tokenizer, resolve(p.base, p.revision), p.trust_remote_code)
    base_tokenizer = load_tokenizer(p.tokenizer, p.trust_remote_code) if p.tokenizer else tokenizer
    models.add_base(p.base_name, base_tokenizer, p.base)
    for adapter_name, adapter_run in p.adapters.items():
        models.add_adapter(adapter_name, adapter_run)
    return models


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def _display_name(model: str) -> str:
    path = Path(model).expanduser()
    return path.name if path.exists() else model


def _renderer(tokenizer: Any) -> Any:
    from tuneloop.data.formats import RowError
    from tuneloop.data.render import Renderer

    if getattr(tokenizer, "chat_template", None) is None:
        return None
    try:
        return Renderer(tokenizer)
    except RowError:
        return None


def _now() -> int:
    return int(time.time())
