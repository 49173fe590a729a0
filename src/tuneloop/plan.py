"""`tuneloop plan`: will this fine-tune fit, how long will it take and what will it cost, before paying.

Everything here is arithmetic on the model's shape (read from its config, never its weights), the
method, the batch and the prepared data's token counts. The formulas, per training process:

Memory = weights + optimizer + max(gradients, 16-bit weight copies + activations + logits) + overhead.
  Backward frees each layer's activations as it creates that layer's gradients, so the two peak
  at different moments (activations at the start of backward, gradients at its end); adding them
  would overstate the peak of full fine-tuning by the smaller of the two. `tests/test_plan.py`
  checks the result against the peak RSS of real CPU training steps.
- weights: full fine-tuning keeps fp32 master weights (4 bytes/param: tuneloop loads the model in
  fp32 and trains in bf16/fp16 autocast); LoRA and DoRA freeze a 16-bit base on GPU (2 bytes/param,
  fp32 on CPU); QLoRA stores the base's linear layers in 4-bit NF4 (0.5 bytes/param plus one
  quantisation constant per 64 weights: 1 byte with double quantisation, else 4) and keeps the
  rest in fp32 (PEFT's prepare_model_for_kbit_training upcasts it); prompt and prefix tuning keep
  an fp32 base. Adapters and virtual tokens are fp32: 4 bytes per trainable parameter.
- gradients: 4 bytes per trainable parameter; optimizer: AdamW's two fp32 moments, 8 bytes.
  Full fine-tuning in mixed precision is therefore 16-18 bytes/param, in fp32 16.
- 16-bit weight copies: autocast keeps a 16-bit copy of every trainable weight for backward (2 bytes).
- activations: what autograd saves, counted per token for a Llama-style block (RMSNorm, SwiGLU MLP,
  memory-efficient SDPA attention that stores no seq² scores), with h the width, q and kv the
  query and key/value widths, i the MLP width:
    full fine-tuning   6h + 2q + 2kv + 4i elements per layer (norm inputs and outputs, the
                       attention input, q, k, v and output, the MLP input, gate, SiLU, up and product);
    frozen base        2h + 2q + 2kv + 3i, plus each adapted layer's input (shared by q/k/v and by
                       gate/up; with LoRA dropout each adapter keeps its own dropped-out copy and mask)
                       and the adapter's rank-r output; DoRA adds two outputs per adapted layer.
  Elements take 4 bytes in fp32 and 2 in 16-bit, except that RMSNorm works in fp32. Gradient
  checkpointing keeps only each layer's input plus one layer being recomputed. Other architectures
  (GPT-2, Phi-3, ...) are approximated with the same count from their widths. Eager attention adds
  the seq² scores and probabilities. This is the Korthikanti et al. (2022) accounting,
  s·b·h·(34 + 5·a·s/h) bytes for a GPT block, redone for the blocks tuneloop trains.
- logits: tuneloop computes logits only at trained positions, so (batch × seq × trained fraction)
  × vocabulary × 12 bytes in fp32 (the log-probabilities and, in backward, their gradient and the
  logits' gradient), 14 in mixed precision (plus the 16-bit logits' gradient).
- overhead: 1 GiB on a GPU for the CUDA context and kernels; 0.03 GiB on CPU for the math
  libraries' buffers (measured with PyTorch 2 on Linux). On CPU, glibc's allocator can also keep
  freed activation memory in the process, so peak RSS may exceed the estimate by up to the
  activations; MALLOC_MMAP_THRESHOLD_=65536 makes it return large blocks to the OS.

Time = training tokens × FLOPs per token ÷ (peak TFLOPS × MFU). FLOPs per token: 6N for full
fine-tuning, 4N for every adapter method (no weight gradients for the frozen base), +2N with
gradient checkpointing (the forward runs twice); N = total parameters.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, get_args

import yaml

from tuneloop.config import MethodConfig, MethodName, ProjectConfig
from tuneloop.errors import UserError
from tuneloop.models import EMBEDDED, describe

GIB = 1024**3
SHIPPED_GPUS = Path(__file__).with_name("gpus.yaml")
PROJECT_GPUS = "gpus.yaml"  # a project's own table, next to its tuneloop.yaml

GPU_OVERHEAD = 1 * GIB
CPU_OVERHEAD = int(0.03 * GIB)
# "Fits" keeps 10% of the card free: the CUDA caching allocator fragments, and this is an estimate.
# Full fine-tuning is recommended only where it fits "comfortably", in 75% of the card.
FIT_SHARE = 0.90
COMFORT_SHARE = 0.75
FULL_MIN_EXAMPLES = 10_000
SMALL_DATA = 1_000
MAX_BATCH = 1 << 16
ADAPTER_METHODS = ("lora", "qlora", "dora")

# Assumed model FLOPs utilisation. Adapter methods add many small matmuls that keep the tensor
# cores idle more often, DoRA also renormalises every adapted weight each step, and QLoRA
# dequantises each 4-bit weight every time it is used, so they reach a lower share of peak.
DEFAULT_MFU: dict[str, float] = {
    "full": 0.35,
    "lora": 0.30,
    "dora": 0.20,
    "qlora": 0.20,
    "prompt_tuning": 0.30,
    "prefix_tuning": 0.30,
}

# Logit bytes per kept position and vocabulary entry: log-probabilities plus, in backward, their
# gradient and the logits' gradient (fp32); mixed precision adds the 16-bit logits' gradient.
_LOGIT_BYTES = {"fp32": 12, "mixed": 14}
# Linear layers that read the same tensor: one saved input serves all of them. o_proj reads the
# attention output, which the attention kernel saves anyway.
_SHARED_INPUT = {
    "q_proj": "attn_in",
    "k_proj": "attn_in",
    "v_proj": "attn_in",
    "gate_proj": "mlp_in",
    "up_proj": "mlp_in",
}
_SAVED_ELSEWHERE = {"o_proj"}


# --------------------------------------------------------------------------- the GPU table


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


# --------------------------------------------------------------------------- the model's shape


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
        layers=_first(text, "num_hidden_layers", "n_layer", "num_layers"),
        heads=heads,
        kv_heads=kv_heads,
        head_dim=head_dim,
        intermediate=intermediate,
        vocab=_first(text, "vocab_size"),
        # The built model records the attention transformers would pick (SDPA where supported).
        eager_attention=getattr(model.config, "_attn_implementation", None) == "eager",
        modules=_modules(model),
    )


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
    from tuneloop.train.methods import LORA_TARGETS

    targets = method.lora.target_modules
    if targets == "auto":
        targets = LORA_TARGETS.get(shape.model_type, "all-linear")
    if targets == "all-linear":
        return [m for m in shape.modules if m.kind == "linear" and not m.head]
    chosen = [m for m in shape.modules if any(m.name == t or m.name.endswith("." + t) for t in targets)]
    missing = [t for t in targets if not any(m.name == t or m.name.endswith("." + t) for m in chosen)]
    if missing:
        names = sorted({m.name.rsplit(".", 1)[-1] for m in shape.modules if m.kind == "linear"})
        raise UserError(
            f"method.lora.target_modules: {', '.join(missing)} match no layer of {shape.name}; "
            f"its linear layers are {', '.join(names)} (or use 'all-linear')"
        )
    return chosen


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


# --------------------------------------------------------------------------- memory


@dataclass(frozen=True)
class Memory:
    """Estimated bytes for one training process, by component."""

    weights: int
    gradients: int
    optimizer: int
    weight_copies: int
    activations: int
    logits: int
    overhead: int

    @property
    def peak(self) -> int:
        # Gradients appear as backward frees activations: the two peak at different moments.
        transient = self.weight_copies + self.activations + self.logits
        return self.weights + self.optimizer + max(self.gradients, transient) + self.overhead


def estimate_memory(
    shape: ModelShape,
    method: MethodConfig,
    batch_size: int,
    seq_len: int,
    *,
    device: str = "gpu",
    precision: str = "mixed",
    trained_fraction: float = 1.0,
    gradient_checkpointing: bool = False,
    base_dtype_bytes: int | None = None,
) -> Memory:
    """Peak training memory of `shape` under `method` for micro-batches of `batch_size` × `seq_len` tokens.

    `device` is 'gpu' or 'cpu'; `precision` 'mixed' (bf16/fp16 autocast) or 'fp32'.
    `trained_fraction` is the share of positions with a loss (logits are computed only there).
    `base_dtype_bytes` overrides the frozen LoRA/DoRA base's bytes per parameter (model.dtype).
    """
    if precision not in ("mixed", "fp32") or device not in ("gpu", "cpu"):
        raise ValueError(f"precision must be mixed or fp32 and device gpu or cpu, got {precision}, {device}")
    trainable = trainable_parameters(shape, method)
    elem = 4 if precision == "fp32" else 2
    kept = batch_size * seq_len * trained_fraction
    return Memory(
        weights=_weight_bytes(shape, method, trainable, device, base_dtype_bytes),
        gradients=4 * trainable,
        optimizer=8 * trainable,
        weight_copies=2 * trainable if precision == "mixed" else 0,
        activations=_activation_bytes(shape, method, batch_size, seq_len, kept, elem, device, gradient_checkpointing),
        logits=int(kept * shape.vocab * _LOGIT_BYTES[precision]),
        overhead=GPU_OVERHEAD if device == "gpu" else CPU_OVERHEAD,
    )


def _weight_bytes(shape: ModelShape, method: MethodConfig, trainable: int, device: str, base: int | None) -> int:
    n = shape.parameters
    if method.name == "full":
        return 4 * n
    if method.name == "qlora":
        quantised = sum(m.in_features * m.out_features for m in shape.modules if m.kind == "linear" and not m.head)
        per_param = 0.5 + (1 if method.quant.double_quant else 4) / 64
        return int(quantised * per_param) + 4 * (n - quantised) + 4 * trainable
    if method.name in ("lora", "dora"):
        base_bytes = base or (2 if device == "gpu" else 4)
        return base_bytes * n + 4 * trainable
    return 4 * n + 4 * trainable  # prompt/prefix tuning load the base in fp32


def _activation_bytes(
    shape: ModelShape,
    method: MethodConfig,
    batch_size: int,
    seq_len: int,
    kept: float,
    elem: int,
    device: str,
    checkpointing: bool,
) -> int:
    """Bytes autograd keeps for one micro-batch, plus weights materialised on the fly."""
    if method.name == "prompt_tuning":
        seq_len += method.prompt.num_virtual_tokens  # the virtual tokens run through every layer
    tokens = batch_size * seq_len
    per_token = _activation_bytes_per_token(shape, method, elem, device, checkpointing)
    head_input = kept * shape.hidden * elem if method.name == "full" else 0  # lm_head's, at trained positions
    eager = _eager_attention_bytes(shape, batch_size, seq_len, elem, checkpointing)
    return int(tokens * per_token + head_input) + eager + _transient_weight_bytes(shape, method, elem)


def _activation_bytes_per_token(
    shape: ModelShape, method: MethodConfig, elem: int, device: str, checkpointing: bool
) -> float:
    """Bytes autograd keeps per token across all layers (see the module docstring for the count)."""
    h, q, kv, i = shape.hidden, shape.q_dim, shape.kv_dim, shape.intermediate
    full = method.name == "full"
    per_layer = 6 * h + 2 * q + 2 * kv + 4 * i if full else 2 * h + 2 * q + 2 * kv + 3 * i
    fp32_norm = (4 if full else 2) * h  # RMSNorm computes in fp32 whatever the training precision
    layer_bytes = per_layer * elem + fp32_norm * (4 - elem)
    adapters = _adapter_bytes_per_token(shape, method, elem, device) if method.name in ADAPTER_METHODS else 0
    final = (2 * h if full else h) * 4  # the final RMSNorm, in fp32
    if checkpointing:
        residual = 4 if full or elem == 4 else elem  # fp32 master weights keep the residual stream in fp32
        return shape.layers * h * residual + layer_bytes + adapters / shape.layers + final
    return shape.layers * layer_bytes + adapters + final


def _adapter_bytes_per_token(shape: ModelShape, method: MethodConfig, elem: int, device: str) -> int:
    """What the adapters make autograd keep: their layers' inputs, rank-r outputs, and DoRA's outputs."""
    modules = [m for m in adapted_modules(shape, method) if m.kind == "linear"]
    dropout = method.lora.dropout > 0
    mask = 1 if device == "gpu" else elem  # CUDA dropout keeps a bool mask, CPU a mask in the input's dtype
    total = 0
    inputs_seen: set[str] = set()
    for m in modules:
        prefix, _, short = m.name.rpartition(".")
        total += method.lora.r * elem
        if method.name == "dora":
            total += 2 * m.out_features * elem
        if dropout:
            total += m.in_features * (elem + mask)
            continue
        key = f"{prefix}.{_SHARED_INPUT.get(short, short)}"
        if short in _SAVED_ELSEWHERE or key in inputs_seen:
            continue
        inputs_seen.add(key)
        total += m.in_features * elem
    return total


def _transient_weight_bytes(shape: ModelShape, method: MethodConfig, elem: int) -> int:
    """Weights materialised one layer at a time: QLoRA dequantises, DoRA adds the LoRA product."""
    if method.name not in ("qlora", "dora"):
        return 0
    sizes = [m.in_features * m.out_features for m in adapted_modules(shape, method) if m.kind == "linear"]
    largest = max(sizes, default=0)
    return largest * elem * (2 if method.name == "dora" else 1)


def _eager_attention_bytes(shape: ModelShape, batch_size: int, seq_len: int, elem: int, checkpointing: bool) -> int:
    """Eager attention also keeps each head's seq² scores and probabilities (one layer's when checkpointing)."""
    if not shape.eager_attention:
        return 0
    layers = 1 if checkpointing else shape.layers
    return 2 * layers * shape.heads * batch_size * seq_len * seq_len * elem


# --------------------------------------------------------------------------- the prepared data


@dataclass(frozen=True)
class DataStats:
    """What `tuneloop data prepare` measured (report.json and manifest.json in data.prepared_dir)."""

    folder: Path
    train_rows: int
    val_rows: int
    tokens_per_epoch: int | None
    trained_tokens_per_epoch: int | None
    longest: int | None
    p90: int | None
    model: str | None

    @property
    def tokenized(self) -> bool:
        return self.tokens_per_epoch is not None and self.train_rows > 0

    @property
    def trained_fraction(self) -> float | None:
        if not self.tokenized or not self.trained_tokens_per_epoch:
            return None
        return self.trained_tokens_per_epoch / self.tokens_per_epoch


def read_data_stats(cfg: ProjectConfig) -> DataStats | None:
    """The prepared data's counts, or None when `tuneloop data prepare` has not finished for this project."""
    folder = cfg.path(cfg.data.prepared_dir)
    manifest, report = folder / "manifest.json", folder / "report.json"
    if not (manifest.is_file() and report.is_file()):  # prepare writes the manifest last
        return None
    try:
        rep = json.loads(report.read_text(encoding="utf-8"))
        man = json.loads(manifest.read_text(encoding="utf-8"))
        splits, lengths = rep["splits"], rep["lengths"]
        return DataStats(
            folder=folder,
            train_rows=int(splits["train"]["rows"]),
            val_rows=int(splits["val"]["rows"]),
            tokens_per_epoch=rep["tokens_per_epoch"],
            trained_tokens_per_epoch=rep["trained_tokens_per_epoch"],
            longest=lengths.get("max"),
            p90=lengths.get("p90"),
            model=man.get("model"),
        )
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
        raise UserError(f"{report} is unreadable ({e}); rerun `tuneloop data prepare`") from None


