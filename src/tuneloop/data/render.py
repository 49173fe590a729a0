"""Render an example through the model's chat template into token ids and per-token loss weights.

This is the only place that decides which tokens are trained. `tuneloop data inspect`, the data
report's length accounting, training, evaluation and serving all call it, so what you inspect is
what the trainer optimises, and train/serve template skew cannot happen by construction.

The mask is computed for any chat template, without `{% generation %}` tags: the conversation is
rendered up to each assistant turn with and without that turn, and the text in between is the
assistant's part. It is trained with the message's weight, up to and including the template's
end-of-turn token (or EOS); the template's trailing newline is not.

The text is tokenized piece by piece, cut where each assistant part starts and ends, and the
pieces' ids are concatenated. The prompt a model is given at inference (`prompt_ids`) is cut at
the same places, so its ids are an exact prefix of the training ids even where a tokenizer would
merge characters across the boundary if it saw the whole text at once.

A model without a chat template (a base model, with no `model.chat_template`) still trains on
prompt/completion rows whose prompt is plain text, the way TRL treats non-conversational data:
`prompt + completion + EOS`, the loss on the completion and EOS. Prompt and completion are
tokenized separately here, so the prompt's ids are exactly what evaluation and serving send.
Chat rows on such a model are refused with a message to set `model.chat_template`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from tuneloop.data.chat_templates import choices, find_end_of_turn, special_tokens
from tuneloop.data.formats import Example, RowError, check_distinct

# What trains each non-SFT kind; `tuneloop train` (supervised fine-tuning) refuses them with this.
TRAINED_BY = {
    "preference": "preference tuning: task.type preference with method.name dpo, ipo, simpo, orpo or kto, or reward "
    "for a reward model",
    "ranked": "preference tuning (each ranking becomes its better-worse pairs): task.type preference with method.name "
    "dpo, ipo, simpo, orpo or kto, or reward",
    "unpaired": "preference tuning from rated answers: task.type preference with method.name kto",
    "classification": "a classifier (task.type: classification, with an encoder such as minilm-l6)",
}
NO_TEMPLATE = (
    "the model's tokenizer has no chat template, so a conversation cannot be rendered; set model.chat_template "
    f"to {choices()} (prompt/completion rows with a plain-text prompt train without one)"
)

# An encoder's tokenizer (BERT's) has no EOS: a classification project measures its texts without one
# (`need_eos=False`), and only a row that must be rendered as a conversation meets this.
NO_EOS = RowError("the tokenizer has no EOS token, so the model cannot learn to stop", systemic=True)

Segments = list[tuple[str, float]]  # text pieces, each tokenized on its own, with the weight of its tokens


@dataclass
class Rendered:
    """One example as the model sees it."""

    input_ids: list[int]
    weights: list[float]  # per token; 0 means the token is context, not trained
    text: str = ""
    warnings: list[str] = field(default_factory=list)

    @property
    def trained_tokens(self) -> int:
        return sum(1 for w in self.weights if w > 0)

    def labels(self) -> list[int]:
        """Causal-LM labels: the token id where trained, -100 (ignored) elsewhere."""
        return [t if w > 0 else -100 for t, w in zip(self.input_ids, self.weights, strict=True)]


class Renderer:
    """Renders examples for one tokenizer; checks the template once, then renders in batches.

    `lengths_only=True` (the data report's length accounting) renders a preference pair or ranked
    responses with its longest answer, to measure the longest sequence a preference trainer will
    see. Otherwise those kinds are refused: supervised fine-tuning must never train on them.
    """

    def __init__(self, tokenizer: Any, *, lengths_only: bool = False, need_eos: bool = True) -> None:
        self.tokenizer = tokenizer
        self.eos = tokenizer.eos_token
        if self.eos is None and need_eos:
            raise NO_EOS
        self.specials = special_tokens(tokenizer)
        self.template = getattr(tokenizer, "chat_template", None)
        self.lengths_only = lengths_only
        # The token that closes an assistant turn: what is trained last and what generation stops on.
        self.end_of_turn = (find_end_of_turn(tokenizer) if self.template else None) or self.eos
        bos = tokenizer.bos_token_id
        probe = tokenizer("a").input_ids
        # Add BOS only where the tokenizer itself would, and never twice (see `_bos`).
        self.add_bos = bos is not None and len(probe) > 0 and probe[0] == bos
        self._cache: dict[tuple[int, int, bool], str] = {}

    @property
    def end_of_turn_id(self) -> int | None:
        """The id of the end-of-turn token, when it is one token."""
        ids = self.tokenizer(self.end_of_turn, add_special_tokens=False).input_ids
        return ids[0] if len(ids) == 1 else None

    # -- text pieces and their weights ---------------------------------------------------------

    def segments(self, example: Example) -> tuple[Segments, list[str]]:
        """(text pieces with the weight of their tokens, warnings) for one example."""
        if self.eos is None:
            raise NO_EOS
        if example.kind == "text":
            return [(example.text + self.eos, 1.0)], []
        conversation = self._conversation(example)
        if conversation is None:
            return self._plain_segments(example.messages), []
        return self._chat_segments(conversation)

    def _conversation(self, example: Example) -> list[dict[str, Any]] | None:
        """The messages to render through the template, checked; None for a plain prompt + completion."""
        if self.eos is None:
            raise NO_EOS
        if example.kind == "chat":
            messages = example.messages
        elif example.kind in ("preference", "ranked") and self.lengths_only:
            # Length accounting only: the longest answer bounds what a preference trainer will see.
            check_distinct(example)  # cleaning or redaction may have made two answers equal
            answers = [example.chosen, example.rejected] if example.kind == "preference" else example.responses
            longest = max(answers or [""], key=len)
            messages = [*example.messages, {"role": "assistant", "content": longest}]
        elif example.kind == "unpaired" and self.lengths_only:
            messages = [*example.messages, {"role": "assistant", "content": example.completion or ""}]
        elif example.kind in TRAINED_BY:
            raise RowError(
                f"{example.kind} examples are not trained by supervised fine-tuning: {TRAINED_BY[example.kind]}",
                systemic=True,
            )
        else:
            raise RowError(f"examples of kind {example.kind} are not rendered through a chat template", systemic=True)
        self._check_specials(messages)
        if self.template is None:
            if example.plain and example.kind == "chat":
                return None
            raise RowError(NO_TEMPLATE, systemic=True)
        return messages

    def _plain_segments(self, messages: list[dict[str, Any]]) -> Segments:
        prompt, answer = messages
        return [(prompt["content"], 0.0), (answer["content"] + self.eos, float(answer.get("weight", 1.0)))]

    def _prerender(self, conversations: list[list[dict[str, Any]]]) -> None:
        """Render every prefix `_cut` will ask for in two batched calls (a third faster than one by one)."""
        wanted: dict[bool, list[tuple[list[dict[str, Any]], int]]] = {False: [], True: []}
        for conv in conversations:
            wanted[False].append((conv, len(conv)))
            for i, m in enumerate(conv):
                if m["role"] == "assistant":
                    wanted[True].append((conv, i))
                    if i < len(conv) - 1:
                        wanted[False].append((conv, i + 1))
        for generation_prompt, items in wanted.items():
            if not items:
                continue
            plain = [[{"role": m["role"], "content": m["content"]} for m in conv[:n]] for conv, n in items]
            try:
                texts = self.tokenizer.apply_chat_template(
                    plain, tokenize=False, add_generation_prompt=generation_prompt
                )
            except Exception:
                continue  # left uncached: rendering one by one attributes the error to its own row
            for (conv, n), text in zip(items, texts, strict=True):
                self._cache[(id(conv), n, generation_prompt)] = text

    def _template(self, conv: list[dict[str, Any]], n: int, generation_prompt: bool) -> str:
        cached = self._cache.get((id(conv), n, generation_prompt))
        if cached is not None:
            return cached
        plain = [{"role": m["role"], "content": m["content"]} for m in conv[:n]]
        try:
            return self.tokenizer.apply_chat_template(plain, tokenize=False, add_generation_prompt=generation_prompt)
        except Exception as e:  # a template may raise on structures it does not support
            raise RowError(f"the chat template rejected this conversation: {e}") from None

    def _chat_segments(self, messages: list[dict[str, Any]]) -> tuple[Segments, list[str]]:
        """The full rendering cut where each assistant part starts and ends, with each part's weight."""
        full = self._template(messages, len(messages), False)
        segments, warnings, pos = self._cut(messages, full, whole=True)
        segments.append((full[pos:], 0.0))
        return [(text, w) for text, w in segments if text], warnings

    def _cut(self, messages: list[dict[str, Any]], full: str, whole: bool) -> tuple[Segments, list[str], int]:
        """Pieces of `full` up to the end of its last assistant part, and where that end is.

        `full` renders `messages` (`whole`), or renders them with the generation prompt (a prompt).
        The cut points depend only on the turns before each assistant part, so a prompt and the
        training text of the same conversation are cut identically.
        """
        segments: Segments = []
        warnings: list[str] = []
        pos = 0
        for i, m in enumerate(messages):
            if m["role"] != "assistant":
                continue
            last = whole and i == len(messages) - 1
            before = self._template(messages, i, True)
            upto = full if last else self._template(messages, i + 1, False)
            if not (full.startswith(upto) and upto.startswith(before)) or len(before) < pos:
                raise RowError(
                    f"the chat template renders turn {i + 1} differently depending on what follows, so the "
                    "assistant part cannot be located; use a template that renders history unchanged"
                )
            start, end = len(before), len(upto)
            stop, token = upto.rfind(self.end_of_turn, start, end), self.end_of_turn
            if stop < 0 and self.eos != self.end_of_turn:
                stop, token = upto.rfind(self.eos, start, end), self.eos
            if stop >= 0:
                end = stop + len(token)  # train the end-of-turn token, not the newline after it
            else:
                warnings.append(
                    f"the template does not end assistant turns with {self.end_of_turn}; the model won't learn to stop"
                )
            segments += [(full[pos:start], 0.0), (full[start:end], float(m.get("weight", 1.0)))]
            pos = end
        return segments, warnings, pos

    def _check_specials(self, messages: list[dict[str, Any]]) -> None:
        # Special-token strings inside content are parsed as real control tokens: a user message
        # containing "<|im_end|>" would forge a turn boundary. Refuse rather than train on it.
        for i, m in enumerate(messages, 1):
            content = m["content"]
            if "<" in content or "[" in content:
                for token in self.specials:
                    if token in content:
                        raise RowError(f"message {i} contains the special token {token} in its text")

    # -- tokens --------------------------------------------------------------------------------

    def render_many(self, examples: Sequence[Example]) -> list[Rendered | RowError]:
        """Render a batch (one fast-tokenizer call); each item is a Rendered or the RowError it raised."""
        conversations: list[Any] = []
        for ex in examples:
            try:
                conversations.append(None if ex.kind == "text" else self._conversation(ex))
            except RowError as e:
                conversations.append(e)
        self._prerender([c for c in conversations if isinstance(c, list)])
        prepared: list[tuple[Segments, list[str]] | RowError] = []
        try:
            for ex, conv in zip(examples, conversations, strict=True):
                if isinstance(conv, RowError):
                    prepared.append(conv)
                    continue
                try:
                    prepared.append(self._chat_segments(conv) if isinstance(conv, list) else self.segments(ex))
                except RowError as e:
                    prepared.append(e)
        finally:
            self._cache.clear()
        pieces = [text for p in prepared if not isinstance(p, RowError) for text, _ in p[0]]
        try:
            encoded = iter(self.tokenizer(pieces, add_special_tokens=False).input_ids if pieces else [])
        except Exception as e:  # the tokenizer itself is broken: no row can fix that
            failed = RowError(f"the tokenizer failed: {type(e).__name__}: {e}", systemic=True)
            return [p if isinstance(p, RowError) else failed for p in prepared]
        out: list[Rendered | RowError] = []
        for p in prepared:
            if isinstance(p, RowError):
                out.append(p)
                continue
            segments, warnings = p
            ids: list[int] = []
            weights: list[float] = []
            for _, weight in segments:
                piece = next(encoded)
                ids += piece
                weights += [weight] * len(piece)
            ids, weights = self._bos(ids, weights)
            out.append(Rendered(ids, weights, "".join(text for text, _ in segments), warnings))
        return out

    def render(self, example: Example) -> Rendered:
        """Render one example; raises RowError when it cannot be rendered."""
        result = self.render_many([example])[0]
        if isinstance(result, RowError):
            raise result
        return result

    def prompt_ids(self, messages: list[dict[str, Any]]) -> list[int]:
        """Token ids of a conversation followed by the assistant's generation prompt.

        Evaluation and serving call this, so a model is asked exactly the way it was trained:
        same template, same cut points, same tokenization, same single BOS. On a model without a
        chat template, a single user message is the plain-text prompt of a prompt/completion row.
        Raises RowError when the conversation cannot be rendered.
        """
        self._check_specials(messages)
        if self.template is None:
            if len(messages) != 1 or messages[0]["role"] != "user":
                raise RowError(NO_TEMPLATE)
            pieces = [messages[0]["content"]]
        else:
            try:
                text = self._template(messages, len(messages), True)
                segments, _, pos = self._cut(messages, text, whole=False)
            finally:
                self._cache.clear()
            pieces = [t for t, _ in segments if t] + ([text[pos:]] if text[pos:] else [])
        ids = [t for piece in self.tokenizer(pieces, add_special_tokens=False).input_ids for t in piece]
        return self._bos(ids, [0.0] * len(ids))[0]

    def _bos(self, ids: list[int], weights: list[float]) -> tuple[list[int], list[float]]:
        """Exactly one BOS: prepend it where the tokenizer expects one and the template did not write it."""
        bos = self.tokenizer.bos_token_id
        if self.add_bos and (not ids or ids[0] != bos):
            return [bos, *ids], [0.0, *weights]
        return ids, weights


def mark_trained(rendered: Rendered, tokenizer: Any, open_mark: str = "[[", close_mark: str = "]]") -> str:
    """Plain-text view of a rendered example: trained tokens wrapped in [[...]] (for pipes and tests)."""
    pieces, inside = [], False
    for token_id, weight in zip(rendered.input_ids, rendered.weights, strict=True):
        trained = weight > 0
        if trained != inside:
            pieces.append(open_mark if trained else close_mark)
            inside = trained
        pieces.append(tokenizer.decode([token_id]))
    if inside:
        pieces.append(close_mark)
    return "".join(pieces)
