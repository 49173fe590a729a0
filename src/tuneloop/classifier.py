"""A sequence classifier at work: label probabilities for texts, and the features its head reads.

Evaluation, export verification and serving all call `probabilities`, so the three measure the same
computation (as generation goes through `generate.py`). The classifier itself loads through
`models.load_sequence_classifier` (safetensors only).
"""

from __future__ import annotations

from typing import Any

import numpy as np

BATCH = 32
PROBE_ITERATIONS = 1000  # L-BFGS iterations for a linear probe; MiniLM's features converge in well under that


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

    head = head_modules(model)[0][1]
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


def head_modules(model: Any) -> list[tuple[str, Any]]:
    """(name, module) of each module above the backbone that holds weights: the classification head
    (BERT's `classifier`, a decoder's `score`, DistilBERT's `pre_classifier` and `classifier`)."""
    backbone = getattr(model, "base_model_prefix", "")
    heads = [
        (name, module)
        for name, module in model.named_children()
        if name != backbone and any(True for _ in module.parameters())
    ]
    if not heads:
        raise ValueError(f"{type(model).__name__} has no classification head above its backbone")
    return heads


def fit_probe(
    features: np.ndarray,
    targets: np.ndarray,
    num_labels: int,
    class_weight: list[float] | None,
    seed: int,
    intercept: bool = True,
) -> tuple[np.ndarray, np.ndarray, int]:
    """Multinomial logistic regression (scikit-learn, L2, C=1, L-BFGS) as a linear layer's (weight, bias),
    and its iteration count. `intercept=False` fits none, for a head without a bias (a decoder's score):
    the bias returned is then zero.

    A label with no example gets a zero weight row and a bias far below the others: probability ~0.
    """
    import warnings

    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression

    weights = None if class_weight is None else dict(enumerate(class_weight))
    probe = LogisticRegression(
        max_iter=PROBE_ITERATIONS, class_weight=weights, random_state=seed, fit_intercept=intercept
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)  # reported by the caller from n_iter_
        probe.fit(features, targets)
    coef, intercept = probe.coef_, probe.intercept_
    if coef.shape[0] == 1:  # two classes: scikit-learn keeps one row, the logit of the second class
        coef, intercept = np.vstack([-coef / 2, coef / 2]), np.array([-intercept[0] / 2, intercept[0] / 2])
    weight = np.zeros((num_labels, features.shape[1]))
    bias = np.full(num_labels, float(intercept.min()) - 30.0)
    weight[probe.classes_], bias[probe.classes_] = coef, intercept
    return weight, bias, int(np.max(probe.n_iter_))