def training_tokens(
    cfg: ProjectConfig, data: DataStats | None, batch_size: int, seq_len: int
) -> tuple[int | None, str]:
    """(tokens the run will process, how that was worked out); None when it cannot be known."""
    t = cfg.train
    per_step = batch_size * t.grad_accum
    if data is not None and data.tokenized:
        mean = data.tokens_per_epoch / data.train_rows
        if t.max_steps:
            how = f"train.max_steps {t.max_steps:,} × {per_step} examples × {mean:,.0f} tokens on average"
            return round(t.max_steps * per_step * mean), how
        rows = min(t.examples or data.train_rows, data.train_rows)
        epoch = data.tokens_per_epoch * rows / data.train_rows
        return round(epoch * t.epochs), f"{epoch:,.0f} tokens per epoch × {t.epochs:g} epochs"
    if t.max_steps:
        how = f"train.max_steps {t.max_steps:,} × {per_step} examples × {seq_len} tokens (an upper bound)"
        return t.max_steps * per_step * seq_len, how
    return None, "unknown: no prepared token counts and no train.max_steps"


# --------------------------------------------------------------------------- time and cost


def flops_per_token(parameters: int, method: str, gradient_checkpointing: bool = False) -> int:
    """Training FLOPs per token: 6N for full fine-tuning, 4N for adapters, +2N when checkpointing."""
    factor = 6 if method == "full" else 4
    return (factor + 2 * gradient_checkpointing) * parameters


