"""The model's shape, read from its config (never its weights), and the parameters each method trains."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tuneloop.config import MethodConfig
from tuneloop.errors import UserError
from tuneloop.models import EMBEDDED, describe
from tuneloop.train.methods import BLOCK_COUNT_KEYS, LORA_TARGETS


@dataclass(frozen=True)
class Module:
    """A layer LoRA can adapt: its qualified name and sizes (for an embedding: vocabulary, width)."""

    name: str
    kind: str  # linear | embedding
    in_features: int
    out_features: int
    head: bool = False  # the output projection (lm_head): never quantised, not in 'all-linear'


@dataclass(frozen=True)
class ModelShape:
    """What the estimates need to know about a model, read from its config without weights."""

    name: str
    source: str
    model_type: str
    parameters: int
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int
    vocab: int
    eager_attention: bool
    modules: tuple[Module, ...] = field(repr=False)
    head_parameters: int = 0  # the LM head's own parameters: 0 when it shares the input embeddings' weights

    @property
    def q_dim(self) -> int:
        return self.heads * self.head_dim

    @property
    def kv_dim(self) -> int:
        return self.kv_heads * self.head_dim


_COUNT = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmbt])?\s*$", re.I)
_SCALE = {"k": 1e3, "m": 1e6, "b": 1e9, "t": 1e12}


def parse_parameter_count(text: str) -> int | None:
    """'135M' → 135_000_000, '7B', '1.5b', '70B', '2T', or a plain integer; None if `text` is not a count."""
    m = _COUNT.match(text)
    if not m:
        return None
    value = float(m.group(1)) * (_SCALE[m.group(2).lower()] if m.group(2) else 1)
    return round(value) if value >= 1 else None


def _llama_width_rule(hidden: int) -> dict[str, int]:
    """The Llama-2 family's proportions for a width: the rule behind a bare parameter count."""
    head_dim = 128 if hidden >= 2048 else 64
    return {
        "hidden_size": hidden,
        "num_hidden_layers": max(2, round(hidden / 128)),
        "intermediate_size": math.ceil(8 * hidden / 3 / 256) * 256,
        "num_attention_heads": hidden // head_dim,
        "num_key_value_heads": hidden // head_dim,
        "vocab_size": 32_000,
    }


def _llama_count(rule: dict[str, int]) -> int:
    h, i, v, layers = rule["hidden_size"], rule["intermediate_size"], rule["vocab_size"], rule["num_hidden_layers"]
    return 2 * v * h + layers * (4 * h * h + 3 * h * i + 2 * h) + h


def llama_like_config(parameters: int) -> Any:
    """A Llama-2-shaped config with about `parameters` parameters.

    The rule: vocabulary 32,000 with untied embeddings, head size 128 (64 below 2,048 wide), one
    layer per 128 of width (at least 2), full multi-head attention, a SwiGLU MLP 8/3 as wide as the
    model rounded up to a multiple of 256; the width is the multiple of 128 whose total is closest
    to the count. 7B gives exactly Llama-2-7B: 4096 wide, 32 layers, 11008 MLP, 6.74B parameters.
    """
    from transformers import LlamaConfig

    rules = [_llama_width_rule(h) for h in range(128, 65_537, 128)]
    best = min(rules, key=lambda r: abs(_llama_count(r) - parameters))
    got = _llama_count(best)
    if abs(got - parameters) > 0.25 * parameters:
        raise UserError(
            f"no Llama-like shape has about {parameters:,} parameters (the nearest has {got:,}); "
            "pass --model a model folder or a hub id instead"
        )
    return LlamaConfig(**best, tie_word_embeddings=False)


