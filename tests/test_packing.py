"""Packing must not let attention cross examples, on every model type `train.batching` may pack.

For each type in PACKING_VERIFIED a tiny random model is built from its config; three examples
of different lengths are laid end to end by the trainer's own Collator, and each example's logits
in the packed row must equal its logits alone. Types outside the list are padded by `auto` and
refused for an explicit `packed`.
"""

from __future__ import annotations

import pytest
import torch

from tuneloop.data.batching import PACKING_VERIFIED, Collator, choose_layout
from tuneloop.errors import UserError

LENGTHS = (9, 5, 12)


def tiny_model(model_type: str, attention: str | None = None):
    """A 2-layer random model of `model_type`, small enough to build in milliseconds."""
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.for_model(
        model_type,
        vocab_size=128,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        max_position_embeddings=256,
        pad_token_id=0,
    )
    # gpt2-style names, and a sliding window shorter than the examples so windowed layers are exercised
    for key, value in {"n_embd": 64, "n_layer": 2, "n_head": 4, "n_inner": 128, "sliding_window": 4}.items():
        if hasattr(config, key):
            setattr(config, key, value)
    if attention is not None:
        config._attn_implementation = attention
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(config).eval()


def crossing(model) -> float:
    """Largest difference between an example's logits packed with others and alone."""
    torch.manual_seed(1)
    items = [
        {"id": str(i), "input_ids": torch.randint(3, 120, (n,)).tolist(), "weights": [1.0] * n}
        for i, n in enumerate(LENGTHS)
    ]
    packed = Collator(pad_id=0, packed=True)(items)
    assert set(packed) >= {"input_ids", "position_ids"} and "attention_mask" not in packed
    with torch.no_grad():
        together = model(input_ids=packed["input_ids"], position_ids=packed["position_ids"], use_cache=False).logits[0]
        worst, start = 0.0, 0
        for item in items:
            alone = model(input_ids=torch.tensor([item["input_ids"]]), use_cache=False).logits[0]
            n = len(item["input_ids"])
            worst = max(worst, float((together[start : start + n] - alone).abs().max()))
            start += n
    return worst


@pytest.mark.parametrize("attention", ["default", "eager"])
@pytest.mark.parametrize("model_type", sorted(PACKING_VERIFIED))
def test_packed_attention_does_not_cross_examples(model_type: str, attention: str):
    # "default" is what training loads (SDPA where the architecture supports it); eager is the fallback
    model = tiny_model(model_type, None if attention == "default" else attention)
    assert crossing(model) < 1e-5


@pytest.mark.parametrize("model_type", ["bloom", "mpt", "opt"])
def test_the_check_catches_an_architecture_that_crosses(model_type: str):
    # ALiBi (bloom, mpt) and opt ignore the restarting position ids: packed examples see each other.
    assert crossing(tiny_model(model_type)) > 1e-3
    assert model_type not in PACKING_VERIFIED


def test_auto_pads_an_unverified_model_type_and_says_why():
    from transformers import AutoConfig

    varied = [10 if i % 4 else 400 for i in range(200)]  # lengths for which packing is far cheaper
    llama = AutoConfig.for_model("llama", hidden_size=64, num_hidden_layers=2, vocab_size=128)
    assert choose_layout("auto", varied, 8, llama, True).layout == "packed"
    bloom = AutoConfig.for_model("bloom", hidden_size=64, n_layer=2, vocab_size=128)
    choice = choose_layout("auto", varied, 8, bloom, True)
    assert choice.layout == "padded"
    assert "packing is not verified for model type 'bloom'" in choice.reason
    with pytest.raises(UserError, match="packing is not verified for model type 'bloom'"):
        choose_layout("packed", varied, 8, bloom, True)
    assert choose_layout("padded", varied, 8, bloom, True).layout == "padded"