def training_hours(tokens: int, flops: int, tflops: float, mfu: float) -> float:
    """Hours to process `tokens` at `flops` per token on a GPU doing `tflops` peak at utilisation `mfu`."""
    return tokens * flops / (tflops * 1e12 * mfu) / 3600


def max_batch_size(peak_at: Callable[[int], int], limit: int) -> int:
    """The largest integer batch size whose peak memory (`peak_at(batch)`) is within `limit`; 0 if none."""
    if peak_at(1) > limit:
        return 0
    lo, hi = 1, 2
    while hi <= MAX_BATCH and peak_at(hi) <= limit:
        lo, hi = hi, hi * 2
    hi = min(hi, MAX_BATCH + 1)
    while hi - lo > 1:  # peak grows with the batch, so bisect between a fitting and a failing size
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if peak_at(mid) <= limit else (lo, mid)
    return lo


# --------------------------------------------------------------------------- the plan


@dataclass(frozen=True)
class Setting:
    """Everything besides the method and batch size that the memory estimate depends on."""

    seq_len: int
    trained_fraction: float
    gradient_checkpointing: bool
    gpu_precision: str  # mixed | fp32
    cpu_precision: str
    base_dtype_bytes: int | None

    def memory(self, shape: ModelShape, method: MethodConfig, batch_size: int, device: str) -> Memory:
        """The memory estimate for `method` at `batch_size` on 'gpu' or 'cpu' in this setting."""
        return estimate_memory(
            shape,
            method,
            batch_size,
            self.seq_len,
            device=device,
            precision=self.gpu_precision if device == "gpu" else self.cpu_precision,
            trained_fraction=self.trained_fraction,
            gradient_checkpointing=self.gradient_checkpointing,
            base_dtype_bytes=self.base_dtype_bytes,
        )


