"""Is the export the model that was trained? Logits and greedy generations on fixed probe prompts.

The reference is the run's own model as training left it: the base plus the unmerged adapter (for
QLoRA the 4-bit base), in float32. Every probe is rendered by the training renderer
(`Renderer.prompt_ids`), with the run's tokenizer for the reference and with the export's own
tokenizer for the export, and the two token sequences must be identical: a tokenizer or chat
template that changed on the way out fails here, before any logit is compared.

Both models compute in `export.verify_dtype` (float64 by default), so the figures measure the export
and not float32's summation order: in float32, merged weights and an unmerged adapter sum the same
numbers in a different order, which alone moves SmolLM2's logits by up to ~1e-4 over its 30 layers.
A 4-bit QLoRA reference cannot be upcast; it and its export compute in float32.

Then, over every position of every probe: the largest absolute logit difference and the share of
positions whose top-1 token agrees; then greedy decoding of `max_new_tokens` from each probe,
compared token by token. A float32 export must match within `export.max_abs_diff` (1e-4) and
generate identical tokens. A GGUF is rounded to f16 or 8-bit blocks, so it gets its own bounds
(`export.f16_*`, `export.q8_0_*`) and its generations are reported, as the number of probes
whose greedy tokens are identical and the first token where each diverges.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

from tuneloop.config import ProjectConfig

# When the test split has fewer prompts than export.probes, these fill the set.
FIXED_PROBES: list[list[dict[str, str]]] = [
    [{"role": "user", "content": "How do I reset my password?"}],
    [{"role": "system", "content": "You are a concise assistant."}, {"role": "user", "content": "Summarise: 2+2=4."}],
    [
        {"role": "user", "content": "I was charged twice this month."},
        {"role": "assistant", "content": "Sorry about that. Which card was charged?"},
        {"role": "user", "content": "The one ending 0042."},
    ],
    [{"role": "user", "content": "Write one sentence about the sea."}],
]


@dataclass
class Reference:
    """What the run's own model produced on the probes: the yardstick for every export format."""

    prompts: list[list[int]]
    logits: list[Any]  # one (positions, vocab) float32 tensor per probe
    generations: list[list[int]]
    stops: list[int]
    special_ids: tuple[int | None, int | None]  # the run tokenizer's (BOS, EOS)
    dtype: str  # what both sides compute in


@dataclass
class Check:
    """One export format measured against the reference."""

    format: str
    probes: int
    positions: int
    max_abs_diff: float
    top1_agreement: float
    generation_matches: int
    first_divergence: list[int | None]  # per probe: index of the first differing generated token
    tokens_identical: bool
    chat_template_identical: bool
    limit_max_abs_diff: float
    limit_top1: float
    exact_generation_required: bool
    passed: bool = False
    problems: list[str] = field(default_factory=list)

    def judge(self) -> Check:
        """Set `passed` and say which bound failed."""
        if not self.tokens_identical:
            self.problems.append(
                "its tokenizer gives different token ids (BOS/EOS ids, or the probe conversations' tokens)"
            )
        if not self.chat_template_identical:
            self.problems.append("its chat template differs from the one the run trained with")
        if not self.max_abs_diff <= self.limit_max_abs_diff:
            self.problems.append(f"max |Δlogit| {self.max_abs_diff:.3g} > {self.limit_max_abs_diff:g}")
        if self.top1_agreement < self.limit_top1:
            self.problems.append(f"top-1 agreement {self.top1_agreement:.2%} < {self.limit_top1:.0%}")
        if self.exact_generation_required and self.generation_matches < self.probes:
            self.problems.append(f"greedy generations differ on {self.probes - self.generation_matches} probe(s)")
        self.passed = not self.problems
        return self

    def summary(self) -> str:
        gen = f"greedy tokens identical on {self.generation_matches}/{self.probes} probes"
        return (
            f"{self.format}: max |Δlogit| {self.max_abs_diff:.3g} (limit {self.limit_max_abs_diff:g}), top-1 "
            f"agreement {self.top1_agreement:.2%} over {self.positions} positions (limit {self.limit_top1:.0%}), {gen}"
        )


def probe_conversations(cfg: ProjectConfig, n: int) -> list[list[dict[str, str]]]:
    """Up to n prompts from the prepared test split (the prompt turns before the last answer), then fixed ones."""
    from tuneloop.data.formats import Example

    found: list[list[dict[str, str]]] = []
    path = cfg.path(cfg.data.prepared_dir) / "test.jsonl"
    if path.is_file():
        with path.open(encoding="utf-8") as f:
            for line in f:
                if len(found) >= n:
                    break
                if not line.strip():
                    continue
                ex = Example.from_json(json.loads(line))
                last = max((i for i, m in enumerate(ex.messages) if m["role"] == "assistant"), default=None)
                if ex.kind == "chat" and last:
                    found.append([{"role": m["role"], "content": m["content"]} for m in ex.messages[:last]])
    return (found + FIXED_PROBES)[: max(n, 1)]


