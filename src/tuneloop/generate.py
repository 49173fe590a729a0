"""Generate a reply from a causal LM through its chat template."""

from __future__ import annotations

from typing import Any


def chat_reply(
    model: Any,
    tokenizer: Any,
    messages: list[dict[str, str]],
    max_new_tokens: int = 128,
    temperature: float = 0.0,
    seed: int = 0,
) -> tuple[str, bool]:
    """Return (reply, stopped): the assistant's next turn, and whether it ended with EOS.

    `stopped` is False when generation hit `max_new_tokens`, which callers surface because a
    reply that never stops is a symptom of an untrained end-of-turn token.
    """
    import torch

    if tokenizer.chat_template is None:
        from tuneloop.errors import UserError

        raise UserError("this model's tokenizer has no chat template; pick an instruct/chat model")
    encoded = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    input_ids = encoded["input_ids"].to(model.device)
    torch.manual_seed(seed)
    sampling = temperature > 0
    with torch.no_grad():
        output = model.generate(
            input_ids=input_ids,
            attention_mask=encoded["attention_mask"].to(model.device),
            max_new_tokens=max_new_tokens,
            do_sample=sampling,
            temperature=temperature if sampling else None,
            top_p=None,
            top_k=None,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
        )
    new_tokens = output[0, input_ids.shape[1] :]
    stopped = bool(len(new_tokens)) and int(new_tokens[-1]) == tokenizer.eos_token_id
    return tokenizer.decode(new_tokens, skip_special_tokens=True).strip(), stopped