@dataclass(frozen=True)
class GpuEstimate:
    """One row of the plan: the chosen config on one GPU."""

    gpu: Gpu
    precision: str
    peak: int
    fits: bool
    max_batch: int
    hours: float | None
    cost: float | None


@dataclass
class Plan:
    """The answer of `tuneloop plan`."""

    shape: ModelShape
    method: str
    trainable: int
    batch_size: int
    grad_accum: int
    setting: Setting
    seq_len_source: str
    tokens: int | None
    tokens_source: str
    flops_per_token: int
    mfu: float
    gpu_memory: Memory
    cpu_memory: Memory
    cpu_ram: int | None
    rows: list[GpuEstimate]
    recommendation: str
    reason: str
    gpus_file: Path
    warnings: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def make_plan(
    cfg: ProjectConfig,
    *,
    model: str | None = None,
    method: str | None = None,
    gpus: list[str] | None = None,
    batch_size: int | None = None,
    seq_len: int | None = None,
    mfu: float | None = None,
    gpus_file: Path | None = None,
) -> Plan:
    """Estimate memory, time and cost of training `cfg` (with these overrides) on each GPU, and recommend a method."""
    if method is not None and method not in get_args(MethodName):
        raise UserError(f"--method {method} is not a method; choose from {', '.join(get_args(MethodName))}")
    method_cfg = cfg.method.model_copy(update={"name": method}) if method else cfg.method
    if (batch_size is not None and batch_size < 1) or (seq_len is not None and seq_len < 1):
        raise UserError("--batch-size and --seq-len must be at least 1")
    if mfu is not None and not 0 < mfu <= 1:
        raise UserError(f"--mfu is a fraction of the GPU's peak, between 0 and 1 (e.g. 0.35), not {mfu}")
    table_path = gpu_table_path(cfg, gpus_file)
    chosen_gpus = select_gpus(load_gpus(table_path), gpus)
    shape = model_shape(model or cfg.model.name, cfg.model.revision, cfg.model.trust_remote_code)
    data = read_data_stats(cfg)
    batch = batch_size or cfg.train.batch_size
    seq, seq_source = _seq_len(cfg, data, seq_len)
    setting = _setting(cfg, data, seq)
    flops = flops_per_token(shape.parameters, method_cfg.name, setting.gradient_checkpointing)
    tokens, tokens_source = training_tokens(cfg, data, batch, seq)
    utilisation = mfu or DEFAULT_MFU[method_cfg.name]
    rows = [estimate_gpu(shape, method_cfg, batch, setting, g, tokens, flops, utilisation) for g in chosen_gpus]
    recommendation, reason = recommend(shape, method_cfg, batch, setting, chosen_gpus, data)
    plan = Plan(
        shape=shape,
        method=method_cfg.name,
        trainable=trainable_parameters(shape, method_cfg),
        batch_size=batch,
        grad_accum=cfg.train.grad_accum,
        setting=setting,
        seq_len_source=seq_source,
        tokens=tokens,
        tokens_source=tokens_source,
        flops_per_token=flops,
        mfu=utilisation,
        gpu_memory=setting.memory(shape, method_cfg, batch, "gpu"),
        cpu_memory=setting.memory(shape, method_cfg, batch, "cpu"),
        cpu_ram=_physical_memory(),
        rows=rows,
        recommendation=recommendation,
        reason=reason,
        gpus_file=table_path,
    )
    plan.warnings = _warnings(cfg, data, tokens)
    if setting.gpu_precision == "fp32":
        plan.warnings.append(
            "train.precision is fp32: GPU hours use the table's 16-bit tensor-core peak, and fp32 runs several "
            "times slower; set train.precision=auto to train in bf16/fp16"
        )
    plan.notes = _notes(plan, data, model)
    return plan


