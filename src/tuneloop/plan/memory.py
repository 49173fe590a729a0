"""Peak memory of one training process, by component.

The formulas:

Memory = weights + reference + optimizer
         + max(gradients, 16-bit weight copies + activations + logits, generation) + overhead.
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
  TRL's DPO, KTO and GRPO trainers score through a chunked LM head instead (`lm_head="chunked"`, trl
  1.16's kernels/chunked_logprob.py): no (positions × vocabulary) logits, but one tile buffer of
  min(positions, 4096) × 32,768 (allocated at the full chunk width whatever the vocabulary) in the
  compute dtype, the head's saved fp32 input and, in backward, its fp32 gradient (positions × h × 8
  bytes). On a GPU a Triton kernel folds the tile in place and only the trained positions are scored;
  elsewhere (CPU) every position is, and torch ops make fp32 copies of the tile's used width: the
  transformed logits, their shifted copy and its exponentials (3 more). Measured on CPU for a DPO
  step (tests/test_plan_methods.py), the estimate was 4-5% below the peak: the backward's
  temporaries are not all counted. A reward model's head scores the last token only
  (`lm_head="none"`): no logits term at all.
- reference: the frozen reference model of DPO/IPO and GRPO when every weight trains: a second copy of
  the weights at the policy's bytes per parameter (4: fp32). With LoRA/DoRA the adapter-off policy is
  the reference, and with `method.grpo.beta` 0 GRPO needs none: 0. Its forward runs without
  gradients, so it keeps no activations.
- generation: GRPO samples answers before the training forward (gradients are freed by then): the KV
  cache of the whole generation batch, 2 × layers × kv width × (prompt + completion) tokens per
  sequence in the weights' dtype, plus each decoding step's fp32 logits and sampling probabilities
  (sequences × vocabulary × 8 bytes). See plan/methods.py for what each method runs.
- overhead: 1 GiB on a GPU for the CUDA context and kernels; 0.03 GiB on CPU for the math
  libraries' buffers (measured with PyTorch 2 on Linux). On CPU, glibc's allocator can also keep
  freed activation memory in the process, so peak RSS may exceed the estimate by up to the
  activations; MALLOC_MMAP_THRESHOLD_=65536 makes it return large blocks to the OS.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from tuneloop.config import MethodConfig
from tuneloop.plan.gpus import GIB
from tuneloop.plan.shape import ModelShape, adapted_modules, trainable_parameters

GPU_OVERHEAD = 1 * GIB
CPU_OVERHEAD = int(0.03 * GIB)
MAX_BATCH = 1 << 16
ADAPTER_METHODS = ("lora", "qlora", "dora")
# Logit bytes per kept position and vocabulary entry: log-probabilities plus, in backward, their
# gradient and the logits' gradient (fp32); mixed precision adds the 16-bit logits' gradient.
_LOGIT_BYTES = {"fp32": 12, "mixed": 14}
# TRL's chunked LM head (trl.kernels.chunked_logprob): tiles of at most this many positions × vocabulary entries.
CHUNK_POSITIONS, CHUNK_VOCAB = 4096, 32768
LmHead = Literal["logits", "chunked", "none"]
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
    reference: int = 0
    generation: int = 0

    @property
    def peak(self) -> int:
        # Gradients appear as backward frees activations, and generation runs before the forward, after the
        # optimizer step freed the gradients: the three peak at different moments.
        transient = self.weight_copies + self.activations + self.logits
        held = self.weights + self.reference + self.optimizer + self.overhead
        return held + max(self.gradients, transient, self.generation)


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
    lm_head: LmHead = "logits",
) -> Memory:
    """Peak training memory of `shape` under `method` for micro-batches of `batch_size` × `seq_len` tokens.

    `device` is 'gpu' or 'cpu'; `precision` 'mixed' (bf16/fp16 autocast) or 'fp32'.
    `trained_fraction` is the share of positions with a loss (logits are computed only there).
    `base_dtype_bytes` overrides the frozen LoRA/DoRA base's bytes per parameter (model.dtype).
    `lm_head` is how the loss reads the output: full-vocabulary `logits` at trained positions (SFT),
    TRL's `chunked` head (DPO, GRPO), or `none` (a reward model's one-score head).
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
        activations=_activation_bytes(
            shape, method, batch_size, seq_len, kept if lm_head == "logits" else 0, elem, device, gradient_checkpointing
        ),
        logits=_logit_bytes(shape, lm_head, kept, batch_size * seq_len, device, elem, precision),
        overhead=GPU_OVERHEAD if device == "gpu" else CPU_OVERHEAD,
    )


def _logit_bytes(
    shape: ModelShape, lm_head: LmHead, kept: float, tokens: int, device: str, elem: int, precision: str
) -> int:
    """What the output head needs beyond the blocks' activations (see the module docstring)."""
    if lm_head == "none":
        return 0
    if lm_head == "chunked":
        positions = kept if device == "gpu" else tokens  # TRL compacts to the trained positions on Triton devices
        rows = min(positions, CHUNK_POSITIONS)
        tile = rows * CHUNK_VOCAB * elem
        if device == "cpu":  # no Triton: torch ops on the tile's used width, in fp32
            tile += 3 * rows * min(shape.vocab, CHUNK_VOCAB) * 4
        return int(tile + positions * shape.hidden * 8)
    return int(kept * shape.vocab * _LOGIT_BYTES[precision])


def generation_bytes(shape: ModelShape, sequences: int, seq_len: int, elem: int) -> int:
    """GRPO's sampling: the KV cache of `sequences` × `seq_len` tokens in `elem`-byte values, and the
    fp32 logits and sampling probabilities of one decoding step."""
    kv_cache = 2 * shape.layers * shape.kv_dim * sequences * seq_len * elem
    return kv_cache + sequences * shape.vocab * 8


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
