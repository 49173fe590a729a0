"""Render an example through the model's chat template into token ids and per-token loss weights.

This is the only place that decides which tokens are trained. `tuneloop data inspect`, the data
report's length accounting, training and evaluation all call it, so what you inspect is what the
trainer optimises, and train/serve template skew cannot happen by construction.

The mask is computed for any chat template, without `{% generation %}` tags: the conversation is
rendered up to each assistant turn with and without that turn, and the text in between is the
assistant's part. Tokens whose characters fall in that part are trained with the message's
weight, up to and including the end-of-turn (EOS) token; the template's trailing newline is not.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from tuneloop.data.formats import Example, RowError


@dataclass
class Rendered:
    """One example as the model sees it."""

    input_ids: list[int]
    weights: list[float]  # per token; 0 means the token is context, not trained
    text: str = ""
    offsets: list[tuple[int, int]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def trained_tokens(self) -> int:
        return sum(1 for w in self.weights if w > 0)

    def labels(self) -> list[int]:
        """Causal-LM labels: the token id where trained, -100 (ignored) elsewhere."""
        return [t if w > 0 else -100 for t, w in zip(self.input_ids, self.weights, strict=True)]


class Renderer:
    """Renders examples for one tokenizer; checks the template once, then renders in batches."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self.eos = tokenizer.eos_token
        if self.eos is None:
            raise RowError("the tokenizer has no EOS token, so the model cannot learn to stop", systemic=True)
        self.specials = [t for t in tokenizer.all_special_tokens if t] + [
            str(t) for t in getattr(tokenizer, "added_tokens_decoder", {}).values() if getattr(t, "special", False)
        ]
        self.specials = sorted(set(self.specials), key=len, reverse=True)
        bos = tokenizer.bos_token_id
        probe = tokenizer("a").input_ids
        # Add BOS only where the tokenizer itself would, and never twice (see `_bos`).
        self.add_bos = bos is not None and len(probe) > 0 and probe[0] == bos
        self._cache: dict[tuple[int, int, bool], str] = {}

    # -- text and trained character spans ----------------------------------------------------

    def spans(self, example: Example) -> tuple[str, list[tuple[int, int, float]], list[str]]:
        """(full text, trained character spans with weights, warnings) for one example."""
        if example.kind == "text":
            text = example.text + self.eos
            return text, [(0, len(text), 1.0)], []
        return self._chat_spans(self._conversation(example))

    def _conversation(self, example: Example) -> list[dict[str, Any]]:
        """The messages to render for a template-rendered example, checked for special tokens."""
        if example.kind == "chat":
            messages = example.messages
        elif example.kind in ("preference", "ranked"):
            # Length accounting uses the longest completion; the preference trainer renders each pair itself.
            answers = [example.chosen, example.rejected] if example.kind == "preference" else example.responses
            longest = max(answers or [""], key=len)
            messages = [*example.messages, {"role": "assistant", "content": longest}]
        else:
            raise RowError(f"examples of kind {example.kind} are not rendered through a chat template", systemic=True)
        if self.tokenizer.chat_template is None:
            no_template = "the model's tokenizer has no chat template; pick an instruct model or set one"
            raise RowError(no_template, systemic=True)
        self._check_specials(messages)
        return messages

    def _prerender(self, conversations: list[list[dict[str, Any]]]) -> None:
        """Render every prefix `_chat_spans` will ask for in two batched calls (a third faster than one by one)."""
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

    def _chat_spans(self, messages: list[dict[str, Any]]) -> tuple[str, list[tuple[int, int, float]], list[str]]:
        full = self._template(messages, len(messages), False)
        spans, warnings = [], []
        for i, m in enumerate(messages):
            if m["role"] != "assistant":
                continue
            weight = m.get("weight", 1.0)
            before = self._template(messages, i, True)
            upto = full if i == len(messages) - 1 else self._template(messages, i + 1, False)
            if not (full.startswith(upto) and upto.startswith(before)):
                raise RowError(
                    f"the chat template renders turn {i + 1} differently depending on what follows, so the "
                    "assistant part cannot be located; use a template that renders history unchanged"
                )
            start, end = len(before), len(upto)
            stop = upto.rfind(self.eos, start, end)
            if stop >= 0:
                end = stop + len(self.eos)  # train the end-of-turn token, not the newline after it
            else:
                warnings.append(
                    f"the template does not end assistant turns with {self.eos}; the model won't learn to stop"
                )
            if weight > 0:
                spans.append((start, end, float(weight)))
        return full, spans, warnings

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
        prepared: list[Any] = []
        try:
            for ex, conv in zip(examples, conversations, strict=True):
                if isinstance(conv, RowError):
                    prepared.append(conv)
                    continue
                try:
                    prepared.append(self.spans(ex) if conv is None else self._chat_spans(conv))
                except RowError as e:
                    prepared.append(e)
        finally:
            self._cache.clear()
        texts = [p[0] for p in prepared if not isinstance(p, RowError)]
        try:
            encoded = self.tokenizer(texts, add_special_tokens=False, return_offsets_mapping=True) if texts else None
        except Exception as e:  # the tokenizer itself is broken (or slow, without offsets): no row can fix that
            failed = RowError(f"the tokenizer failed: {type(e).__name__}: {e}", systemic=True)
            return [p if isinstance(p, RowError) else failed for p in prepared]
        out: list[Rendered | RowError] = []
        k = 0
        for p in prepared:
            if isinstance(p, RowError):
                out.append(p)
                continue
            text, spans, warnings = p
            ids, offsets = encoded["input_ids"][k], encoded["offset_mapping"][k]
            k += 1
            out.append(self._weigh(text, list(ids), [tuple(o) for o in offsets], spans, warnings))
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
        same template, same tokenization, same single BOS.
        """
        self._check_specials(messages)
        text = self._template(messages, len(messages), True)
        ids = self.tokenizer(text, add_special_tokens=False).input_ids
        return self._bos(list(ids), [0.0] * len(ids), [(0, 0)] * len(ids))[0]

    def _weigh(
        self,
        text: str,
        ids: list[int],
        offsets: list[tuple[int, int]],
        spans: list[tuple[int, int, float]],
        warnings: list[str],
    ) -> Rendered:
        weights = [0.0] * len(ids)
        s = 0
        for t, (start, end) in enumerate(offsets):
            while s < len(spans) and start >= spans[s][1]:
                s += 1
            if s == len(spans):
                break
            if end > start and start >= spans[s][0]:
                weights[t] = spans[s][2]
        ids, weights, offsets = self._bos(ids, weights, offsets)
        return Rendered(ids, weights, text, offsets, warnings)

    def _bos(self, ids: list[int], weights: list[float], offsets: list[tuple[int, int]]):
        """Exactly one BOS: prepend it where the tokenizer expects one and the template did not write it."""
        bos = self.tokenizer.bos_token_id
        if self.add_bos and (not ids or ids[0] != bos):
            return [bos, *ids], [0.0, *weights], [(0, 0), *offsets]
        return ids, weights, offsets


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
