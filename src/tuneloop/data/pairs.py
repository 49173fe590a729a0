"""Preference data as token pairs: rankings expanded into chosen/rejected pairs, each rendered by THE renderer.

A `preference` record is one pair. A `ranked` record (`responses` ordered best first by `ranking`)
becomes every better-worse pair of its ranking: K responses give K(K-1)/2 pairs, the comparisons
a reward model learns from in InstructGPT's recipe. Adjacent pairs alone would throw away what the
ranking says about non-neighbours (that the best beats the worst by more).

A pair renders as two conversations, its prompt followed by each answer, through the same
`Renderer` supervised fine-tuning uses: the answer is weighted exactly as SFT weights an assistant
answer (its tokens and the template's end-of-turn token), the prompt is context, and an earlier
assistant turn inside the prompt is context too. So the prompt a preference-tuned model is asked at
evaluation and serving is an exact token prefix of what it was trained on.

KTO learns from unpaired feedback instead: one answer per record, rated desirable or undesirable
(an `unpaired` record). `unpaired_of` reads those as they are and turns each pair of preference or
ranked data into one desirable and one undesirable answer, as TRL's `unpair_preference_dataset` does;
`render_unpaired` renders each answer exactly as a pair's answer is rendered.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, TypedDict

from tuneloop.data.formats import Example, RowError


@dataclass
class Pair:
    """One comparison: `chosen` is preferred to `rejected` as a reply to `prompt` (messages ending with a user turn)."""

    id: str  # the record's file:line; a ranking's pairs add "#better>worse" (response indexes)
    prompt: list[dict[str, Any]]
    chosen: str
    rejected: str


@dataclass
class Rated:
    """One answer to `prompt` with a person's verdict: `desirable` (thumbs up) or not (thumbs down)."""

    id: str  # the record's file:line; one from a pair adds "+" (its chosen side) or "-" (its rejected side)
    prompt: list[dict[str, Any]]
    completion: str
    desirable: bool


class RatedTokens(TypedDict):
    """A rendered rated answer, in the columns TRL's KTOTrainer reads (`prompt_ids`, `completion_ids`, `label`)."""

    id: str
    prompt_ids: list[int]
    completion_ids: list[int]
    label: bool


class PairTokens(TypedDict):
    """A rendered pair, in the columns TRL's preference trainers read (`prompt_ids` + each answer's ids)."""

    id: str
    prompt_ids: list[int]
    chosen_ids: list[int]
    rejected_ids: list[int]


def pairs_of(examples: Iterable[Example]) -> list[Pair]:
    """Every comparison the examples state: a preference record's pair, every better-worse pair of a ranking."""
    pairs: list[Pair] = []
    for ex in examples:
        if ex.kind == "preference":
            pairs.append(Pair(ex.id, ex.messages, ex.chosen or "", ex.rejected or ""))
        elif ex.kind == "ranked":
            order, texts = ex.ranking or [], ex.responses or []
            for a, better in enumerate(order):
                for worse in order[a + 1 :]:
                    pairs.append(Pair(f"{ex.id}#{better}>{worse}", ex.messages, texts[better], texts[worse]))
        else:
            raise ValueError(f"{ex.id}: a {ex.kind} example holds no preference")
    return pairs


def rated_of(examples: Iterable[Example]) -> list[Rated]:
    """Every rated answer the examples state: an unpaired record's, and both sides of every pair (see `pairs_of`)."""
    rated: list[Rated] = []
    for ex in examples:
        if ex.kind == "unpaired":
            rated.append(Rated(ex.id, ex.messages, ex.completion or "", bool(ex.desirable)))
        else:
            for pair in pairs_of([ex]):
                rated.append(Rated(f"{pair.id}+", pair.prompt, pair.chosen, True))
                rated.append(Rated(f"{pair.id}-", pair.prompt, pair.rejected, False))
    return rated


