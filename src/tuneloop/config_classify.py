"""The `classify:` section, and `train.class_weights`: how `task.type: classification` trains an encoder.

The strategy itself is `method.name`: `features` (the encoder frozen, only the classification head
trained), `last_k` (the top `classify.last_k` transformer blocks and the head), `full`, or `lora`.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from tuneloop.config_yaml import Section

# The strategies a classification task trains with (method.name), cheapest first.
STRATEGIES: tuple[str, ...] = ("features", "last_k", "lora", "full")

# train.class_weights: 'auto' weighs each class by n / (classes × its count) (scikit-learn's
# 'balanced'), 'none' weighs all alike, or a weight per label (labels not listed weigh 1).
ClassWeights = Literal["auto", "none"] | dict[str, float]
CLASS_WEIGHTS_HELP = (
    "Classification: weights of the classes in the loss. 'auto' weighs each class by n / (classes x its count), "
    "so rare classes count as much as common ones; 'none' weighs all alike; or {label: weight} (others weigh 1)."
)


def check_class_weights(value: ClassWeights) -> ClassWeights:
    """Each weight in a {label: weight} map is positive."""
    if isinstance(value, dict):
        bad = [label for label, w in value.items() if not w > 0]
        if bad:
            raise ValueError(f"class weights must be positive; {', '.join(map(repr, bad))} are not")
    return value


class ClassifyConfig(Section):
    """Classification (`task.type: classification`): the parts of a strategy that method.name does not say."""

    last_k: int = Field(
        default=2,
        gt=0,
        description="method.name last_k: train the top k transformer blocks (and what sits above them: the "
        "pooler or final norm, and the head); every block below stays frozen.",
    )
    head: Literal["logistic", "linear"] = Field(
        default="logistic",
        description="method.name features: 'logistic' fits a one-layer head (BERT's, a decoder's) by logistic "
        "regression on the frozen features, to convergence (scikit-learn, L2, C=1); 'linear' trains it by "
        "gradient descent with the train settings, as it must for a two-layer head (DistilBERT's, RoBERTa's).",
    )
    head_learning_rate: float | None = Field(
        default=1e-3,
        gt=0,
        description="method.name last_k, lora, full: the classification head's learning rate (its own optimizer "
        "parameter group; same schedule). A new head starts from random weights and needs a larger step than the "
        "pretrained encoder beneath it; null trains it at train.learning_rate. features trains the head alone, "
        "at train.learning_rate.",
    )
    warm_start: Literal["probe", "none"] = Field(
        default="probe",
        description="method.name last_k, lora, full: 'probe' first fits a one-layer head by logistic regression on "
        "the frozen encoder's features (what features does), then trains from there ('linear probe, then fine-tune'); "
        "'none' starts from a random head. A two-layer head (DistilBERT's, RoBERTa's) always starts random.",
    )
    resample: Literal["none", "oversample"] = Field(
        default="none",
        description="'oversample' repeats train examples of the smaller classes (seeded) until every class has "
        "as many as the largest; an alternative to train.class_weights.",
    )

    _resample_off = field_validator("resample", mode="before")(lambda v: "none" if v is False else v)
