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
    """Every id that ends a turn: the tokenizer's EOS, the chat template's end-of-turn token (the one
    training taught, e.g. <end_of_turn> from model.chat_template on a base model) and the generation
    config's."""
    from tuneloop.data.render import Renderer

    ids = {tokenizer.eos_token_id, Renderer(tokenizer).end_of_turn_id}
    configured = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    ids.update(configured if isinstance(configured, list) else [configured])
    return sorted(i for i in ids if i is not None)


def left_pad(prompts: Sequence[list[int]], pad: int) -> tuple[Any, Any]:
    """(input_ids, attention_mask) for prompts of different lengths, padded on the left.

    Left padding puts every prompt's last token in the last column, so all rows generate from
    the same position; the mask hides the padding from attention.
    """
    import torch

    width = max(len(p) for p in prompts)
    input_ids = torch.full((len(prompts), width), pad, dtype=torch.long)
    attention = torch.zeros((len(prompts), width), dtype=torch.long)
    for row, ids in enumerate(prompts):
        if ids:
            input_ids[row, width - len(ids) :] = torch.tensor(ids)
            attention[row, width - len(ids) :] = 1
    return input_ids, attention


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

    When a batch's prompts start with the same tokens (a system prompt every test case repeats), that
    prefix is computed once and its KV cache copied to every row; the rows are laid out as prefix,
    padding, remainder, so each token keeps the position it has in its own prompt.
    """
    import torch

    from tuneloop.data.batching import MIN_SHARED_PREFIX, common_prefix
    from tuneloop.data.formats import RowError
    from tuneloop.data.render import Renderer
    from tuneloop.errors import UserError

    try:
        renderer = Renderer(tokenizer)
        prompts = [renderer.prompt_ids(list(c)) for c in conversations]
    except RowError as e:
        raise UserError(f"cannot render the prompt: {e}") from None
    stops = stop_token_ids(model, tokenizer)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else stops[0]
    share = can_share_prompt_cache(model)
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]), reverse=True)
    results: list[Generation | None] = [None] * len(prompts)
    sampling = temperature > 0
    was_training = model.training
    model.eval()
    torch.manual_seed(seed)
    try:
        for start in range(0, len(order), batch_size):
            chunk = order[start : start + batch_size]
            rows = [prompts[i] for i in chunk]
            # Each row keeps at least its last prompt token: generation starts from it.
            shared = common_prefix(rows, min(len(r) for r in rows) - 1) if share and len(rows) > 1 else 0
            if shared < MIN_SHARED_PREFIX:  # the same threshold as training's shared-prefix rows
                shared = 0
            input_ids, attention = left_pad([r[shared:] for r in rows], pad)
            extra: dict[str, Any] = {}
            with torch.inference_mode():
                if shared:
                    prefix = torch.tensor([rows[0][:shared]], device=model.device)
                    cache = model(input_ids=prefix, use_cache=True).cache
                    cache.batch_repeat_interleave(len(rows))
                    input_ids = torch.cat([prefix.cpu().expand(len(rows), -1), input_ids], dim=1)
                    attention = torch.cat([torch.ones(len(rows), shared, dtype=attention.dtype), attention], dim=1)
                    extra["cache"] = cache
                width = input_ids.shape[1]
                output = model.generate(
                    input_ids=input_ids.to(model.device),
                    attention_mask=attention.to(model.device),
                    **extra,
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


def can_share_prompt_cache(model: Any) -> bool:
    """Whether one prefix KV cache may be copied to every row: model types whose attention follows the
    mask and position ids given (the packing-verified list), and no virtual tokens (prompt tuning)."""
    from tuneloop.data.batching import PACKING_VERIFIED

    config = getattr(model, "config", None)
    peft = getattr(model, "active_peft_config", None)
    if peft is not None and getattr(peft, "is_prompt_learning", False):
        return False
    return getattr(config, "model_type", None) in PACKING_VERIFIED


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


_VLLM_ENGINES: dict[tuple[str, bool], Any] = {}


def generate_vllm(
    model_path: str,
    tokenizer: Any,
    conversations: Sequence[list[dict[str, Any]]],
    *,
    adapter: str | None = None,
    max_lora_rank: int = 64,
    max_new_tokens: int = 128,
    temperature: float = 0.0,
    seed: int = 0,
    trust_remote_code: bool = False,
    stops: list[int] | None = None,
) -> list[Generation]:
    """The same replies as `generate_batch`, generated by vLLM (GPU); `adapter` is a LoRA folder.

    Prompts are the same token ids `generate_batch` uses (the shared Renderer), passed to vLLM as
    token prompts, so neither backend re-applies a chat template of its own.
    """
    from tuneloop.data.formats import RowError
    from tuneloop.data.render import Renderer
    from tuneloop.errors import UserError

    try:
        from vllm import LLM, SamplingParams
        from vllm.inputs import TokensPrompt
        from vllm.lora.request import LoRARequest
    except ImportError:
        raise UserError(
            "eval.backend=vllm needs the vllm package (and a GPU): pip install vllm, or set eval.backend=transformers"
        ) from None
    key = (model_path, adapter is not None)
    if key not in _VLLM_ENGINES:
        _VLLM_ENGINES.clear()  # one engine at a time: each reserves most of the GPU's memory
        _VLLM_ENGINES[key] = LLM(
            model=model_path,
            tokenizer=model_path,
            enable_lora=adapter is not None,
            max_lora_rank=max_lora_rank,
            trust_remote_code=trust_remote_code,
            seed=seed,
        )
    engine = _VLLM_ENGINES[key]
    try:
        renderer = Renderer(tokenizer)
        prompts = [TokensPrompt(prompt_token_ids=renderer.prompt_ids(list(c))) for c in conversations]
    except RowError as e:
        raise UserError(f"cannot render the prompt: {e}") from None
    params = SamplingParams(
        temperature=temperature,
        max_tokens=max_new_tokens,
        stop_token_ids=stops or [],
        seed=seed,
        skip_special_tokens=True,
    )
    lora = LoRARequest("tuned", 1, adapter) if adapter else None
    outputs = engine.generate(prompts, params, lora_request=lora, use_tqdm=False)
    replies = []
    for out in outputs:
        best = out.outputs[0]
        stopped = best.finish_reason == "stop"
        replies.append(Generation(best.text.strip(), stopped, len(best.token_ids)))
    return replies


def sampled_answers(
    model: Any,
    tokenizer: Any,
    *,
    temperature: float,
    max_new_tokens: int,
    seed: int,
    batch_size: int,
    require_stop: bool,
) -> Callable[[list[list[dict[str, Any]]], int], list[list[Any]]]:
    """An Answerer for `tuneloop data candidates`: k replies per conversation from a local model.

    Each conversation is repeated k times in the batch (sampling makes the copies differ). With
    `require_stop`, a reply that hit `max_new_tokens` before its end-of-turn token is an answer with an
    error: a teacher's cut-off answer must not become training data.
    """
    from tuneloop.data.candidates import Answer

    def answer(conversations: list[list[dict[str, Any]]], k: int) -> list[list[Answer]]:
        repeated = [c for c in conversations for _ in range(k)]
        replies = generate_batch(
            model,
            tokenizer,
            repeated,
            max_new_tokens=max_new_tokens,
            batch_size=batch_size,
            temperature=temperature,
            seed=seed,
        )
        cut = f"the answer hit --max-new-tokens {max_new_tokens} before its end-of-turn token"
        answers = [Answer(r.text, cut if require_stop and not r.stopped else None) for r in replies]
        return [answers[i * k : (i + 1) * k] for i in range(len(conversations))]

    return answer
