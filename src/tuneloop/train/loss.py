"""The training loss: token cross-entropy at the trained positions of a batch, in any batch layout.

The batch comes from `data.batching.Collator`; its `shift_labels` say what each position must predict,
and logits are asked for at trained positions only.
"""

from __future__ import annotations

from typing import Any

from tuneloop.data.batching import IGNORE


def _attention(model: Any) -> str:
    config = getattr(model, "config", None)
    return getattr(config, "_attn_implementation", None) or "sdpa"


def _trained_positions(model: Any, batch: dict[str, Any]) -> tuple[Any, Any, Any, Any]:
    """(loss, weight, right or not, mask of trained positions) at every trained position of a batch.

    Logits are computed only at trained positions (`logits_to_keep`): prompts and padding never
    pay for the vocabulary projection, which is a large share of a small model's compute.
    """
    import torch
    import torch.nn.functional as F

    inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "position_ids") if k in batch}
    mask = inputs.get("attention_mask")
    if mask is not None and mask.ndim == 4 and _attention(model) == "eager":
        # A shared-prefix row's mask is boolean (SDPA takes it as is); eager attention adds the mask to
        # the scores, so it must be 0 where allowed and the dtype's minimum elsewhere.
        blocked = torch.finfo(torch.float32).min
        inputs["attention_mask"] = torch.zeros(mask.shape, device=mask.device).masked_fill(~mask, blocked)
    logits = model(**inputs, logits_to_keep=batch["logits_to_keep"], use_cache=False).logits
    logits = logits.reshape(-1, logits.shape[-1])
    selected = batch["shift_labels"] != IGNORE
    targets = batch["shift_labels"][selected]
    losses = F.cross_entropy(logits.float(), targets, reduction="none")
    return losses, batch["shift_weights"][selected], logits.argmax(-1) == targets, selected


def token_loss(model: Any, batch: dict[str, Any]) -> tuple[Any, Any, Any]:
    """(weighted sum of token losses, number of trained tokens, number predicted right) for one batch."""
    import torch

    losses, weights, hits, _ = _trained_positions(model, batch)
    return (losses * weights).sum(), torch.tensor(losses.numel()), hits.sum()


def example_losses(model: Any, batch: dict[str, Any]) -> Any:
    """Per example of the batch, in its order: (weighted loss sum, trained tokens, predicted right), float64."""
    import torch

    losses, weights, hits, selected = _trained_positions(model, batch)
    # Which example each trained position belongs to: as the shared-prefix layout records it, its row,
    # or in a packed row the number of position-id restarts before it.
    if "example_index" in batch:
        owner = batch["example_index"]
    elif "position_ids" in batch:
        owner = (batch["position_ids"] == 0).long().cumsum(-1) - 1
    else:
        owner = torch.arange(selected.shape[0], device=selected.device)[:, None].expand_as(selected)
    owner = owner[selected]
    stats = torch.zeros(len(batch["example_ids"]), 3, dtype=torch.float64, device=losses.device)
    stats[:, 0].index_add_(0, owner, (losses * weights).double())
    stats[:, 1].index_add_(0, owner, torch.ones_like(losses, dtype=torch.float64))
    stats[:, 2].index_add_(0, owner, hits.double())
    return stats