def _seq_len(cfg: ProjectConfig, data: DataStats | None, asked: int | None) -> tuple[int, str]:
    if asked:
        return asked, "--seq-len"
    if data is not None and data.longest:
        typical = f" (p90 is {data.p90}; pass --seq-len for a typical batch)" if data.p90 else ""
        return data.longest, f"the longest prepared example: a batch of long examples sets the peak{typical}"
    return cfg.data.max_length, "data.max_length (no prepared lengths)"


def _setting(cfg: ProjectConfig, data: DataStats | None, seq_len: int) -> Setting:
    precision = cfg.train.precision
    fraction = data.trained_fraction if data is not None else None
    dtype = cfg.model.dtype
    return Setting(
        seq_len=seq_len,
        trained_fraction=fraction if fraction is not None else 1.0,
        gradient_checkpointing=cfg.train.gradient_checkpointing,
        gpu_precision="fp32" if precision == "fp32" else "mixed",
        cpu_precision="mixed" if precision in ("bf16", "fp16") else "fp32",
        base_dtype_bytes=None if dtype == "auto" else (4 if dtype == "float32" else 2),
    )


def estimate_gpu(
    shape: ModelShape,
    method: MethodConfig,
    batch: int,
    setting: Setting,
    gpu: Gpu,
    tokens: int | None,
    flops: int,
    mfu: float,
) -> GpuEstimate:
    """Peak memory, whether it fits, the largest batch that fits, hours and dollars on one GPU."""
    peak = setting.memory(shape, method, batch, "gpu").peak
    limit = FIT_SHARE * gpu.memory_bytes
    biggest = max_batch_size(lambda b: setting.memory(shape, method, b, "gpu").peak, int(limit))
    hours = training_hours(tokens, flops, gpu.tflops, mfu) if tokens is not None and biggest else None
    precision = "fp32" if setting.gpu_precision == "fp32" else ("bf16" if gpu.bf16 else "fp16")
    return GpuEstimate(
        gpu=gpu,
        precision=precision,
        peak=peak,
        fits=peak <= limit,
        max_batch=biggest,
        hours=hours,
        cost=hours * gpu.usd_per_hour if hours is not None else None,
    )