def read_model_config(name: str, revision: str | None = None, trust_remote_code: bool = False) -> tuple[Any, str]:
    """(transformers config, where it came from) for any model name tuneloop accepts, or a parameter count."""
    if name in EMBEDDED:
        info = describe(name)
        if info.path is None:
            raise UserError(info.warnings[0] if info.warnings else f"embedded model {name} is not installed")
        return _local_config(info.path, trust_remote_code), f"embedded model {name}"
    path = Path(name).expanduser()
    if path.exists():
        return _local_config(path, trust_remote_code), f"config of {path}"
    count = parse_parameter_count(name)
    if count is not None:
        c = llama_like_config(count)
        return c, (
            f"assumed Llama-2-like shape for {name}: {c.hidden_size} wide, {c.num_hidden_layers} layers, "
            f"MLP {c.intermediate_size}, vocabulary {c.vocab_size:,}, untied embeddings"
        )
    if path.suffix == ".gguf":
        raise UserError(f"GGUF file {path} does not exist")
    if re.match(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$", name):
        return _hub_config(name, revision, trust_remote_code), f"hub config of {name}"
    raise UserError(
        f"model '{name}' is not an embedded model, an existing folder, a .gguf file, a hub id (org/name) "
        "or a parameter count like 7B; run `tuneloop models` to see what is available"
    )


def _local_config(path: Path, trust_remote_code: bool) -> Any:
    from transformers import AutoConfig

    gguf = path.is_file() and path.suffix == ".gguf"
    if not gguf and not (path / "config.json").is_file():
        raise UserError(f"{path} has no config.json; point --model at a Hugging Face model folder or a .gguf file")
    try:
        if gguf:
            return AutoConfig.from_pretrained(str(path.parent), gguf_file=path.name)
        return AutoConfig.from_pretrained(str(path), trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as e:
        raise UserError(f"cannot read the model config in {path}: {e}; pass --model a parameter count") from None


def _hub_config(repo_id: str, revision: str | None, trust_remote_code: bool) -> Any:
    from huggingface_hub import constants, try_to_load_from_cache
    from transformers import AutoConfig

    from tuneloop.models import hub_reachable

    cached = isinstance(try_to_load_from_cache(repo_id, "config.json", revision=revision), str)
    offline = not cached and not constants.HF_HUB_OFFLINE and not hub_reachable()
    try:
        if offline:  # say so now rather than after the hub client's retries
            raise OSError(f"no connection to {constants.ENDPOINT}")
        return AutoConfig.from_pretrained(
            repo_id, revision=revision, trust_remote_code=trust_remote_code, local_files_only=cached
        )
    except (OSError, ValueError) as e:
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(
            f"cannot read the config of hub model {repo_id}: {reason} (offline, not in the local cache, misspelt "
            "or gated?) Pass --model a local folder with its config.json, or a parameter count such as --model 7B"
        ) from None


def shape_from_config(config: Any, name: str, source: str, trust_remote_code: bool = False) -> ModelShape:
    """Build the model on PyTorch's meta device (no memory, no weights) and read its sizes and layers."""
    model = _meta_model(config, name, trust_remote_code)
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    hidden = _first(text, "hidden_size", "n_embd", "d_model")
    heads = _first(text, "num_attention_heads", "n_head", "num_heads")
    kv_heads = getattr(text, "num_key_value_heads", None) or heads
    head_dim = getattr(text, "head_dim", None) or hidden // heads
    intermediate = getattr(text, "intermediate_size", None) or getattr(text, "n_inner", None) or 4 * hidden
    return ModelShape(
        name=name,
        source=source,
        model_type=str(getattr(text, "model_type", "unknown")),
        parameters=sum(p.numel() for p in model.parameters()),
        hidden=hidden,
        layers=_first(text, *BLOCK_COUNT_KEYS),
        heads=heads,
        kv_heads=kv_heads,
        head_dim=head_dim,
        intermediate=intermediate,
        vocab=_first(text, "vocab_size"),
        # The built model records the attention transformers would pick (SDPA where supported).
        eager_attention=getattr(model.config, "_attn_implementation", None) == "eager",
        modules=_modules(model),
        head_parameters=_head_parameters(model),
    )


def _head_parameters(model: Any) -> int:
    """Parameters of the output head that no other layer shares (a tied head reuses the embeddings)."""
    head = model.get_output_embeddings()
    if head is None:
        return 0
    shared = {id(p) for name, p in model.named_parameters() if not name.startswith(_head_prefix(model, head))}
    return sum(p.numel() for p in head.parameters() if id(p) not in shared)


def _head_prefix(model: Any, head: Any) -> str:
    return next(name for name, m in model.named_modules() if m is head) + "."


def _first(config: Any, *names: str) -> int:
    for n in names:
        value = getattr(config, n, None)
        if isinstance(value, int):
            return value
    raise UserError(f"the model config has none of {', '.join(names)}; tuneloop plan cannot size this architecture")


def _meta_model(config: Any, name: str, trust_remote_code: bool) -> Any:
    import torch
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        with torch.device("meta"):
            return AutoModelForCausalLM.from_config(config, trust_remote_code=trust_remote_code)
    except ValueError as e:
        raise UserError(f"model '{name}' is not a causal language model transformers can build: {e}") from None
    finally:
        hf_logging.set_verbosity(verbosity)


def _modules(model: Any) -> tuple[Module, ...]:
    from torch import nn

    head = model.get_output_embeddings()
    found = []
    for name, m in model.named_modules():
        if isinstance(m, nn.Linear):
            found.append(Module(name, "linear", m.in_features, m.out_features, m is head))
        elif type(m).__name__ == "Conv1D":  # GPT-2's transposed linear layer
            found.append(Module(name, "linear", m.weight.shape[0], m.weight.shape[1], m is head))
        elif isinstance(m, nn.Embedding):
            found.append(Module(name, "embedding", m.num_embeddings, m.embedding_dim))
    return tuple(found)


def model_shape(name: str, revision: str | None = None, trust_remote_code: bool = False) -> ModelShape:
    """The shape of model `name`: an embedded model, folder, .gguf, hub id or a count like '7B'."""
    config, source = read_model_config(name, revision, trust_remote_code)
    return shape_from_config(config, name, source, trust_remote_code)


# --------------------------------------------------------------------------- trainable parameters


def adapted_modules(shape: ModelShape, method: MethodConfig) -> list[Module]:
    """The layers LoRA/QLoRA/DoRA wrap, matched the way PEFT matches target_modules."""
    targets = method.lora.target_modules
    if targets == "auto":
        targets = LORA_TARGETS.get(shape.model_type, "all-linear")
    if targets == "all-linear":
        return _in_last_layers([m for m in shape.modules if m.kind == "linear" and not m.head], shape, method)
    chosen = [m for m in shape.modules if any(m.name == t or m.name.endswith("." + t) for t in targets)]
    missing = [t for t in targets if not any(m.name == t or m.name.endswith("." + t) for m in chosen)]
    if missing:
        names = sorted({m.name.rsplit(".", 1)[-1] for m in shape.modules if m.kind == "linear"})
        raise UserError(
            f"method.lora.target_modules: {', '.join(missing)} match no layer of {shape.name}; "
            f"its linear layers are {', '.join(names)} (or use 'all-linear')"
        )
    return _in_last_layers(chosen, shape, method)


def _in_last_layers(modules: list[Module], shape: ModelShape, method: MethodConfig) -> list[Module]:
    """Keep the modules of the last `method.lora.last_layers` blocks (the block index is the name's number)."""
    last = method.lora.last_layers
    if last is None:
        return modules
    first = shape.layers - last
    kept = []
    for m in modules:
        index = re.search(r"\.(\d+)\.", m.name)
        if index is not None and int(index.group(1)) >= first:
            kept.append(m)
    return kept


def trainable_parameters(shape: ModelShape, method: MethodConfig) -> int:
    """Parameters the method trains: every one for full, else the adapter's or the virtual tokens'."""
    name = method.name
    if name == "full":
        return shape.parameters
    if name == "prompt_tuning":
        return method.prompt.num_virtual_tokens * shape.hidden
    if name == "prefix_tuning":
        # PEFT sizes the prefix by the key/value width (grouped-query attention has fewer kv heads).
        return method.prompt.num_virtual_tokens * shape.layers * 2 * shape.kv_dim
    r = method.lora.r
    lora = sum(r * (m.in_features + m.out_features) for m in adapted_modules(shape, method))
    magnitudes = sum(m.out_features for m in adapted_modules(shape, method)) if name == "dora" else 0
    return lora + magnitudes
