"""Write a merged Llama-architecture model as a GGUF file (f16 or q8_0) with gguf-py, llama.cpp's own library.

What llama.cpp's converter (convert_hf_to_gguf.py) does for Llama, and no more:
- tensor names from gguf-py's TensorNameMap (`model.layers.0.self_attn.q_proj` → `blk.0.attn_q`);
- the query and key projections permuted into llama.cpp's rotary layout (transformers' GGUF loader
  undoes it on the way back, which the export's verification exercises);
- 1-D tensors (norms) in float32; matrices in f16, or q8_0 where a row splits into 32-value blocks;
- the byte-level BPE tokenizer as metadata: tokens, token types, merges, the pre-tokenizer name, the
  BOS/EOS/UNK/PAD ids, whether to add BOS, and the exact chat template the run trained with.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tuneloop.errors import UserError

SUPPORTED_ARCHITECTURES = ("llama",)
# tokenizer.json pre-tokenizers that llama.cpp knows by name (its `tokenizer.ggml.pre`).
_DIGITS_THEN_BYTES = ("Digits", "ByteLevel")


def check_supported(config: Any, tokenizer_json: dict[str, Any]) -> None:
    """Refuse, before any work, a model or tokenizer this writer cannot represent faithfully."""
    arch = getattr(config, "model_type", "?")
    if arch not in SUPPORTED_ARCHITECTURES:
        raise UserError(
            f"GGUF export supports the {', '.join(SUPPORTED_ARCHITECTURES)} architecture (SmolLM2, Llama 2/3, and "
            f"their fine-tunes); this model is {arch!r}. Export --format safetensors and convert it with "
            "llama.cpp's convert_hf_to_gguf.py"
        )
    if getattr(config, "attention_bias", False) or getattr(config, "mlp_bias", False):
        raise UserError("GGUF export does not write attention or MLP biases; this Llama variant has them")
    rope = getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None) or {}
    if rope.get("rope_type", "default") not in ("default", None):
        raise UserError(f"GGUF export supports plain RoPE; this model uses rope_type {rope.get('rope_type')!r}")
    model = tokenizer_json.get("model", {})
    decoder = (tokenizer_json.get("decoder") or {}).get("type")
    if model.get("type") != "BPE" or model.get("byte_fallback") or decoder != "ByteLevel":
        raise UserError(
            "GGUF export supports byte-level BPE tokenizers (GPT-2 style, as SmolLM2, Llama 3 and Qwen use); "
            "this tokenizer is not one. Export --format safetensors instead"
        )
    pre_tokenizer_name(tokenizer_json)


def pre_tokenizer_name(tokenizer_json: dict[str, Any]) -> str:
    """llama.cpp's name for how this tokenizer splits text before BPE (`tokenizer.ggml.pre`)."""
    pre = tokenizer_json.get("pre_tokenizer") or {}
    steps = pre.get("pretokenizers", [pre]) if pre.get("type") == "Sequence" else [pre]
    kinds = tuple(s.get("type") for s in steps)
    if kinds == ("ByteLevel",) and steps[0].get("use_regex", True):
        return "gpt-2"
    if kinds == _DIGITS_THEN_BYTES and steps[0].get("individual_digits") and steps[1].get("use_regex", True):
        return "smollm"
    raise UserError(
        f"GGUF export cannot name this tokenizer's pre-tokenizer ({' + '.join(map(str, kinds))}) for llama.cpp; "
        "it knows GPT-2's byte-level split and SmolLM's digits + byte-level. Export --format safetensors instead"
    )


def add_bos_token(tokenizer: Any) -> bool:
    """The GGUF's `add_bos_token`: whether llama.cpp must add BOS to a rendered chat prompt.

    Yes exactly when the training renderer starts prompts with a BOS that the chat template did not write
    (the tokenizer adds it); a template that writes BOS itself (llama3, mistral, gemma) gets no second one.
    """
    from tuneloop.data.render import Renderer

    if not Renderer(tokenizer).add_bos:
        return False
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True
    )
    return not text.startswith(tokenizer.bos_token)