def prompt_ids(tokenizer: Any, conversations: list[list[dict[str, str]]]) -> list[list[int]]:
    """The training renderer's token ids for each conversation plus the assistant's generation prompt.

    Raises RowError when the tokenizer cannot render them (no EOS, no chat template).
    """
    from tuneloop.data.render import Renderer

    renderer = Renderer(tokenizer)
    return [renderer.prompt_ids(c) for c in conversations]


def reference(
    model: Any, tokenizer: Any, conversations: list[list[dict[str, str]]], max_new_tokens: int, dtype: str
) -> Reference:
    """Run the run's own model on the probes once; every export is compared with this."""
    from tuneloop.data.formats import RowError
    from tuneloop.errors import UserError
    from tuneloop.generate import stop_token_ids

    try:
        prompts = prompt_ids(tokenizer, conversations)
    except RowError as e:
        raise UserError(f"cannot render the probe prompts with the run's tokenizer: {e}") from None
    four_bit = any(p.__class__.__name__ == "Params4bit" for p in model.parameters())
    dtype = "float32" if four_bit else dtype
    model = _cast(model, dtype)
    stops = stop_token_ids(model, tokenizer)
    return Reference(
        prompts,
        [_logits(model, p) for p in prompts],
        [_greedy(model, p, stops, max_new_tokens) for p in prompts],
        stops,
        (tokenizer.bos_token_id, tokenizer.eos_token_id),
        dtype,
    )


def _cast(model: Any, dtype: str) -> Any:
    import torch

    return model.to(getattr(torch, dtype))


def measure(
    name: str,
    model: Any,
    tokenizer: Any,
    ref: Reference,
    conversations: list[list[dict[str, str]]],
    chat_template: str | None,
    limits: tuple[float, float, bool],
    max_new_tokens: int,
) -> Check:
    """Compare one loaded export with the reference; `limits` is (max |Δlogit|, min top-1 share, exact generation)."""
    import torch

    from tuneloop.data.formats import RowError

    model = _cast(model, ref.dtype)
    try:
        ids = prompt_ids(tokenizer, conversations)
    except RowError:  # e.g. an exported tokenizer that lost its EOS token or chat template
        ids = None
    tokens_identical = ids == ref.prompts and ref.special_ids == (tokenizer.bos_token_id, tokenizer.eos_token_id)
    worst, agree, positions = 0.0, 0, 0
    for prompt, expected in zip(ref.prompts, ref.logits, strict=True):
        got = _logits(model, prompt)
        worst = max(worst, float((got - expected).abs().max()))
        agree += int((got.argmax(-1) == expected.argmax(-1)).sum())
        positions += expected.shape[0]
        if not torch.isfinite(got).all():
            worst = float("inf")
    divergence: list[int | None] = []
    for prompt, expected in zip(ref.prompts, ref.generations, strict=True):
        got = _greedy(model, prompt, ref.stops, max_new_tokens)
        divergence.append(_first_difference(got, expected))
    check = Check(
        format=name,
        probes=len(ref.prompts),
        positions=positions,
        max_abs_diff=worst,
        top1_agreement=agree / max(positions, 1),
        generation_matches=sum(d is None for d in divergence),
        first_divergence=divergence,
        tokens_identical=tokens_identical,
        chat_template_identical=tokenizer.chat_template == chat_template,
        limit_max_abs_diff=limits[0],
        limit_top1=limits[1],
        exact_generation_required=limits[2],
    )
    return check.judge()


def _logits(model: Any, ids: list[int]) -> Any:
    import torch

    with torch.inference_mode():
        out = model(input_ids=torch.tensor([ids], device=model.device), use_cache=False).logits[0]
    return out.double().cpu()


def _greedy(model: Any, ids: list[int], stops: list[int], max_new_tokens: int) -> list[int]:
    import torch

    with torch.inference_mode():
        out = model.generate(
            input_ids=torch.tensor([ids], device=model.device),
            attention_mask=torch.ones(1, len(ids), dtype=torch.long, device=model.device),
            max_new_tokens=max_new_tokens,
            do_sample=False,
            temperature=None,
            top_p=None,
            top_k=None,
            eos_token_id=stops,
            pad_token_id=stops[0] if stops else None,
        )
    return out[0, len(ids) :].tolist()


def _first_difference(a: list[int], b: list[int]) -> int | None:
    for i, (x, y) in enumerate(zip(a, b, strict=False)):
        if x != y:
            return i
    return None if len(a) == len(b) else min(len(a), len(b))


def to_json(checks: list[Check]) -> list[dict[str, Any]]:
    return [asdict(c) for c in checks]
