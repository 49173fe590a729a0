"""KTO (`method.name: kto`): preference tuning from answers rated desirable or undesirable, on TRL's KTOTrainer.

KTO (Kahneman-Tversky Optimization, Ethayarajh et al. 2024) needs no pairs: each training row is one
answer with a thumbs up or down, which is what production feedback gives. Its loss per answer is
1 − σ(β·(log π/π_ref − z)) for a desirable one and 1 − σ(β·(z − log π/π_ref)) for an undesirable one,
where z estimates the policy's KL from the reference on mismatched answers of the same batch
(clamped at 0). Each answer's loss is weighted by `desirable_weight` or `undesirable_weight`.

The recipe is train/preference.py's (the same run folder, checkpoints, resume, SIGTERM, NaN guard,
reference: the adapter-off model with LoRA, a frozen copy with full training, the start run with
`--from`); this module holds what differs:
- rows: `unpaired` records as they are, and each preference pair (or ranking pair) as one desirable and
  one undesirable answer, as TRL unpairs them; each answer rendered by THE Renderer exactly as SFT
  renders an assistant answer (data/pairs.py);
- the KL completions: TRL pairs each row with the answer of its batch neighbour (a rotation by one
  inside each block of `batch_size` rows) and reads the batches in order, so the rows are shuffled
  once here, with train.seed, and then sampled sequentially;
- the weights: when unset, balanced by the train split's counts (see `loss_weights`);
- the metric names: TRL's `rewards/chosen` is our `reward_desirable`, and so on.
"""

from __future__ import annotations

import random
from typing import Any

from tuneloop import console
from tuneloop.config import ProjectConfig
from tuneloop.data.formats import Example, RowError
from tuneloop.data.pairs import RatedTokens, rated_of, render_rated
from tuneloop.errors import UserError

KINDS = ("unpaired", "preference", "ranked")
# TRL's KTO metric names → metrics.jsonl's (validation rows carry them with the eval_ prefix).
METRIC_NAMES = {
    "kl": "kl",
    "rewards/chosen": "reward_desirable",
    "rewards/rejected": "reward_undesirable",
    "rewards/margins": "reward_margin",
    "logps/chosen": "logp_desirable",
    "logps/rejected": "logp_undesirable",
    "logits/chosen": "logits_desirable",
    "logits/rejected": "logits_undesirable",
}
METRIC_NAMES |= {f"eval_{k}": f"eval_{v}" for k, v in METRIC_NAMES.items()}
# The KTO paper's recommended range for (desirable_weight · desirable count) / (undesirable_weight · undesirable count).
RATIO_RANGE = (1.0, 4 / 3)


def render_split(examples: list[Example], tokenizer: Any, cfg: ProjectConfig, split: str) -> list[RatedTokens]:
    """The split's rated answers rendered with the shared Renderer; over-long ones are counted, never silent."""
    from tuneloop.data.render import Renderer

    renderer = Renderer(tokenizer)
    rated = rated_of(examples)
    items: list[RatedTokens] = []
    failed: list[str] = []
    too_long = 0
    for start in range(0, len(rated), 128):
        chunk = rated[start : start + 128]
        for item, result in zip(chunk, render_rated(renderer, chunk), strict=True):
            if isinstance(result, RowError):
                failed.append(f"{item.id}: {result}")
            elif len(result["prompt_ids"]) + len(result["completion_ids"]) > cfg.data.max_length:
                too_long += 1
            else:
                items.append(result)
    if failed:
        raise UserError(
            f"{len(failed)} {split} answers cannot be rendered with this model's template:\n  "
            + "\n  ".join(failed[:5])
            + "\nre-run `tuneloop data prepare` with this model so they are rejected with their line numbers"
        )
    if too_long and cfg.data.long == "error":
        raise UserError(
            f"{too_long:,} of {len(rated):,} {split} answers are longer than data.max_length {cfg.data.max_length}; "
            "raise data.max_length, or set data.long=drop"
        )
    if too_long:  # a truncated answer would be rated on its beginning only: drop, even with data.long=truncate
        console.warn(f"{too_long:,} {split} answers are longer than data.max_length {cfg.data.max_length}; dropped")
    desirable = sum(i["label"] for i in items)
    console.note(
        f"{split}: {len(examples):,} records, {len(items):,} rated answers for training "
        f"({desirable:,} desirable, {len(items) - desirable:,} undesirable)"
    )
    return items


