"""A reward model as a function: `load_reward_model(run_dir)(prompts, completions) -> list[float]`.

A reward run (`method.name: reward`, train/preference.py) saves a whole sequence-classification model
with one output in its `final/`, with the tokenizer and chat template it trained with. Scoring renders
each prompt + completion exactly as training rendered a pair's side (data/pairs.py: the answer through
its end-of-turn token) and reads the head: higher is preferred. Evaluation and other recipes (GRPO's
reward) load it through here, so a reward model scores the same text it learned from.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from tuneloop.config import RESOLVED_FILENAME
from tuneloop.data.formats import RowError
from tuneloop.data.pairs import score_ids
from tuneloop.errors import UserError

RewardFunction = Callable[[Sequence[Any], Sequence[Any]], list[float]]


def load_reward_model(run_dir: Path, batch_size: int = 8) -> RewardFunction:
    """A trained reward run as `score(prompts, completions) -> list[float]`, one score per pair.

    A prompt is a string (one user turn) or a list of {role, content} messages ending with a user turn; a
    completion is a string or a list of messages whose last one is the answer (as TRL's GRPOTrainer passes
    conversational completions). Runs in float32 without gradients. Raises UserError for a folder that is
    not a finished reward run, ValueError for a prompt/completion that cannot be rendered.
    """
    from transformers import AutoModelForSequenceClassification
    from transformers.utils import logging as hf_logging

    from tuneloop.models import load_tokenizer, refuse_pickled_weights

    final = check_reward_run(run_dir)
    refuse_pickled_weights(final, "the reward model")
    hf_logging.disable_progress_bar()
    try:
        model = AutoModelForSequenceClassification.from_pretrained(str(final), dtype="float32", use_safetensors=True)
    finally:
        hf_logging.enable_progress_bar()
    return scorer(model, load_tokenizer(final), batch_size)


def check_reward_run(run_dir: Path) -> Path:
    """The `final/` folder of a finished reward run; UserError for any other folder. Reads no weights."""
    import yaml

    run_dir = Path(run_dir)
    resolved = run_dir / RESOLVED_FILENAME
    saved = yaml.safe_load(resolved.read_text()) if resolved.is_file() else {}
    if ((saved or {}).get("method") or {}).get("name") != "reward":
        raise UserError(f"{run_dir} is not a reward-model run (method.name reward); train one with `tuneloop train`")
    final = run_dir / "final"
    if not final.is_dir():
        raise UserError(
            f"{run_dir} has no final/ model (the run did not finish); resume it with `tuneloop train --resume`"
        )
    return final


def scorer(model: Any, tokenizer: Any, batch_size: int = 8) -> RewardFunction:
    """`score(prompts, completions)` for a loaded sequence-classification model with one output."""
    import torch

    from tuneloop.data.render import Renderer

    model.eval()
    renderer = Renderer(tokenizer)
    pad = model.config.pad_token_id if model.config.pad_token_id is not None else tokenizer.pad_token_id

    def score(prompts: Sequence[Any], completions: Sequence[Any]) -> list[float]:
        if len(prompts) != len(completions):
            raise ValueError(f"{len(prompts)} prompts but {len(completions)} completions; give one of each per pair")
        rows = []
        for prompt, completion in zip(prompts, completions, strict=True):
            messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)
            answer = completion if isinstance(completion, str) else completion[-1]["content"]
            try:
                rows.append(score_ids(renderer, messages, answer))
            except RowError as e:
                raise ValueError(f"this prompt and completion cannot be rendered for scoring: {e}") from None
        scores: list[float] = []
        for start in range(0, len(rows), batch_size):
            chunk = rows[start : start + batch_size]
            width = max(map(len, chunk))
            ids = torch.tensor([r + [pad] * (width - len(r)) for r in chunk])
            mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in chunk])
            with torch.no_grad():
                scores += model(input_ids=ids, attention_mask=mask).logits[:, 0].float().tolist()
        return scores

    return score