def write_gguf(
    model: Any,
    tokenizer: Any,
    tokenizer_dir: Path,
    out: Path,
    quant: str,
    *,
    name: str,
    licence: str | None,
) -> Path:
    """Write `model` (a merged float32 Llama) as GGUF `quant` ('f16' or 'q8_0') to `out`; return it."""
    import gguf
    import numpy as np

    config = model.config
    tokenizer_json = json.loads((tokenizer_dir / "tokenizer.json").read_text(encoding="utf-8"))
    check_supported(config, tokenizer_json)
    matrix_type = {"f16": gguf.GGMLQuantizationType.F16, "q8_0": gguf.GGMLQuantizationType.Q8_0}[quant]
    file_type = {"f16": gguf.LlamaFileType.MOSTLY_F16, "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0}[quant]

    writer = gguf.GGUFWriter(str(out), gguf.MODEL_ARCH_NAMES[gguf.MODEL_ARCH.LLAMA])
    heads, kv_heads = config.num_attention_heads, config.num_key_value_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    rope = getattr(config, "rope_parameters", None) or {}
    writer.add_type(gguf.GGUFType.MODEL)
    writer.add_name(name)
    if licence and licence != "unknown":
        writer.add_license(licence)
    writer.add_vocab_size(config.vocab_size)
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_head_count(heads)
    writer.add_head_count_kv(kv_heads)
    writer.add_rope_freq_base(float(rope.get("rope_theta", getattr(config, "rope_theta", 10000.0))))
    writer.add_layer_norm_rms_eps(float(config.rms_norm_eps))
    writer.add_rope_dimension_count(head_dim)
    if head_dim != config.hidden_size // heads:
        writer.add_key_length(head_dim)
        writer.add_value_length(head_dim)
    writer.add_file_type(file_type)
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    _add_tokenizer(writer, tokenizer, tokenizer_dir, tokenizer_json, config.vocab_size, add_bos_token(tokenizer))

    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, config.num_hidden_layers)
    tied = bool(getattr(config, "tie_word_embeddings", False))
    for hf_name, tensor in model.state_dict().items():
        if tied and hf_name == "lm_head.weight":
            continue  # llama.cpp reuses token_embd when there is no output.weight
        gguf_name = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if gguf_name is None:
            raise UserError(f"GGUF export: no llama.cpp name for tensor {hf_name}")
        data = tensor.detach().to("cpu").float().numpy()
        if hf_name.endswith("self_attn.q_proj.weight"):
            data = _permute(data, heads, heads)
        elif hf_name.endswith("self_attn.k_proj.weight"):
            data = _permute(data, heads, kv_heads)
        if data.ndim == 1:
            writer.add_tensor(gguf_name, data.astype(np.float32))
            continue
        qtype = matrix_type
        if qtype == gguf.GGMLQuantizationType.Q8_0 and data.shape[-1] % gguf.GGML_QUANT_SIZES[qtype][0]:
            qtype = gguf.GGMLQuantizationType.F16  # rows that do not split into blocks stay f16, as in llama.cpp
        writer.add_tensor(gguf_name, gguf.quants.quantize(data, qtype), raw_dtype=qtype)

    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return out


def _permute(weights: Any, n_head: int, n_head_kv: int) -> Any:
    """llama.cpp's rotary layout for Q and K rows (convert_hf_to_gguf.py LlamaModel.permute)."""
    if n_head_kv is not None and n_head != n_head_kv:
        n_head = n_head_kv
    return (
        weights.reshape(n_head, 2, weights.shape[0] // n_head // 2, *weights.shape[1:])
        .swapaxes(1, 2)
        .reshape(weights.shape)
    )


def _add_tokenizer(
    writer: Any, tokenizer: Any, folder: Path, tokenizer_json: dict[str, Any], vocab_size: int, add_bos: bool
) -> None:
    """The byte-level BPE vocabulary as llama.cpp reads it (convert_hf_to_gguf.py's `_set_vocab_gpt2`)."""
    import gguf

    by_id = {i: t for t, i in tokenizer.get_vocab().items()}
    added = {t.content: t for t in tokenizer.added_tokens_decoder.values()}
    tokens, types = [], []
    for i in range(vocab_size):
        token = by_id.get(i)
        if token is None:
            tokens.append(f"[PAD{i}]")
            types.append(gguf.TokenType.UNUSED)
        elif token in added:
            tokens.append(token)
            types.append(gguf.TokenType.CONTROL if added[token].special else gguf.TokenType.USER_DEFINED)
        else:
            tokens.append(token)
            types.append(gguf.TokenType.NORMAL)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(pre_tokenizer_name(tokenizer_json))
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    merges = gguf.SpecialVocab(folder, load_merges=True, special_token_types=()).merges
    if not merges:
        raise UserError(f"GGUF export: the tokenizer in {folder} has no BPE merges")
    writer.add_token_merges(merges)
    for kind, token_id in (
        ("bos", tokenizer.bos_token_id),
        ("eos", tokenizer.eos_token_id),
        ("unk", tokenizer.unk_token_id),
        ("pad", tokenizer.pad_token_id),
    ):
        if token_id is not None:
            getattr(writer, f"add_{kind}_token_id")(token_id)
    writer.add_add_bos_token(add_bos)
    writer.add_add_eos_token(False)
    writer.add_chat_template(tokenizer.chat_template)


def load_gguf(path: Path) -> tuple[Any, Any]:
    """(model, tokenizer) read back from a GGUF through transformers' `gguf_file=`, dequantised to float32."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
        model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch.float32)
    finally:
        hf_logging.enable_progress_bar()
    model.eval()
    return model, tokenizer
