"""Generate replies from a causal LM through its chat template: one, or many in left-padded batches."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any


@dataclass
class Generation:
    """One reply. `stopped` is False when it hit max_new_tokens before an end-of-turn token."""

    text: str
    stopped: bool
    new_tokens: int


def stop_token_ids(model: Any, tokenizer: Any) -> list[int]:
    """Every id that ends a turn: the tokenizer's EOS plus the generation config's (often <|im_end|>)."""
    ids = {tokenizer.eos_token_id}
    configured = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    ids.update(configured if isinstance(configured, list) else [configured])
    return sorted(i for i in ids if i is not None)


def generate_batch(
    model: Any,
    tokenizer: Any,
    conversations: Sequence[list[dict[str, Any]]],
    *,
    max_new_tokens: int = 128,
    batch_size: int = 16,
    temperature: float = 0.0,
    seed: int = 0,
    on_batch: Callable[[int], None] | None = None,
) -> list[Generation]:
    """Replies to many conversations, in their order.

    Prompts are rendered by the same `Renderer` that built the training data, sorted by length so
    a batch holds similar lengths, left-padded, and decoded with the KV cache. `on_batch(n)` is
    called after each batch with the number of replies it produced (for progress bars).
    """
    import torch

    from tuneloop.data.formats import RowError
    from tuneloop.data.render import Renderer
    from tuneloop.errors import UserError

    if tokenizer.chat_template is None:
        raise UserError("this model's tokenizer has no chat template; pick an instruct/chat model")
    try:
        renderer = Renderer(tokenizer)
        prompts = [renderer.prompt_ids(list(c)) for c in conversations]
    except RowError as e:
        raise UserError(f"cannot render the prompt: {e}") from None
    stops = stop_token_ids(model, tokenizer)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else stops[0]
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]), reverse=True)
    results: list[Generation | None] = [None] * len(prompts)
    sampling = temperature > 0
    was_training = model.training
    model.eval()
    torch.manual_seed(seed)
    try:
        for start in range(0, len(order), batch_size):
            chunk = order[start : start + batch_size]
            width = max(len(prompts[i]) for i in chunk)
            input_ids = torch.full((len(chunk), width), pad, dtype=torch.long)
            attention = torch.zeros((len(chunk), width), dtype=torch.long)
            for row, i in enumerate(chunk):
                n = len(prompts[i])
                input_ids[row, width - n :] = torch.tensor(prompts[i])
                attention[row, width - n :] = 1
            with torch.inference_mode():
                output = model.generate(
                    input_ids=input_ids.to(model.device),
                    attention_mask=attention.to(model.device),
                    max_new_tokens=max_new_tokens,
                    do_sample=sampling,
                    temperature=temperature if sampling else None,
                    top_p=None,
                    top_k=None,
                    pad_token_id=pad,
                    eos_token_id=stops,
                    use_cache=True,
                )
            for row, i in enumerate(chunk):
                results[i] = _decode(output[row, width:].tolist(), stops, tokenizer)
            if on_batch is not None:
                on_batch(len(chunk))
    finally:
        model.train(was_training)
    return [r for r in results if r is not None]


def _decode(new_ids: list[int], stops: list[int], tokenizer: Any) -> Generation:
    """Cut at the first stop token; what follows it in a batch is padding."""
    end = next((k for k, t in enumerate(new_ids) if t in stops), None)
    kept = new_ids if end is None else new_ids[:end]
    text = tokenizer.decode(kept, skip_special_tokens=True).strip()
    return Generation(text, end is not None, len(kept) + (end is not None))


def chat_reply(
    model: Any,
    tokenizer: Any,
    messages: list[dict[str, str]],
    max_new_tokens: int = 128,
    temperature: float = 0.0,
    seed: int = 0,
) -> tuple[str, bool]:
    """Return (reply, stopped): the assistant's next turn, and whether it ended with an end-of-turn token.

    `stopped` is False when generation hit `max_new_tokens`, which callers surface because a
    reply that never stops is a symptom of an untrained end-of-turn token.
    """
    reply = generate_batch(
        model, tokenizer, [messages], max_new_tokens=max_new_tokens, batch_size=1, temperature=temperature, seed=seed
    )[0]
    return reply.text, reply.stopped
