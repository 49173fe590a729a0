"""The `method.preference:` section: how `task.type: preference` trains on chosen/rejected pairs.

The method itself is `method.name`: `dpo` (Direct Preference Optimization, TRL's sigmoid loss),
`ipo` (Identity Preference Optimization, TRL's `ipo` loss), the reference-free `simpo` (TRL's
CPOTrainer with its `simpo` loss) and `orpo` (TRL's ORPOTrainer), `kto` (Kahneman-Tversky Optimization,
TRL's KTOTrainer: learns from answers rated desirable or undesirable, no pairs needed), or `reward` (a
sequence-classification reward model trained with TRL's RewardTrainer, Bradley-Terry). See
train/preference.py and train/kto.py.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from tuneloop.config_yaml import Section

# method.name values that train on preference pairs, and TRL's DPO loss type for each DPO-family one.
DPO_LOSSES: dict[str, str] = {"dpo": "sigmoid", "ipo": "ipo"}
REFERENCE_FREE: tuple[str, ...] = ("simpo", "orpo")  # no reference model: the loss reads the policy alone
PREFERENCE_METHODS: tuple[str, ...] = (*DPO_LOSSES, *REFERENCE_FREE, "kto", "reward")
# What each preference method reads: pairs and rankings; kto also single rated answers (`unpaired` records).
PAIRED_FORMATS: tuple[str, ...] = ("auto", "preference", "ranked")
KTO_FORMATS: tuple[str, ...] = (*PAIRED_FORMATS, "unpaired")
# train.metric choices: what the preference trainers measure at every validation pass.
PREFERENCE_TRAIN_METRICS: dict[str, tuple[str, ...]] = {
    "dpo": ("loss",),
    "ipo": ("loss",),
    "simpo": ("loss",),
    "orpo": ("loss",),
    "kto": ("loss",),
    "reward": ("loss", "accuracy"),
}

# First-try learning rates. A DPO-family step moves a policy that already answers well, so it is an
# order of magnitude below SFT's (Zephyr and TRL's examples use 5e-7 full, 5e-6 to 5e-5 with LoRA);
# a reward model trains a fresh head, like a classifier.
DEFAULT_LEARNING_RATE: dict[tuple[str, str], float] = {
    ("dpo", "full"): 5e-7,
    ("dpo", "lora"): 5e-5,
    ("reward", "full"): 1e-5,
    ("reward", "lora"): 1e-4,
}


class PreferenceConfig(Section):
    """Preference tuning (method.name dpo, ipo, simpo, orpo, kto or reward): the parts method.name does not say."""

    beta: float = Field(
        default=0.1,
        gt=0,
        description="dpo: how far the policy may move from the reference (the KL penalty's weight; lower moves "
        "further). ipo: the regularisation parameter tau. simpo: the reward scale (its paper uses 2 to 2.5). "
        "orpo: the odds-ratio term's weight (lambda) beside the SFT loss on the chosen answer. kto: as dpo, the "
        "scale of the implicit reward inside its sigmoid.",
    )
    simpo_gamma: float = Field(
        default=0.5, ge=0, description="simpo: the target reward margin (gamma) the chosen answer must clear."
    )
    desirable_weight: float | None = Field(
        default=None,
        gt=0,
        description="kto: the weight of each desirable answer's loss. Empty (with undesirable_weight empty too): "
        "balanced by the train split's counts, the rarer label weighted up by majority count / minority count, so "
        "weight x count is equal on both sides (the KTO paper and TRL recommend a ratio of 1 to 4/3, desirable to "
        "undesirable). Set one and the other defaults to 1.",
    )
    undesirable_weight: float | None = Field(
        default=None, gt=0, description="kto: the weight of each undesirable answer's loss; see desirable_weight."
    )
    adapter: Literal["lora", "dora", "full"] = Field(
        default="lora",
        description="Which weights train: lora or dora (method.lora settings; the reference is the same model with "
        "the adapter off, so no second copy is held), or full (every weight; a frozen copy is the reference).",
    )
    start: str | None = Field(
        default=None,
        description="A run folder (usually an SFT run) whose final model is the starting point and, for dpo/ipo/kto, "
        "the reference (simpo and orpo use none); an SFT adapter is folded into the base first. Empty: the base "
        "model (model.name). "
        "`tuneloop train --from RUN` sets it.",
    )


def default_learning_rate(method: Any) -> float | None:
    """The first-try learning rate for a preference method and its adapter, or None for other methods."""
    if method.name not in PREFERENCE_METHODS:
        return None
    family = "reward" if method.name == "reward" else "dpo"
    return DEFAULT_LEARNING_RATE[(family, "full" if method.preference.adapter == "full" else "lora")]