def recommend(
    shape: ModelShape, method: MethodConfig, batch: int, setting: Setting, gpus: list[Gpu], data: DataStats | None
) -> tuple[str, str]:
    """(method, why): full when it fits comfortably and there are ≥10k examples, else LoRA, else QLoRA."""

    def where(name: str, share: float) -> list[Gpu]:
        m = method.model_copy(update={"name": name})
        return [g for g in gpus if setting.memory(shape, m, batch, "gpu").peak <= share * g.memory_bytes]

    def cheapest(found: list[Gpu]) -> str:
        return min(found, key=lambda g: g.usd_per_hour).name

    rows = data.train_rows if data is not None else None
    full = where("full", COMFORT_SHARE)
    if full and rows is not None and rows >= FULL_MIN_EXAMPLES:
        return "full", (
            f"full fine-tuning fits comfortably (cheapest: {cheapest(full)}) and {rows:,} training examples "
            f"(≥ {FULL_MIN_EXAMPLES:,}) are enough to move every weight without overfitting"
        )
    lora = where("lora", FIT_SHARE)
    if lora:
        if not full:
            why = "full fine-tuning does not fit comfortably on any GPU considered"
        elif rows is None:
            why = "the data size is unknown (run `tuneloop data prepare`)"
        else:
            why = f"{rows:,} training examples are fewer than {FULL_MIN_EXAMPLES:,}: an adapter overfits less"
        return "lora", f"{why}; LoRA fits (cheapest: {cheapest(lora)})"
    qlora = where("qlora", FIT_SHARE)
    if qlora:
        return "qlora", f"LoRA's 16-bit base does not fit; QLoRA's 4-bit base does (cheapest: {cheapest(qlora)})"
    return "none", (
        f"nothing fits at batch size {batch}: set train.gradient_checkpointing=true, lower --batch-size (raise "
        "train.grad_accum to keep the effective batch), use a GPU with more memory, or a smaller model"
    )


