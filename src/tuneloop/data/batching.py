"""Turn rendered examples into batches, and pick the batch layout that is fastest for the data.

Two layouts hold the same examples and give the same loss; they differ only in speed:
- "padded": one row per example, right-padded to the longest in the batch;
- "packed": the batch's examples laid end to end in one row, position ids restarting at each
  example, so Transformers builds a block-diagonal causal mask (no attention across examples)
  and no padding is computed at all.
"length_grouped" is "padded" with a sampler that puts similar lengths in one batch.

The targets are shifted here, once: `shift_labels[t]` is the token that position t must predict,
or -100 where that token is not trained, and `shift_weights[t]` its loss weight. The trainer asks
the model for logits only where `shift_labels != -100`, so untrained positions (prompts, padding)
never pay for the vocabulary projection.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

IGNORE = -100

# Model types on which packed attention has been checked not to cross examples: their logits for
# each example, packed with others, equal its logits alone (tests/test_packing.py builds a tiny
# random model of every type listed here and compares). Packing relies on Transformers turning
# restarting position ids into a block-diagonal mask; an architecture that ignores position ids
# (ALiBi models such as bloom and mpt, opt's learned offsets) or mixes tokens outside attention
# (convolutions, state-space or linear-attention layers) would leak across examples, so `auto`
# pads on every type not listed here.
PACKING_VERIFIED = frozenset(
    {
        "cohere",
        "gemma",
        "gemma2",
        "gemma3_text",
        "gpt2",
        "gpt_neox",
        "granite",
        "helium",
        "llama",
        "ministral",
        "mistral",
        "mixtral",
        "olmo",
        "olmo2",
        "phi",
        "phi3",
        "qwen2",
        "qwen2_moe",
        "qwen3",
        "qwen3_moe",
        "smollm3",
        "stablelm",
        "starcoder2",
    }
)


class Collator:
    """Callable for the DataLoader: rendered items ({id, input_ids, weights}) → a batch in the chosen layout."""

    def __init__(self, pad_id: int, packed: bool, prefix_tokens: int = 0) -> None:
        self.pad_id = pad_id
        self.packed = packed
        # Prompt tuning prepends virtual tokens inside the model; the logits mask must cover them.
        self.prefix_tokens = prefix_tokens

    def __call__(self, items: Sequence[dict[str, Any]]) -> dict[str, Any]:
        import torch

        rows = [self._shift(it) for it in items]
        ids = [it["input_ids"] for it in items]
        if self.packed:
            input_ids = [[t for row in ids for t in row]]
            position_ids = [[p for row in ids for p in range(len(row))]]
            labels = [[t for r in rows for t in r[0]]]
            weights = [[w for r in rows for w in r[1]]]
            batch = {"input_ids": torch.tensor(input_ids), "position_ids": torch.tensor(position_ids)}
        else:
            width = max(len(r) for r in ids)
            pad = [width - len(r) for r in ids]
            input_ids = [r + [self.pad_id] * n for r, n in zip(ids, pad, strict=True)]
            labels = [r[0] + [IGNORE] * n for r, n in zip(rows, pad, strict=True)]
            weights = [r[1] + [0.0] * n for r, n in zip(rows, pad, strict=True)]
            mask = [[1] * len(r) + [0] * n for r, n in zip(ids, pad, strict=True)]
            batch = {"input_ids": torch.tensor(input_ids), "attention_mask": torch.tensor(mask)}
        shift_labels = torch.tensor(labels)
        batch["shift_labels"] = shift_labels
        # Trainer counts trained tokens over a whole accumulated step only when a batch has "labels"
        # (it then counts `shift_labels`); the loss is ours and never passes labels to the model.
        batch["labels"] = shift_labels
        batch["shift_weights"] = torch.tensor(weights, dtype=torch.float32)
        keep = shift_labels != IGNORE
        if self.prefix_tokens:
            keep = torch.cat([torch.zeros(keep.shape[0], self.prefix_tokens, dtype=torch.bool), keep], dim=1)
        batch["logits_to_keep"] = keep
        batch["example_ids"] = [it["id"] for it in items]
        batch["tokens"] = sum(len(r) for r in ids)
        batch["padded_tokens"] = input_ids_size(batch["input_ids"])
        return batch

    @staticmethod
    def _shift(item: dict[str, Any]) -> tuple[list[int], list[float]]:
        """Position t predicts token t+1: its label is that token where trained, else IGNORE."""
        ids, w = item["input_ids"], item["weights"]
        labels = [ids[t + 1] if w[t + 1] > 0 else IGNORE for t in range(len(ids) - 1)] + [IGNORE]
        weights = [w[t + 1] for t in range(len(ids) - 1)] + [0.0]
        return labels, weights


def input_ids_size(tensor: Any) -> int:
    return int(tensor.shape[0] * tensor.shape[1])


# --------------------------------------------------------------------------- choosing a layout


@dataclass
class LayoutChoice:
    layout: str  # padded | packed | length_grouped
    reason: str
    padding_fraction: dict[str, float]  # layout → share of computed tokens that are padding


def estimate_costs(
    lengths: Sequence[int], batch_size: int, hidden: int, layers: int, vocab_proj: int, seed: int = 0
) -> tuple[dict[str, float], dict[str, float]]:
    """Relative compute per layout for random batches of `lengths`, and each layout's padding share.

    Per layer, a row of n tokens costs about 24·n·h² multiply-adds in the linear layers and
    4·n²·h in attention. Padding pays both; packing pays no padding but attends over the whole
    packed row (the block-diagonal mask is applied to a dense n_total² score matrix on CPU).
    """
    rng = random.Random(seed)
    order = list(lengths)
    rng.shuffle(order)
    batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    grouped = _grouped_batches(order, batch_size)

    def linear(n: int) -> float:
        return n * (24 * hidden * hidden * layers + 2 * hidden * vocab_proj)

    def attention(n: int) -> float:
        return 4 * n * n * hidden * layers

    def padded_cost(bs: list[list[int]]) -> float:
        return sum(len(b) * (linear(max(b)) + attention(max(b))) for b in bs)

    costs = {
        "padded": padded_cost(batches),
        "length_grouped": padded_cost(grouped),
        "packed": sum(linear(sum(b)) + attention(sum(b)) for b in batches),
    }
    real = sum(lengths)
    padding = {
        "padded": 1 - real / max(sum(len(b) * max(b) for b in batches), 1),
        "length_grouped": 1 - real / max(sum(len(b) * max(b) for b in grouped), 1),
        "packed": 0.0,
    }
    return costs, padding


def _grouped_batches(order: list[int], batch_size: int) -> list[list[int]]:
    # Mirrors Transformers' LengthGroupedSampler: sort within megabatches of 50 batches.
    mega = batch_size * 50
    out = []
    for i in range(0, len(order), mega):
        chunk = sorted(order[i : i + mega], reverse=True)
        out += [chunk[j : j + batch_size] for j in range(0, len(chunk), batch_size)]
    return out


def choose_layout(
    requested: str, lengths: Sequence[int], batch_size: int, model_config: Any, supports_packing: bool
) -> LayoutChoice:
    """The layout to train with: the requested one, or for 'auto' the cheapest of padded and packed.

    'auto' never picks length_grouped: it changes which examples share a batch, and so the
    training trajectory; padded and packed give the same loss and differ only in speed.
    """
    hidden = getattr(model_config, "hidden_size", 512)
    layers = getattr(model_config, "num_hidden_layers", 12)
    vocab = getattr(model_config, "vocab_size", 32000)
    model_type = getattr(model_config, "model_type", None) or "unknown"
    verified = model_type in PACKING_VERIFIED
    costs, padding = estimate_costs(lengths, batch_size, hidden, layers, vocab)
    if requested != "auto":
        if requested == "packed" and not supports_packing:
            from tuneloop.errors import UserError

            raise UserError(
                "train.batching=packed needs the examples to be laid end to end, which prompt and prefix tuning "
                "cannot do (their virtual tokens belong to one example); use padded or length_grouped"
            )
        if requested == "packed" and not verified:
            from tuneloop.errors import UserError

            raise UserError(
                f"train.batching=packed: packing is not verified for model type {model_type!r}, so attention "
                "might cross from one example into the next; use padded, length_grouped or auto (packing is "
                f"verified for {', '.join(sorted(PACKING_VERIFIED))})"
            )
        return LayoutChoice(requested, "set in the config", padding)
    if not supports_packing or batch_size == 1:
        why = "batch size 1 has no padding" if batch_size == 1 else "prompt/prefix tuning cannot pack"
        return LayoutChoice("padded", why, padding)
    if not verified:
        why = f"packing is not verified for model type {model_type!r} (attention might cross examples)"
        return LayoutChoice("padded", why, padding)
    ratio = costs["padded"] / costs["packed"]
    if ratio > 1.05:
        return LayoutChoice(
            "packed", f"{padding['padded']:.0%} of padded tokens would be padding; packing is ~{ratio:.2f}x", padding
        )
    return LayoutChoice(
        "padded", f"lengths are similar ({padding['padded']:.0%} padding); padding beats packed attention", padding
    )
