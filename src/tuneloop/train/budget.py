"""`train.time_budget`: the best model a fixed amount of training time buys.

Before training starts, two real training steps (forward and backward on train batches, with the
run's precision) and one validation forward are timed. From those, `max_steps` is the largest step
count whose steps plus validation passes fit in the budget; the learning-rate schedule is then sized
to it, as if the user had written that `max_steps`. The choice is recorded in the run's resolved
config (`train.max_steps: N`, `train.time_budget: null`) and in summary.json, so a rerun of the
resolved config reproduces the run exactly without timing anything.

What the budget covers: optimizer steps, validation passes and the timing itself. Model loading,
data rendering and generation metrics (`train.eval_metrics`) are outside it.
"""

from __future__ import annotations

import math
import random
import time
from dataclasses import asdict, dataclass
from typing import Any

from tuneloop import console
from tuneloop.errors import UserError

# Timing noise of a few percent should rarely change the run: above these sizes the step count is
# rounded down to a multiple of the granularity.
GRANULARITY = ((50, 10), (10, 5))
# Checkpoint saves, the final save and Python's own jitter: kept out of the steps' share.
MARGIN = 0.05


@dataclass(frozen=True)
class BudgetChoice:
    """How a time budget became a step count; written to summary.json."""

    budget_seconds: float
    step_seconds: float  # one optimizer step (all its micro-batches)
    validation_seconds: float  # one validation pass over the val split
    validations: int  # passes the chosen run makes (the base model's, every eval_every, the last step)
    timing_seconds: float  # what measuring cost, taken from the budget
    max_steps: int
    capped_by_epochs: bool

    def to_json(self) -> dict[str, Any]:
        return {k: round(v, 3) if isinstance(v, float) else v for k, v in asdict(self).items()}


def validations(steps: int, eval_every: int, has_val: bool) -> int:
    """Validation passes in a run of `steps`: one before training, every `eval_every`, and one at the end."""
    return 1 + math.ceil(steps / eval_every) if has_val else 0


def steps_within(
    budget: float, step: float, validation: float, spent: float, eval_every: int, has_val: bool, cap: int
) -> int:
    """The largest step count (rounded down to the granularity) whose steps and validations fit the budget."""
    usable = budget * (1 - MARGIN) - spent
    n = max(0, int(usable // step))
    while n > 0 and n * step + validations(n, eval_every, has_val) * validation > usable:
        n -= 1
    for above, multiple in GRANULARITY:
        if n >= above:
            n -= n % multiple
            break
    return min(n, cap)  # the epochs cap is exact: no rounding


def choose_max_steps(
    model: Any,
    collator: Any,
    train_items: list[dict[str, Any]],
    val_items: list[dict[str, Any]],
    cfg: Any,
    precision: str,
    epoch_steps: int,
    loss_fn: Any,
) -> BudgetChoice:
    """Time two training steps and a validation forward on this machine; pick max_steps for `cfg.train.time_budget`.

    `loss_fn(model, batch)` is the trainer's loss, (sum, trained tokens, right). The model's weights,
    gradients and the torch RNG are left as they were, so the run that follows
    trains exactly as it would have with that max_steps written in the config.
    """
    import torch

    from tuneloop.config import duration_seconds

    t = cfg.train
    budget = duration_seconds(t.time_budget)
    started = time.perf_counter()
    rng = random.Random(t.seed)
    size = t.batch_size
    batches = [collator(rng.sample(train_items, min(size, len(train_items)))) for _ in range(2)]
    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16")
    state = torch.get_rng_state()
    model.train()
    times = []
    try:
        for batch in batches:
            t0 = time.perf_counter()
            with autocast:
                loss_sum, count, _ = loss_fn(model, batch)
                (loss_sum / max(int(count), 1)).backward()
            times.append(time.perf_counter() - t0)
        model.zero_grad(set_to_none=True)
        validation = 0.0
        if val_items:
            batch = collator(val_items[:size])
            model.eval()
            t0 = time.perf_counter()
            with torch.no_grad(), autocast:
                loss_fn(model, batch)
            per_token = (time.perf_counter() - t0) / _real_tokens(batch)
            validation = per_token * sum(len(i["input_ids"]) for i in val_items)
    finally:
        model.zero_grad(set_to_none=True)
        model.train()
        torch.set_rng_state(state)
    # The second step is past one-time allocations; a step is grad_accum micro-batches. A step's time
    # follows its token count, so the timed batch is scaled to the mean batch: two random batches of
    # unequal lengths would otherwise set the whole run's length by chance.
    mean_batch = min(size, len(train_items)) * sum(len(i["input_ids"]) for i in train_items) / len(train_items)
    step = times[-1] * mean_batch / _real_tokens(batches[-1]) * t.grad_accum
    spent = time.perf_counter() - started
    n = steps_within(budget, step, validation, spent, t.eval_every, bool(val_items), epoch_steps)
    if n < 1:
        raise UserError(
            f"train.time_budget {t.time_budget} is too short: one step takes {step:.1f} s and a validation pass "
            f"{validation:.1f} s here; give it at least {math.ceil((step + 2 * validation + spent) / 60)}m, or "
            "lower train.batch_size"
        )
    choice = BudgetChoice(
        budget, step, validation, validations(n, t.eval_every, bool(val_items)), spent, n, n == epoch_steps
    )
    console.note(
        f"time budget {t.time_budget}: a step takes {step:.1f} s, a validation pass {validation:.1f} s here, so "
        f"train.max_steps = {n}"
        + (" (all of train.epochs)" if choice.capped_by_epochs else "")
        + f"; rerun exactly with --set train.max_steps={n} --set train.time_budget=null"
    )
    return choice


def _real_tokens(batch: dict[str, Any]) -> int:
    """The batch's examples' tokens, padding aside (the Collator counts them in every layout)."""
    return max(int(batch["tokens"]), 1)


def apply(
    cfg: Any,
    resume: Any,
    model: Any,
    collator: Any,
    train_items: list[dict[str, Any]],
    val_items: list[dict[str, Any]],
    precision: str,
    loss_fn: Any,
) -> tuple[Any, BudgetChoice | None]:
    """The config to train with: `cfg` itself, or, under a time budget, `cfg` with the chosen max_steps.

    A resumed run keeps the max_steps it chose when it started (read from its resolved config).
    """
    import os

    import yaml

    from tuneloop.config import RESOLVED_FILENAME, derive

    if cfg.train.time_budget is None:
        return cfg, None
    fixed = ["train.time_budget=null"]
    if resume is not None:
        saved = yaml.safe_load((resume / RESOLVED_FILENAME).read_text())["train"].get("max_steps")
        return (derive(cfg, [f"train.max_steps={saved}", *fixed]) if saved else cfg), None
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise UserError(
            "train.time_budget is timed in one process; for a distributed run set train.max_steps "
            "(a one-process run with the budget records the max_steps it chose)"
        )
    t = cfg.train
    per_epoch = max(math.ceil(len(train_items) / t.batch_size) // t.grad_accum, 1)  # as Trainer counts
    choice = choose_max_steps(
        model, collator, train_items, val_items, cfg, precision, math.ceil(t.epochs * per_epoch), loss_fn
    )
    return derive(cfg, [f"train.max_steps={choice.max_steps}", *fixed]), choice
