"""Text → numbers for the drift tests: sentence embeddings and input lengths.

Embeddings follow sentence-transformers' recipe for all-MiniLM-L6-v2 (its 1_Pooling config): mean of
the last hidden states over real tokens, then L2-normalised. The encoder loads through
`models.load_encoder` (safetensors only, the embedded MiniLM by default).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from tuneloop import models
from tuneloop.config import ProjectConfig
from tuneloop.errors import UserError

MAX_TOKENS = 256  # all-MiniLM-L6-v2 was trained on inputs up to 256 word pieces; longer ones are cut
BATCH = 32


def encoder(name: str) -> Callable[[list[str]], np.ndarray]:
    """texts → (len(texts), dim) unit vectors (float32) from the sentence encoder `name`.

    The encoder loads on the first call, so a report without enough traffic to test never loads it.
    """
    import torch

    loaded: list[tuple] = []

    def embed(texts: list[str]) -> np.ndarray:
        if not loaded:
            from transformers.utils import logging as hf_logging

            hf_logging.disable_progress_bar()
            try:
                loaded.append(models.load_encoder(name))
            finally:
                hf_logging.enable_progress_bar()
        model, tokenizer = loaded[0]
        # Batches of similar lengths waste little on padding; the rows go back to their order at the end.
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        chunks = []
        with torch.inference_mode():
            for start in range(0, len(texts), BATCH):
                batch = tokenizer(
                    [texts[i] for i in order[start : start + BATCH]],
                    padding=True,
                    truncation=True,
                    max_length=MAX_TOKENS,
                    return_tensors="pt",
                )
                mask = batch["attention_mask"].unsqueeze(-1).float()
                hidden = model(**batch).last_hidden_state
                pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1)
                chunks.append(torch.nn.functional.normalize(pooled, dim=-1).numpy())
        if not chunks:
            return np.zeros((0, model.config.hidden_size), dtype=np.float32)
        vectors = np.empty_like(np.concatenate(chunks))
        vectors[order] = np.concatenate(chunks)
        return vectors

    return embed


def length_counter(cfg: ProjectConfig) -> tuple[Callable[[str], int], str]:
    """(text → length, unit): tokens of the project's model when its tokenizer loads, else characters.

    The tokenizer is the base model's (`model.name`); when it cannot be found offline (a hub id that
    was never downloaded) lengths are counted in characters and the report says so.
    """
    try:
        tokenizer = models.load_tokenizer(
            models.resolve(cfg.model.name, cfg.model.revision), cfg.model.trust_remote_code
        )
    except (UserError, OSError, ValueError):
        return len, "characters"
    return (lambda text: len(tokenizer(text, add_special_tokens=False)["input_ids"])), "tokens"