def _physical_memory() -> int | None:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):  # not a POSIX system that reports it
        return None


def _warnings(cfg: ProjectConfig, data: DataStats | None, tokens: int | None) -> list[str]:
    out = []
    prepare = "run `tuneloop data prepare` first"
    if data is None:
        guess = "the token count assumes every example is as long" if tokens is not None else "no time or cost"
        out.append(
            f"no prepared data in {cfg.path(cfg.data.prepared_dir)}: sequence length is data.max_length and "
            f"{guess}; {prepare} for real numbers"
        )
        return out
    if not data.tokenized:
        out.append(
            "the data was prepared without tokenizing (--no-tokenize): lengths and token counts are unknown; "
            "rerun `tuneloop data prepare` without --no-tokenize"
        )
    if data.train_rows < SMALL_DATA:
        out.append(
            f"only {data.train_rows:,} training examples; fine-tuning usually needs at least {SMALL_DATA:,} for a "
            "reliable gain: add data, or prefer LoRA and expect a small, noisy improvement"
        )
    if data.val_rows == 0:
        out.append(
            "no validation split: training cannot pick the best checkpoint or stop early; set data.split.val "
            "(e.g. --set data.split.val=0.1 --set data.split.train=0.8) or data.val, and rerun `tuneloop data prepare`"
        )
    return out