def loss_weights(cfg: ProjectConfig, items: list[RatedTokens]) -> tuple[float, float]:
    """(desirable_weight, undesirable_weight): the configured ones, or balanced by the train split's counts.

    Balanced: the rarer label's answers weigh majority count / minority count, the others 1, so both
    sides carry the same total weight, the lower end of the range the KTO paper (its Eq. 8) and TRL
    recommend for weight × count, desirable to undesirable: 1 to 4/3.
    """
    preference = cfg.method.preference
    desirable = sum(i["label"] for i in items)
    undesirable = len(items) - desirable
    if not desirable or not undesirable:
        console.warn(
            f"the train split has {desirable:,} desirable and {undesirable:,} undesirable answers: KTO learns from "
            "both; with one kind only it can just push that kind's likelihood up (or down)"
        )
    if preference.desirable_weight is None and preference.undesirable_weight is None:
        if not desirable or not undesirable or desirable == undesirable:
            return 1.0, 1.0
        weights = (undesirable / desirable, 1.0) if desirable < undesirable else (1.0, desirable / undesirable)
        console.note(f"kto weights balanced by the counts: desirable {weights[0]:.4g}, undesirable {weights[1]:.4g}")
        return weights
    weights = (preference.desirable_weight or 1.0, preference.undesirable_weight or 1.0)
    if desirable and undesirable:
        ratio = weights[0] * desirable / (weights[1] * undesirable)
        low, high = RATIO_RANGE
        if not low <= ratio <= high:
            console.warn(
                f"desirable_weight x {desirable:,} desirable answers / (undesirable_weight x {undesirable:,} "
                f"undesirable) is {ratio:.3g}; the KTO paper recommends 1 to 4/3: unset both weights to balance them"
            )
    return weights


def ordered_rows(items: list[RatedTokens], batch_size: int, seed: int, shuffle: bool) -> list[dict[str, Any]]:
    """The rows in the order training reads them, each with the KL completion TRL's loss pairs it with.

    KTOTrainer reads its batches in order (`train_sampling_strategy='sequential'`): the KL completion of
    a row is its predecessor's answer within the same block of `batch_size` rows (the block's first row
    takes the last one's), so the KL estimate uses the batch's own answers under other prompts. This is
    what TRL's `_prepare_dataset` adds when it tokenizes text itself; the rows arrive rendered here.
    The train rows are shuffled once first (seeded), so a batch mixes records and labels.
    """
    rows = [dict(i) for i in items]
    if shuffle:
        random.Random(seed).shuffle(rows)
    for start in range(0, len(rows), batch_size):
        block = rows[start : start + batch_size]
        answers = [r["completion_ids"] for r in block]
        for row, kl in zip(block, answers[-1:] + answers[:-1], strict=True):
            row["KL_completion_ids"] = kl
    return rows


def trainer_config(cfg: ProjectConfig, common: dict[str, Any], weights: tuple[float, float]) -> Any:
    """KTOConfig: the SFT recipe's TrainingArguments plus KTO's own settings."""
    from trl import KTOConfig

    common = {**common, "train_sampling_strategy": "sequential"}  # the KL completions pair neighbours in order
    return KTOConfig(
        **common,
        beta=cfg.method.preference.beta,
        loss_type="kto",
        desirable_weight=weights[0],
        undesirable_weight=weights[1],
        max_length=None,  # over-long answers were dropped and counted when rendered
        disable_dropout=True,  # policy and reference must see the same network at step 0
        precompute_ref_log_probs=False,
    )


def collator(pad_id: int) -> Any:
    from trl.trainer.kto_trainer import DataCollatorForUnpairedPreference

    return DataCollatorForUnpairedPreference(pad_token_id=pad_id)


def final_metric_names() -> dict[str, str]:
    """The validation metrics summary.json keeps for the weights in final/: TRL's eval keys → ours."""
    keys = ("kl", "rewards/chosen", "rewards/rejected", "rewards/margins", "logps/chosen", "logps/rejected")
    return {"eval_loss": "loss", **{f"eval_{k}": METRIC_NAMES[k] for k in keys}}