def conversation(prompt: list[dict[str, Any]], answer: str) -> Example:
    """The chat example SFT would train for `prompt` + `answer`: only the answer is trained.

    An assistant turn inside the prompt is history the answer replies to, so it gets weight 0. A
    single-message prompt is marked `plain`, so a model without a chat template renders it the way it
    renders prompt/completion text (prompt + answer + EOS), as TRL treats non-conversational pairs.
    """
    history = [{**m, "weight": 0.0} if m["role"] == "assistant" else dict(m) for m in prompt]
    plain = True if len(prompt) == 1 and prompt[0]["role"] == "user" else None
    return Example("", "chat", messages=[*history, {"role": "assistant", "content": answer}], plain=plain)


def split_answer(input_ids: list[int], weights: list[float]) -> tuple[list[int], list[int]]:
    """(prompt ids, answer ids) of a rendered conversation whose last assistant turn is the only trained part.

    The answer is the trained span (through the end-of-turn token); what the template writes after it
    (a newline) is neither trained nor needed, since no trained token attends to it.
    """
    trained = [i for i, w in enumerate(weights) if w > 0]
    if not trained:
        raise RowError("the answer has no trained token after rendering")
    start, end = trained[0], trained[-1] + 1
    if len(trained) != end - start:
        raise RowError("the rendered answer is not one contiguous span of trained tokens")
    return input_ids[:start], input_ids[start:end]


def render_pairs(renderer: Any, pairs: Sequence[Pair]) -> list[PairTokens | RowError]:
    """Each pair's prompt and answers as token ids, or the RowError that stops it."""
    conversations = [conversation(p.prompt, answer) for p in pairs for answer in (p.chosen, p.rejected)]
    rendered = renderer.render_many(conversations)
    out: list[PairTokens | RowError] = []
    for n, pair in enumerate(pairs):
        good, bad = rendered[2 * n], rendered[2 * n + 1]
        failed = next((r for r in (good, bad) if isinstance(r, RowError)), None)
        if failed is not None:
            out.append(failed)
            continue
        try:
            prompt_ids, chosen_ids = split_answer(good.input_ids, good.weights)
            other_prompt, rejected_ids = split_answer(bad.input_ids, bad.weights)
        except RowError as e:
            out.append(e)
            continue
        if other_prompt != prompt_ids:  # the renderer cuts at the turn start, so this would be a template bug
            out.append(RowError("the prompt renders to different tokens before the chosen and the rejected answer"))
        elif chosen_ids == rejected_ids:
            out.append(RowError("chosen and rejected render to the same tokens, so the pair prefers nothing"))
        else:
            out.append(PairTokens(id=pair.id, prompt_ids=prompt_ids, chosen_ids=chosen_ids, rejected_ids=rejected_ids))
    return out


def render_rated(renderer: Any, rated: Sequence[Rated]) -> list[RatedTokens | RowError]:
    """Each rated answer's prompt and answer as token ids (the answer trained as SFT trains it), or its RowError."""
    out: list[RatedTokens | RowError] = []
    rendered = renderer.render_many([conversation(r.prompt, r.completion) for r in rated])
    for item, result in zip(rated, rendered, strict=True):
        if isinstance(result, RowError):
            out.append(result)
            continue
        try:
            prompt_ids, completion_ids = split_answer(result.input_ids, result.weights)
        except RowError as e:
            out.append(e)
            continue
        out.append(RatedTokens(id=item.id, prompt_ids=prompt_ids, completion_ids=completion_ids, label=item.desirable))
    return out


def score_ids(renderer: Any, prompt: list[dict[str, Any]], answer: str) -> list[int]:
    """The token ids a reward model scores for `answer` to `prompt`: the prompt and the answer, as trained."""
    result = renderer.render(conversation(prompt, answer))
    prompt_ids, answer_ids = split_answer(result.input_ids, result.weights)
    return prompt_ids + answer_ids
