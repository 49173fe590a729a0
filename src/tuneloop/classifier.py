"""A sequence classifier at work: label probabilities for texts, and the features its head reads.

Evaluation, export verification and serving all call `probabilities`, so the three measure the same
computation (as generation goes through `generate.py`). The classifier itself loads through
`models.load_sequence_classifier` (safetensors only).
"""

from __future__ import annotations

from typing import Any

import numpy as np

BATCH = 32


def label_names(model: Any) -> list[str]:
    """The classifier's labels in id order (config.json's id2label)."""
    id2label = model.config.id2label
    return [id2label[i] for i in range(len(id2label))]


def max_tokens(model: Any, limit: int | None = None) -> int | None:
    """`limit`, capped at the positions the model has (BERT-family encoders have 512)."""
    positions = getattr(model.config, "max_position_embeddings", None)
    if isinstance(positions, int):
        return min(limit, positions) if limit else positions
    return limit


def _batches(tokenizer: Any, texts: list[str], max_length: int | None, batch: int):
    """(positions in `texts`, tokenized batch) in order of length, so a batch wastes little on padding."""
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    for start in range(0, len(order), batch):
        rows = order[start : start + batch]
        encoded = tokenizer(
            [texts[i] for i in rows],
            padding=True,
            truncation=max_length is not None,
            max_length=max_length,
            return_tensors="pt",
        )
        yield rows, encoded


def probabilities(
    model: Any, tokenizer: Any, texts: list[str], max_length: int | None = None, batch: int = BATCH
) -> np.ndarray:
    """(len(texts), labels) softmax probabilities in float64, rows in the order of `texts`."""
    import torch

    out = np.zeros((len(texts), model.config.num_labels), dtype=np.float64)
    with torch.inference_mode():
        for rows, encoded in _batches(tokenizer, texts, max_tokens(model, max_length), batch):
            logits = model(**encoded).logits.double()
            out[rows] = torch.softmax(logits, dim=-1).cpu().numpy()
    return out


def head_inputs(
    model: Any, tokenizer: Any, texts: list[str], max_length: int | None = None, batch: int = BATCH
) -> np.ndarray:
    """What the classification head reads for each text (the pooled encoder output, or a decoder's last
    real token's hidden state): the frozen features a linear probe is fitted on."""
    import torch

    head = _first_head(model)
    captured: list[Any] = []
    hook = head.register_forward_pre_hook(lambda module, args: captured.append(args[0].detach()))
    chunks: dict[int, np.ndarray] = {}
    try:
        with torch.inference_mode():
            for rows, encoded in _batches(tokenizer, texts, max_tokens(model, max_length), batch):
                captured.clear()
                model(**encoded)
                features = captured[0]
                if features.dim() == 3:  # a decoder's head reads every position; its logits are the last token's
                    mask = encoded["attention_mask"]
                    last = (mask * torch.arange(mask.shape[1])).argmax(-1)  # the last real token, either padding side
                    features = features[torch.arange(features.shape[0]), last]
                for row, vector in zip(rows, features.double().cpu().numpy(), strict=True):
                    chunks[row] = vector
    finally:
        hook.remove()
    return np.stack([chunks[i] for i in range(len(texts))]) if texts else np.zeros((0, 0))


def _first_head(model: Any) -> Any:
    """The first module above the backbone that holds weights (BERT's classifier, DistilBERT's pre_classifier)."""
    backbone = getattr(model, "base_model_prefix", "")
    for name, module in model.named_children():
        if name != backbone and any(True for _ in module.parameters()):
            return module
    raise ValueError(f"{type(model).__name__} has no classification head above its backbone")