def _notes(plan: Plan, data: DataStats | None, model: str | None) -> list[str]:
    s = plan.setting
    notes = [
        f"model shape: {plan.shape.source}",
        "memory = weights + optimizer + max(gradients, 16-bit weight copies + activations + logits) + overhead: "
        "backward frees each layer's activations as it creates its gradients",
        _method_note(plan.method),
        "activations: what autograd keeps for a Llama-style block with memory-efficient (SDPA) attention"
        + (", recomputing each layer (gradient checkpointing)" if s.gradient_checkpointing else ""),
        f"sequence length {s.seq_len}: {plan.seq_len_source}",
        f"logits only at trained positions: {s.trained_fraction:.0%} of tokens"
        + (" (from the data report)" if data is not None and data.trained_fraction else " (assumed: no report)"),
        f"overhead: {GPU_OVERHEAD / GIB:g} GiB per GPU for the CUDA context; {CPU_OVERHEAD / GIB:.2f} GiB on CPU",
        "on CPU, glibc's allocator may keep freed activation memory, so peak RSS can exceed the estimate by up to "
        "the activations; MALLOC_MMAP_THRESHOLD_=65536 makes it return large blocks",
        f"fits: peak within {FIT_SHARE:.0%} of the GPU's memory; max batch is the largest integer batch size that "
        "fits (memory grows linearly with it), for one GPU without sharding",
        f"time: tokens × {plan.flops_per_token / plan.shape.parameters:g}N FLOPs ÷ (peak TFLOPS × MFU {plan.mfu:g}); "
        "padding and evaluation passes are not counted",
        f"GPU memory, TFLOPS and prices are editable assumptions from {plan.gpus_file}",
    ]
    if data is not None and data.model and model and data.model != model:
        notes.append(f"token counts come from the data prepared with {data.model}'s tokenizer")
    return notes


def _method_note(method: str) -> str:
    per_param = {
        "full": "full: fp32 master weights 4 B + gradients 4 B + AdamW 8 B per parameter, + 2 B 16-bit copies in "
        "mixed precision",
        "lora": "lora: frozen base 2 B/param on GPU (4 B on CPU) + 16 B per adapter parameter",
        "dora": "dora: frozen base 2 B/param on GPU (4 B on CPU) + 16 B per adapter and magnitude parameter",
        "qlora": "qlora: 4-bit NF4 linear layers ~0.52 B/param (double quantisation; 0.56 B without), other "
        "parameters fp32, + 16 B per adapter parameter",
        "prompt_tuning": "prompt_tuning: fp32 frozen base 4 B/param + 16 B per virtual-token parameter",
        "prefix_tuning": "prefix_tuning: fp32 frozen base 4 B/param + 16 B per prefix parameter",
    }
    return per_param[method]


def plan_to_dict(plan: Plan) -> dict[str, Any]:
    """The plan as JSON-ready data (`tuneloop plan --json`)."""
    shape = {k: v for k, v in asdict(plan.shape).items() if k != "modules"}
    return {
        "model": shape,
        "method": plan.method,
        "trainable_parameters": plan.trainable,
        "batch_size": plan.batch_size,
        "grad_accum": plan.grad_accum,
        "seq_len": plan.setting.seq_len,
        "seq_len_source": plan.seq_len_source,
        "trained_fraction": plan.setting.trained_fraction,
        "gradient_checkpointing": plan.setting.gradient_checkpointing,
        "tokens": plan.tokens,
        "tokens_source": plan.tokens_source,
        "flops_per_token": plan.flops_per_token,
        "mfu": plan.mfu,
        "memory_bytes": {
            "gpu": {**asdict(plan.gpu_memory), "peak": plan.gpu_memory.peak, "precision": plan.setting.gpu_precision},
            "cpu": {**asdict(plan.cpu_memory), "peak": plan.cpu_memory.peak, "precision": plan.setting.cpu_precision},
        },
        "cpu_ram_bytes": plan.cpu_ram,
        "gpus": [
            {
                **asdict(r.gpu),
                "precision": r.precision,
                "peak_bytes": r.peak,
                "fits": r.fits,
                "max_batch": r.max_batch,
                "hours": r.hours,
                "cost_usd": r.cost,
            }
            for r in plan.rows
        ],
        "recommendation": {"method": plan.recommendation, "reason": plan.reason},
        "gpus_file": str(plan.gpus_file),
        "warnings": plan.warnings,
        "notes": plan.notes,
    }
