"""Trainer callbacks that watch the run: metrics file, progress, best checkpoint and early stopping,
overfitting alarm, and a clean stop on SIGTERM / Ctrl-C (the non-finite guard is in guards.py).

Everything they remember is derived from the TrainerState (saved in each checkpoint), so a
resumed run behaves as if it had never stopped.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import signal
import time
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from tuneloop import console
from tuneloop.train.guards import NonFiniteError, agreed_max


class MetricsFile(TrainerCallback):
    """Append every log event to metrics.jsonl (main process only); `names` renames a library's keys to ours."""

    def __init__(self, path: Path, names: dict[str, str] | None = None) -> None:
        self.path = path
        self.names = names or {}

    def rewind(self, step: int) -> int:
        """Drop rows logged after `step` (a resume replays them); return how many were dropped.

        A crash after a checkpoint leaves rows for steps the resumed run will log again; keeping both
        would draw two curves on top of each other. Rewritten atomically, so a crash here loses nothing.
        """
        if not self.path.is_file():
            return 0
        lines = self.path.read_text().splitlines(keepends=True)
        kept = [line for line in lines if line.strip() and json.loads(line).get("step", 0) <= step]
        if len(kept) == len(lines):
            return 0
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text("".join(kept))
        os.replace(tmp, self.path)
        return len(lines) - len(kept)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero or not logs:
            return
        row = {"step": state.global_step, "epoch": round(state.epoch or 0.0, 4), "time": round(time.time(), 3)}
        row |= {self.names.get(k, k): v for k, v in logs.items() if isinstance(v, (int, float)) and k != "epoch"}
        with self.path.open("a") as f:
            f.write(json.dumps(row) + "\n")


