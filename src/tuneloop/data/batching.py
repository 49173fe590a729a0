"""Turn rendered examples into batches, and pick the batch layout that is fastest for the data.

Two layouts hold the same examples and give the same loss; they differ only in speed:
- "padded": one row per example, right-padded to the longest in the batch;
- "packed": the batch's examples laid end to end in one row, position ids restarting at each
  example, so Transformers builds a block-diagonal causal mask (no attention across examples)
  and no padding is computed at all.
- "shared_prefix": "packed", but the tokens every example of the batch starts with (a system prompt
  the whole dataset shares, the chat template's header) are computed once: one row holds the prefix
  and then each example's remainder, each remainder attending to the prefix and to itself (a 4-D
  mask), with the position ids it has in its own example. A fixed 80-token instruction over batches
  of 8 is 7 × 80 tokens a batch that the model no longer computes.
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


# The shared-prefix row is checked on the same model types (tests/test_packing.py): each example gets
# the logits it has alone, so a custom 4-D mask and explicit position ids are honoured as given. The
# mask replaces the model's own, so a sliding window shorter than an example would be lost:
# `choose_layout` also requires the window (if any) to cover data.max_length.
SHARED_PREFIX_ATTENTION = ("sdpa", "eager")  # flash attention takes no 4-D mask
MIN_SHARED_PREFIX = 16  # tokens; below this the saving is smaller than the dense mask's cost


def shared_prefix_length(items: Sequence[dict[str, Any]]) -> int:
    """Length of the token prefix that all `items` start with and none trains on.

    Positions of the prefix predict nothing (their labels are all IGNORE), so its logits are never
    needed and the prefix can be computed once for all of them.
    """
    ids = [it["input_ids"] for it in items]
    n = min(len(r) for r in ids)
    for it in items:  # the token at index t+1 trained means position t must be outside the prefix
        trained = next((t for t, w in enumerate(it["weights"]) if w > 0), len(it["weights"]))
        n = min(n, trained - 1)
    return common_prefix(ids, n)


def common_prefix(rows: Sequence[Sequence[int]], limit: int) -> int:
    """Number of leading tokens all `rows` share, at most `limit` (0 when `limit` < 0)."""
    first = rows[0]
    common = 0
    while common < limit and all(r[common] == first[common] for r in rows):
        common += 1
    return common


class Collator:
    """Callable for the DataLoader: rendered items ({id, input_ids, weights}) → a batch in the chosen layout."""

    def __init__(self, pad_id: int, packed: bool, prefix_tokens: int = 0, share_prefix: bool = False) -> None:
        self.pad_id = pad_id
        self.packed = packed
        # Prompt tuning prepends virtual tokens inside the model; the logits mask must cover them.
        self.prefix_tokens = prefix_tokens
        self.share_prefix = share_prefix

    def __call__(self, items: Sequence[dict[str, Any]]) -> dict[str, Any]:
        import torch

        rows = [self._shift(it) for it in items]
        ids = [it["input_ids"] for it in items]
        if self.share_prefix and len(items) > 1 and (shared := shared_prefix_length(items)) >= MIN_SHARED_PREFIX:
            return self._finish(self._shared(ids, rows, shared), items, ids)
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
        batch["shift_labels"] = torch.tensor(labels)
        batch["shift_weights"] = torch.tensor(weights, dtype=torch.float32)
        return self._finish(batch, items, ids)

    def _finish(self, batch: dict[str, Any], items: Sequence[dict[str, Any]], ids: list[list[int]]) -> dict[str, Any]:
        import torch

        shift_labels = batch["shift_labels"]
        # Trainer counts trained tokens over a whole accumulated step only when a batch has "labels"
        # (it then counts `shift_labels`); the loss is ours and never passes labels to the model.
        batch["labels"] = shift_labels
        keep = shift_labels != IGNORE
        if self.prefix_tokens:
            keep = torch.cat([torch.zeros(keep.shape[0], self.prefix_tokens, dtype=torch.bool), keep], dim=1)
        batch["logits_to_keep"] = keep
        batch["example_ids"] = [it["id"] for it in items]
        batch["tokens"] = sum(len(r) for r in ids)
        batch["padded_tokens"] = input_ids_size(batch["input_ids"])
        return batch

    @staticmethod
    def _shared(ids: list[list[int]], rows: list[tuple[list[int], list[float]]], shared: int) -> dict[str, Any]:
        """One row: the shared prefix once, then each example's remainder, with a mask that lets a remainder
        see the prefix and its own earlier tokens only, and the position ids it has in its own example."""
        import torch

        input_ids, positions, owner = list(ids[0][:shared]), list(range(shared)), [-1] * shared
        labels, weights = [IGNORE] * shared, [0.0] * shared
        for i, (r, (lab, w)) in enumerate(zip(ids, rows, strict=True)):
            input_ids += r[shared:]
            positions += range(shared, len(r))
            labels += lab[shared:]
            weights += w[shared:]
            owner += [i] * (len(r) - shared)
        n = len(input_ids)
        owners = torch.tensor(owner)
        causal = torch.ones(n, n, dtype=torch.bool).tril()
        same = (owners[:, None] == owners[None, :]) | (owners[None, :] == -1)  # own tokens, or the prefix
        return {
            "input_ids": torch.tensor([input_ids]),
            "position_ids": torch.tensor([positions]),
            "attention_mask": (causal & same)[None, None],  # (1, 1, n, n): True where attention is allowed
            "example_index": owners[None],
            "shift_labels": torch.tensor([labels]),
            "shift_weights": torch.tensor([weights], dtype=torch.float32),
        }

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
    layout: str  # padded | packed | shared_prefix | length_grouped
    reason: str
    padding_fraction: dict[str, float]  # layout → share of computed tokens that are padding


def estimate_costs(
    lengths: Sequence[int],
    batch_size: int,
    hidden: int,
    layers: int,
    vocab_proj: int,
    seed: int = 0,
    shared: int = 0,
) -> tuple[dict[str, float], dict[str, float]]:
    """Relative compute per layout for random batches of `lengths`, and each layout's padding share.

    Per layer, a row of n tokens costs about 24·n·h² multiply-adds in the linear layers and
    4·n²·h in attention. Padding pays both; packing pays no padding but attends over the whole
    packed row (the block-diagonal mask is applied to a dense n_total² score matrix on CPU).
    With `shared` > 0 (the prefix every example starts with), "shared_prefix" is costed too: a
    packed row with that prefix once instead of once per example.
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

    def row(b: list[int]) -> int:
        return sum(b) - (len(b) - 1) * shared if len(b) > 1 and shared >= MIN_SHARED_PREFIX else sum(b)

    costs = {
        "padded": padded_cost(batches),
        "length_grouped": padded_cost(grouped),
        "packed": sum(linear(sum(b)) + attention(sum(b)) for b in batches),
    }
    if shared:
        costs["shared_prefix"] = sum(linear(row(b)) + attention(row(b)) for b in batches)
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
    requested: str,
    lengths: Sequence[int],
    batch_size: int,
    model_config: Any,
    supports_packing: bool,
    shared: int = 0,
    max_length: int | None = None,
) -> LayoutChoice:
    """The layout to train with: the requested one, or for 'auto' the cheapest of padded, packed and
    shared_prefix. `shared` is the token prefix all training examples start with (`shared_prefix_length`).

    'auto' never picks length_grouped: it changes which examples share a batch, and so the
    training trajectory; padded, packed and shared_prefix give the same loss and differ only in speed.
    """
    from tuneloop.errors import UserError

    hidden = getattr(model_config, "hidden_size", 512)
    layers = getattr(model_config, "num_hidden_layers", 12)
    vocab = getattr(model_config, "vocab_size", 32000)
    model_type = getattr(model_config, "model_type", None) or "unknown"
    verified = model_type in PACKING_VERIFIED
    costs, padding = estimate_costs(lengths, batch_size, hidden, layers, vocab, shared=shared)
    why_not_shared = _why_not_shared(model_config, supports_packing, max_length)
    if requested != "auto":
        if requested in ("packed", "shared_prefix") and not supports_packing:
            raise UserError(
                f"train.batching={requested} needs the examples to be laid end to end, which prompt and prefix "
                "tuning cannot do (their virtual tokens belong to one example); use padded or length_grouped"
            )
        if requested == "packed" and not verified:
            raise UserError(
                f"train.batching=packed: packing is not verified for model type {model_type!r}, so attention "
                "might cross from one example into the next; use padded, length_grouped or auto (packing is "
                f"verified for {', '.join(sorted(PACKING_VERIFIED))})"
            )
        if requested == "shared_prefix" and why_not_shared:
            raise UserError(f"train.batching=shared_prefix: {why_not_shared}; use packed, padded or auto")
        if requested == "shared_prefix" and shared < MIN_SHARED_PREFIX:
            note = f"the examples share only {shared} leading tokens, so batches are packed without sharing"
            return LayoutChoice(requested, f"set in the config; {note}", padding)
        return LayoutChoice(requested, "set in the config", padding)
    if not supports_packing or batch_size == 1:
        why = "batch size 1 has no padding" if batch_size == 1 else "prompt/prefix tuning cannot pack"
        return LayoutChoice("padded", why, padding)
    if not verified:
        why = f"packing is not verified for model type {model_type!r} (attention might cross examples)"
        return LayoutChoice("padded", why, padding)
    if "shared_prefix" in costs and not why_not_shared and shared >= MIN_SHARED_PREFIX:
        ratio = min(costs["padded"], costs["packed"]) / costs["shared_prefix"]
        if ratio > 1.05:
            return LayoutChoice(
                "shared_prefix",
                f"every example starts with the same {shared} tokens, computed once per batch: ~{ratio:.2f}x",
                padding,
            )
    ratio = costs["padded"] / costs["packed"]
    if ratio > 1.05:
        return LayoutChoice(
            "packed", f"{padding['padded']:.0%} of padded tokens would be padding; packing is ~{ratio:.2f}x", padding
        )
    return LayoutChoice(
        "padded", f"lengths are similar ({padding['padded']:.0%} padding); padding beats packed attention", padding
    )


def _why_not_shared(model_config: Any, supports_packing: bool, max_length: int | None) -> str:
    """Why the shared-prefix layout cannot be used with this model, or '' when it can."""
    model_type = getattr(model_config, "model_type", None) or "unknown"
    attention = getattr(model_config, "_attn_implementation", None) or "sdpa"
    window = getattr(model_config, "sliding_window", None)
    if not supports_packing:
        return "prompt/prefix tuning cannot lay examples end to end"
    if model_type not in PACKING_VERIFIED:
        return f"it is not verified for model type {model_type!r} (verified: {', '.join(sorted(PACKING_VERIFIED))})"
    if attention not in SHARED_PREFIX_ATTENTION:
        return f"attention {attention!r} takes no 4-D mask (use sdpa or eager)"
    if window and (max_length is None or window < max_length):
        return f"the model's sliding window ({window} tokens) is shorter than data.max_length; the mask would lose it"
    return ""
