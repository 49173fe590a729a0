"""Packing must not let attention cross examples, on every model type `train.batching` may pack.

For each type in PACKING_VERIFIED a tiny random model is built from its config; three examples
of different lengths are laid end to end by the trainer's own Collator, and each example's logits
in the packed row must equal its logits alone. Types outside the list are padded by `auto` and
refused for an explicit `packed`.
"""

from __future__ import annotations

import pytest
import torch

from tuneloop.data.batching import (
    PACKING_VERIFIED,
    Collator,
    choose_layout,
    shared_prefix_length,
)
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


# --------------------------------------------------------------------------- the shared-prefix layout

PREFIX = 20  # tokens every example starts with (>= MIN_SHARED_PREFIX), like a dataset-wide system prompt


def shared_items() -> list[dict]:
    torch.manual_seed(2)
    prefix = torch.randint(3, 120, (PREFIX,)).tolist()
    items = []
    for i, n in enumerate(LENGTHS):
        ids = prefix + torch.randint(3, 120, (n,)).tolist()
        items.append({"id": str(i), "input_ids": ids, "weights": [0.0] * (PREFIX + 2) + [1.0] * (n - 2)})
    return items


def shared_crossing(model) -> float:
    """Largest difference between an example's logits in a shared-prefix row and alone (remainder positions)."""
    from tuneloop.train.loss import _trained_positions

    items = shared_items()
    batch = Collator(pad_id=0, packed=True, share_prefix=True)(items)
    assert batch["attention_mask"].shape == (1, 1, batch["input_ids"].shape[1], batch["input_ids"].shape[1])
    assert batch["input_ids"].shape[1] == PREFIX + sum(LENGTHS)  # the prefix once, not once per example
    if getattr(model.config, "_attn_implementation", None) == "eager":  # the loss turns the mask additive
        mask = torch.zeros(batch["attention_mask"].shape).masked_fill(~batch["attention_mask"], -3.0e38)
    else:
        mask = batch["attention_mask"]
    with torch.no_grad():
        together = model(
            input_ids=batch["input_ids"], position_ids=batch["position_ids"], attention_mask=mask, use_cache=False
        ).logits[0]
        worst, start = 0.0, PREFIX
        for item in items:
            alone = model(input_ids=torch.tensor([item["input_ids"]]), use_cache=False).logits[0, PREFIX:]
            n = len(item["input_ids"]) - PREFIX
            worst = max(worst, float((together[start : start + n] - alone).abs().max()))
            start += n
        # and the loss function's own path (the eager mask conversion included) gives the padded layout's losses
        padded = Collator(pad_id=0, packed=False)(items)
        a, b = _trained_positions(model, batch)[0], _trained_positions(model, padded)[0]
        worst = max(worst, float((a - b).abs().max()))
    return worst


def no_window(model):
    if getattr(model.config, "sliding_window", None):  # the verified list requires a window >= max_length
        model.config.sliding_window = 4096
    return model


@pytest.mark.parametrize("attention", ["default", "eager"])
@pytest.mark.parametrize("model_type", sorted(PACKING_VERIFIED))
def test_shared_prefix_row_gives_each_example_its_logits_alone(model_type: str, attention: str):
    model = no_window(tiny_model(model_type, None if attention == "default" else attention))
    assert shared_crossing(model) < 1e-4


def test_the_shared_prefix_check_catches_a_model_whose_window_the_mask_overrides():
    # mistral with a 4-token sliding window: the 4-D mask replaces the window, so examples see too far back.
    assert shared_crossing(tiny_model("mistral")) > 1e-3


def test_shared_prefix_stops_before_the_first_trained_token_and_per_example_losses_match():
    from tuneloop.train.loss import example_losses

    items = shared_items()
    items[1]["weights"][PREFIX - 3] = 1.0  # example 1 trains a token inside the common prefix
    assert shared_prefix_length(items) == PREFIX - 4  # position PREFIX-5 predicts it, so the prefix ends before
    model = no_window(tiny_model("llama"))
    with torch.no_grad():
        shared = example_losses(model, Collator(pad_id=0, packed=True, share_prefix=True)(items))
        padded = example_losses(model, Collator(pad_id=0, packed=False)(items))
    assert torch.allclose(shared, padded, atol=1e-4), (shared, padded)
    short = [dict(it, input_ids=[*it["input_ids"][:8], 9 + i], weights=[0.0] * 8 + [1.0]) for i, it in enumerate(items)]
    batch = Collator(pad_id=0, packed=True, share_prefix=True)(short)  # 7 shared tokens: too few to pay
    assert "example_index" not in batch and batch["input_ids"].shape[1] == 27


def test_auto_shares_a_long_common_prefix_only_where_verified():
    from transformers import AutoConfig

    lengths = [180 + (i % 7) for i in range(200)]  # similar lengths: padding would beat packing
    llama = AutoConfig.for_model("llama", hidden_size=576, num_hidden_layers=30, vocab_size=49152)  # SmolLM2's shape
    choice = choose_layout("auto", lengths, 8, llama, True, shared=80, max_length=512)
    assert choice.layout == "shared_prefix" and "same 80 tokens" in choice.reason
    assert choose_layout("auto", lengths, 8, llama, True, shared=4, max_length=512).layout != "shared_prefix"
    assert choose_layout("auto", lengths, 8, llama, False, shared=80, max_length=512).layout == "padded"
    windowed = AutoConfig.for_model("mistral", hidden_size=576, num_hidden_layers=30, sliding_window=256)
    assert choose_layout("auto", lengths, 8, windowed, True, shared=80, max_length=512).layout != "shared_prefix"
    with pytest.raises(UserError, match="sliding window"):
        choose_layout("shared_prefix", lengths, 8, windowed, True, shared=80, max_length=512)
    bloom = AutoConfig.for_model("bloom", hidden_size=64, n_layer=2, vocab_size=128)
    with pytest.raises(UserError, match="not verified for model type 'bloom'"):
        choose_layout("shared_prefix", lengths, 8, bloom, True, shared=80, max_length=512)