class Progress(TrainerCallback):
    """A rich progress bar with ETA on a terminal; one plain line per log event otherwise.

    `names` renames a library's keys as MetricsFile does, so the console and metrics.jsonl say the same.
    """

    def __init__(self, names: dict[str, str] | None = None) -> None:
        self.bar: Any = None
        self.task: Any = None
        self.names = names or {}

    def on_train_begin(self, args, state, control, **kwargs):
        if not state.is_world_process_zero or not console.err.is_terminal:
            return
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self.bar = Progress(
            TextColumn("training"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeRemainingColumn(),
            TextColumn("{task.description}"),
            console=console.err,
        )
        self.bar.start()
        self.task = self.bar.add_task("", total=state.max_steps, completed=state.global_step)

    def on_step_end(self, args, state, control, **kwargs):
        if self.bar is not None:
            self.bar.update(self.task, completed=state.global_step)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero or not logs:
            return
        named = {self.names.get(k, k): v for k, v in logs.items()}
        parts = [f"{k} {_fmt(v)}" for k, v in named.items() if k in _SHOWN]
        if not parts:
            return
        line = f"step {state.global_step}/{state.max_steps}: " + ", ".join(parts)
        if self.bar is not None:
            self.bar.update(self.task, description=", ".join(parts))
            if "eval_loss" in logs:
                self.bar.console.print(line, markup=False)
        else:
            console.note(line)

    def on_train_end(self, args, state, control, **kwargs):
        if self.bar is not None:
            self.bar.stop()
            self.bar = None


_SHOWN = (
    "loss",
    "eval_loss",
    "eval_token_accuracy",
    "eval_accuracy",
    "eval_f1",
    "eval_reward_accuracy",  # preference methods (DPO family, kto), under our names
    "eval_reward_margin",
    "reward",  # GRPO: the mean reward of the step's sampled answers, and their KL to the reference
    "kl",
    "learning_rate",
    "grad_norm",
)


def _fmt(v: float) -> str:
    return f"{v:.2e}" if abs(v) < 1e-3 and v != 0 else f"{v:.4g}"


class BestAndEarlyStop(TrainerCallback):
    """Track the best validation metric and checkpoint each new best; stop after `patience` evals without one."""

    def __init__(self, metric: str, greater_is_better: bool, patience: int | None) -> None:
        self.key = f"eval_{metric}"
        self.greater = greater_is_better
        self.patience = patience

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == state.max_steps and args.eval_strategy != "no":
            control.should_evaluate = True  # the last step is always measured, whatever eval_every says

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        for key, v in (metrics or {}).items():
            if isinstance(v, float) and not math.isfinite(v):
                # Every process computed the same reduced metrics, so they all stop here together.
                raise NonFiniteError(f"the validation metric {key} is {v}", state.global_step, [])
        value = (metrics or {}).get(self.key)
        if value is None or state.global_step == 0:
            return  # step 0 is the untrained base model: a reference point, not a checkpoint
        best = state.best_metric
        if best is None or (value > best if self.greater else value < best):
            state.best_metric = value
            state.best_global_step = state.global_step
            control.should_save = True  # the best weights must exist on disk to be kept
            return
        if self.patience is None:
            return
        since = [h for h in state.log_history if self.key in h and h["step"] > (state.best_global_step or 0)]
        if len(since) >= self.patience:  # log_history already holds this evaluation
            console.note(
                f"early stopping at step {state.global_step}: {self.key} has not improved for {self.patience} "
                f"evaluations (best {best:.4f} at step {state.best_global_step})"
            )
            control.should_training_stop = True
            control.should_save = True


class OverfitAlarm(TrainerCallback):
    """Warn once when train loss falls while validation loss rises for `patience` evaluations in a row."""

    def __init__(self, patience: int) -> None:
        self.patience = patience
        self.warned = False

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        if self.warned or not metrics or "eval_loss" not in metrics:
            return
        points = _eval_points(state.log_history)  # already holds this evaluation
        if len(points) < self.patience + 1:
            return
        recent = points[-(self.patience + 1) :]
        if all(b[1] < a[1] and b[2] > a[2] for a, b in itertools.pairwise(recent)):
            start = recent[0][0]
            console.warn(
                f"overfitting: since step {start}, train loss fell {recent[0][1]:.3f} → {recent[-1][1]:.3f} while "
                f"validation loss rose {recent[0][2]:.3f} → {recent[-1][2]:.3f} over {self.patience} evaluations. "
                "The best checkpoint is kept; consider fewer epochs, a lower learning rate, or more data"
            )
            self.warned = True


def _eval_points(history: list[dict[str, Any]]) -> list[tuple[int, float, float]]:
    """(step, latest train loss, validation loss) at each evaluation."""
    points, train = [], None
    for h in history:
        if "loss" in h:
            train = h["loss"]
        if "eval_loss" in h and train is not None:
            points.append((h["step"], train, h["eval_loss"]))
    return points


class GracefulStop(TrainerCallback):
    """SIGTERM or the first Ctrl-C: finish the current step, save a checkpoint, and stop cleanly.

    Under torchrun the signal may reach the processes during different steps (or reach only one), so
    the decision is agreed at every step end: every process stops after the same step and saves it.
    `signal` is the signal's name (SIGTERM wins over SIGINT when both arrived); the CLI turns it into
    exit code 143 or 130.
    """

    def __init__(self) -> None:
        self.signal: str | None = None
        self.accelerator: Any = None  # set once the Trainer exists; None means a single process
        self._previous: dict[int, Any] = {}

    def install(self) -> None:
        import threading

        if threading.current_thread() is not threading.main_thread():
            console.warn(
                "training runs off the main thread, where Python cannot install signal handlers: SIGTERM and "
                "Ctrl-C will not save a checkpoint first (the last periodic checkpoint is what resume will use)"
            )
            return
        for sig in (signal.SIGTERM, signal.SIGINT):
            self._previous[sig] = signal.signal(sig, self._handle)

    def uninstall(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def _handle(self, signum: int, frame: Any) -> None:
        if self.signal is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C: stop now
        self.signal = signal.Signals(signum).name
        console.note(f"{self.signal} received: saving a checkpoint after this step, then stopping")

    def on_step_end(self, args, state, control, **kwargs):
        mine = int(signal.Signals[self.signal]) if self.signal is not None else 0
        agreed = agreed_max(self.accelerator, mine)
        if agreed:
            self.signal = self.signal or signal.Signals(agreed).name
            control.should_save = True
            control.should_training_stop = True
