"""The non-finite guard: stop a run before a NaN or inf reaches the weights, agreed by every process.

Three regimes, picked when training starts and announced:
- **strict** (fp32, bf16; DDP and FSDP included): a non-finite loss or gradient stops the run before
  the optimizer step, naming the step and its examples. Nothing is applied or saved for that step.
- **loss scaler** (fp16): an overflowing step is the GradScaler's business. It skips the update and
  halves the scale, which is normal early in fp16 training. The run stops only when
  `SKIPPED_STEPS_LIMIT` optimizer steps in a row were skipped: by then the scale has been halved that
  many times, so the overflow is not a scale problem but a diverging model or bad data.
- **DeepSpeed**: the engine owns the gradients (no `p.grad`), and it steps inside `backward`, so the
  per-parameter check cannot run. The loss is still checked before every backward; after each step
  the engine's global gradient norm is read. A non-finite norm on a step the engine skipped (its fp16
  overflow handling) counts like a scaler skip; on a step it applied, the run stops at once and says
  the in-memory weights are bad.

Under torchrun or accelerate every decision is agreed across processes (a max all-reduce of a flag),
so one process never stops while the others wait in a collective.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Literal

from transformers import TrainerCallback

from tuneloop import console

# fp16: stop after this many optimizer steps in a row were skipped by the loss scaler. GradScaler
# starts at 2**16 and halves on each overflow, so 2**16 / 2**24 < 0.01: no scale would fix it.
SKIPPED_STEPS_LIMIT = 24

Regime = Literal["strict", "scaler", "deepspeed"]


class NonFiniteError(RuntimeError):
    """The loss, a gradient or a validation metric became NaN or inf.

    `applied` says whether the bad update already reached the weights (only possible under DeepSpeed).
    """

    def __init__(self, what: str, step: int, example_ids: list[str], applied: bool = False) -> None:
        self.what, self.step, self.example_ids, self.applied = what, step, example_ids, applied
        message = f"{what} at step {step}"
        if example_ids:
            shown = ", ".join(example_ids[:8]) + (f" and {len(example_ids) - 8} more" if len(example_ids) > 8 else "")
            message += f" (examples in this step: {shown})"
        super().__init__(message)


def agreed_max(accelerator: Any, value: int) -> int:
    """The largest `value` over all processes (the value itself in a single process)."""
    if accelerator is None or accelerator.num_processes <= 1:
        return value
    import torch

    return int(accelerator.gather(torch.tensor([value], device=accelerator.device)).max())


def _gathered(accelerator: Any, item: Any) -> list[Any]:
    """`item` from every process, in rank order (called by all of them together)."""
    if accelerator is None or accelerator.num_processes <= 1:
        return [item]
    from accelerate.utils import gather_object

    return gather_object([item])


class StepGuard(TrainerCallback):
    """Checks each micro-batch's loss and each step's gradients; see the module docstring."""

    def __init__(self, trainer: Any) -> None:
        self.trainer = trainer
        self.limit = SKIPPED_STEPS_LIMIT
        self.regime: Regime = "strict"
        self.skipped_in_a_row = 0
        self.scale_before: float | None = None

    def on_train_begin(self, args, state, control, **kwargs):
        self.limit = SKIPPED_STEPS_LIMIT  # read here so a test can lower it
        accelerator = self.trainer.accelerator
        if getattr(self.trainer, "is_deepspeed_enabled", False):
            self.regime = "deepspeed"
            console.warn(
                "DeepSpeed owns the gradients, so the per-parameter NaN/inf check is off. Guarding instead: "
                "the loss before every backward, and DeepSpeed's global gradient norm after every step (a step it "
                f"applied with a non-finite norm stops the run; {self.limit} skipped fp16 steps in a row stop it too)"
            )
        elif accelerator.scaler is not None:
            self.regime = "scaler"
            console.note(
                "fp16 with a loss scaler: an overflowing step is skipped by the scaler and training goes on; "
                f"{self.limit} skipped steps in a row stop the run"
            )

    # -- the loss, every micro-batch (called from compute_loss, before backward)

    def check_loss(self, loss: Any, step: int, example_ids: list[str]) -> None:
        value = float(loss.detach())
        bad = agreed_max(self.trainer.accelerator, int(not math.isfinite(value)))
        if not bad or self.regime == "scaler":
            return  # with a scaler, a NaN loss gives non-finite gradients and the scaler skips the step
        self._stop(f"the loss became {value}" if not math.isfinite(value) else None, step, example_ids)

    # -- the gradients, before the optimizer applies them

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        self.scale_before = _scale(self.trainer.accelerator)
        if self.regime != "strict":
            return
        import torch

        grads = [p.grad for p in (model or self.trainer.model).parameters() if p.grad is not None]
        finite = not grads or bool(torch.stack([torch.isfinite(g).all() for g in grads]).all())
        if agreed_max(self.trainer.accelerator, int(not finite)):
            what = "a gradient became NaN or inf" if not finite else None
            self._stop(what, state.global_step + 1, self.trainer.step_example_ids)

    # -- after the step: skipped steps (fp16) and DeepSpeed's own norm

    def on_step_end(self, args, state, control, **kwargs):
        if self.regime == "strict":
            return
        accelerator = self.trainer.accelerator
        scale = _scale(accelerator)
        # GradScaler lowers its scale exactly when it skips a step. Accelerate's own flag misses the skip
        # when the optimizer does it itself (fused AdamW, the default, takes the scaler into its step).
        lowered = scale is not None and self.scale_before is not None and scale < self.scale_before
        skipped = lowered or bool(accelerator.optimizer_step_was_skipped)
        if self.regime == "deepspeed":
            norm = _deepspeed_grad_norm(accelerator)
            if norm is not None and not math.isfinite(norm) and not skipped:
                raise NonFiniteError(
                    f"DeepSpeed applied a step whose gradient norm was {norm}",
                    state.global_step,
                    self.trainer.step_example_ids,
                    applied=True,
                )
        if not skipped:
            self.skipped_in_a_row = 0
            return
        self.skipped_in_a_row += 1
        console.warn(
            f"step {state.global_step}: the gradients overflowed and the loss scaler skipped this update"
            + (f" (scale now {scale:g})" if scale is not None else "")
            + f"; {self.skipped_in_a_row} in a row"
        )
        if self.skipped_in_a_row >= self.limit:
            raise NonFiniteError(
                f"{self.skipped_in_a_row} optimizer steps in a row overflowed and were skipped by the loss scaler"
                + (f" (scale now {scale:g})" if scale is not None else ""),
                state.global_step,
                self.trainer.step_example_ids,
            )

    def _stop(self, what: str | None, step: int, example_ids: list[str]) -> None:
        """Raise on every process together, naming the examples of the processes that saw the problem."""
        reports = _gathered(self.trainer.accelerator, (what, list(example_ids)))
        bad = [(rank, w, ids) for rank, (w, ids) in enumerate(reports) if w is not None]
        what0 = bad[0][1] if len(reports) == 1 else f"{bad[0][1]} on process {bad[0][0]}"
        raise NonFiniteError(what0, step, [i for _, _, ids in bad for i in ids])


def non_finite_message(e: NonFiniteError, last: Path | None) -> str:
    """What stopped the run, what state it left, and what to try."""
    advice = (
        "Lower train.learning_rate, keep train.max_grad_norm, or inspect those examples "
        "with `tuneloop data inspect --id ID`"
    )
    if e.applied:
        state = "DeepSpeed had already applied the step, so no checkpoint was written after it"
    elif e.what.startswith("the validation metric"):
        state = "No checkpoint was written for this evaluation"
        advice = (
            "The weights have diverged (or overflow in this precision): lower train.learning_rate, or use fp32/bf16"
        )
    else:
        state = "The step was not applied and no checkpoint was written for it"
    last_good = f"; the last good checkpoint is {last} (`tuneloop train --resume` continues from it)" if last else ""
    return f"training stopped: {e}. {state}{last_good}. {advice}"


def _scale(accelerator: Any) -> float | None:
    scaler = getattr(accelerator, "scaler", None)
    return float(scaler.get_scale()) if scaler is not None else None


def _deepspeed_grad_norm(accelerator: Any) -> float | None:
    engine = getattr(accelerator, "deepspeed_engine_wrapped", None)
    if engine is None:
        return None
    norm = engine.get_global_grad_norm()
    return None if norm is None else float(norm)
