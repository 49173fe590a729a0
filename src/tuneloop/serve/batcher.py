"""The generation worker: requests that arrive together are decoded together.

One thread owns the model. HTTP handlers submit `Row`s (one per choice of a request) to a queue;
the worker waits a short window for more to arrive, takes up to `max_batch` rows that use the same
adapter (oldest first), left-pads their prompts and runs its own decode loop with the KV cache:

  prefill   one forward over the padded prompts (position ids count real tokens only, the mask
            hides the padding), so each row computes exactly what it would alone;
  decode    one forward per step over the newest token of every live row; each row samples with
            its own temperature, top_p and seeded torch.Generator, and stops on its own end-of-turn
            token, stop string, max_tokens or cancellation. A finished row leaves the batch (its
            KV cache rows are dropped), so the others do not pay for it.

Each row streams its new text to its request through `Row.emit`, which the server points at the
request's asyncio queue (loop.call_soon_threadsafe). Admin work that changes the model (loading an
adapter) runs on the same thread between batches, through `Batcher.call`.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import inspect
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any, TypeVar

from tuneloop.traffic import FinishReason

log = logging.getLogger("tuneloop.serve")
T = TypeVar("T")
MIN_TEMPERATURE = 1e-5  # below it sampling is greedy (OpenAI: temperature 0 is greedy)


@dataclass(frozen=True)
class Sampling:
    """One row's decoding settings (OpenAI semantics: temperature 0 is greedy)."""

    temperature: float
    top_p: float
    max_tokens: int
    stop: tuple[str, ...]
    seed: int


@dataclass
class Event:
    """What a row tells its request: new text, and on its last event why it finished."""

    index: int  # the choice index within the request
    text: str
    tokens: int  # tokens generated so far (on the last event: the completion's token count)
    finish_reason: FinishReason | None = None
    error: str | None = None


class TextStream:
    """Detokenizes a growing list of ids and releases text that can no longer be part of a stop string.

    Each token is decoded in a short window of the tokens before it (the incremental detokenizing
    of TGI and vLLM), so a step costs the same at token 1,000 as at token 1, and a character split
    across tokens comes out whole. Text is held back while it could be the start of a stop string,
    and a stop string cuts the output before it: OpenAI clients never see the stop text.
    """

    def __init__(self, tokenizer: Any, stop: Sequence[str]) -> None:
        self.tokenizer = tokenizer
        self.stop = list(stop)
        self.ids: list[int] = []
        self.text = ""  # everything decoded so far (cut at a stop string once one is found)
        self.sent = 0  # characters already released
        self.stopped = False  # a stop string was found; the text ends before it
        self._window = 0  # decoding starts here, a few tokens back, so spacing and merges come out right
        self._read = 0  # tokens up to here are in self.text

    def add(self, token: int) -> tuple[str, bool]:
        """Append a token; return (text to release now, whether a stop string was reached)."""
        self.ids.append(token)
        if self.stopped:
            return "", True
        self.text += self._decoded()
        text = self.text
        cut = min((i for i in (text.find(s, max(0, self.sent - len(s))) for s in self.stop) if i >= 0), default=-1)
        if cut >= 0:
            self.text, self.stopped = text[:cut], True
            return self._release(len(self.text)), True
        return self._release(len(text) - self._held(text)), False

    def flush(self) -> str:
        """The rest of the text, at the end of the row (a character left incomplete comes out as U+FFFD)."""
        if not self.stopped:
            self.text += self._decoded(final=True)
        return self._release(len(self.text))

    def _decoded(self, final: bool = False) -> str:
        """The text the tokens since the last call add; empty while the last character is incomplete."""
        decode = self.tokenizer.decode
        before = decode(self.ids[self._window : self._read], skip_special_tokens=True)
        after = decode(self.ids[self._window :], skip_special_tokens=True)
        if len(after) > len(before) and (final or not after.endswith("\ufffd")):
            self._window, self._read = self._read, len(self.ids)
            return after[len(before) :]
        return ""

    def _held(self, text: str) -> int:
        """Length of the longest tail of the unreleased text that starts some stop string."""
        pending = text[self.sent :]
        for k in range(min(len(pending), max((len(s) - 1 for s in self.stop), default=0)), 0, -1):
            if any(s.startswith(pending[-k:]) for s in self.stop):
                return k
        return 0

    def _release(self, end: int) -> str:
        out = self.text[self.sent : end] if end > self.sent else ""
        self.sent = max(self.sent, end)
        return out


@dataclass(eq=False)
class Row:
    """One choice of one request, as the worker decodes it."""

    index: int
    prompt: list[int]
    sampling: Sampling
    adapter: str | None  # the PEFT adapter to run with; None for the base weights
    stream: TextStream
    stop_ids: frozenset[int]  # end-of-turn tokens
    emit: Callable[[Event], None]
    cancelled: threading.Event = field(default_factory=threading.Event)
    generated: int = 0
    done: bool = False

    def advance(self, token: int) -> bool:
        """Take the token the model chose; emit what it adds. Return False once the row has finished."""
        if self.cancelled.is_set():
            return self.finish("cancelled")
        self.generated += 1
        if token in self.stop_ids:
            return self.finish("stop")
        text, stopped = self.stream.add(token)
        if stopped:
            return self.finish("stop", text)
        if self.generated >= self.sampling.max_tokens:
            return self.finish("length", text)
        if text:
            self.emit(Event(self.index, text, self.generated))
        return True

    def finish(self, reason: FinishReason, text: str = "", error: str | None = None) -> bool:
        if not self.done:
            self.done = True
            rest = "" if reason in ("cancelled", "error") else self.stream.flush()
            self.emit(Event(self.index, text + rest, self.generated, reason, error))
        return False


# -- sampling and the decode loop ------------------------------------------------------------------


def choose(logits: Any, rows: Sequence[Row], generators: Sequence[Any]) -> list[int]:
    """The next token of every row: argmax for temperature 0, else a top-p sample from its own generator."""
    import torch

    tokens = logits.argmax(-1).tolist()
    for j, row in enumerate(rows):
        s = row.sampling
        if s.temperature < MIN_TEMPERATURE:
            continue  # greedy; dividing by a vanishing temperature would overflow to inf
        probs = torch.softmax(logits[j].float() / s.temperature, dim=-1)
        if s.top_p < 1.0:
            ordered, order = probs.sort(descending=True)
            ordered = ordered * ((ordered.cumsum(0) - ordered) < s.top_p)  # keep the nucleus, at least one token
            tokens[j] = int(order[torch.multinomial(ordered, 1, generator=generators[j])])
        else:
            tokens[j] = int(torch.multinomial(probs, 1, generator=generators[j]))
    return tokens


def decode(model: Any, rows: list[Row], pad_id: int) -> None:
    """Generate every row to its end, in one left-padded batch with the KV cache."""
    import torch

    from tuneloop.generate import left_pad

    device = model.device
    input_ids, attention = left_pad([r.prompt for r in rows], pad_id)
    input_ids, attention = input_ids.to(device), attention.to(device)
    # Positions count real tokens only, so a padded row sees the same positions as it would alone.
    positions = (attention.cumsum(-1) - 1).clamp(min=0)
    generators = [torch.Generator(device=device).manual_seed(r.sampling.seed) for r in rows]
    accepts = _forward_parameters(model)
    extra = {"logits_to_keep": 1} if "logits_to_keep" in accepts else {}  # only the last position's logits
    cache_arg = "cache" if "cache" in accepts else "past_key_values"  # renamed in transformers 5.x
    live = list(rows)
    with torch.inference_mode():
        out = model(input_ids=input_ids, attention_mask=attention, position_ids=positions, use_cache=True, **extra)
        cache, positions = out[cache_arg], positions[:, -1:]
        while True:
            tokens = choose(out.logits[:, -1, :], live, generators)
            keep = [j for j, (row, token) in enumerate(zip(live, tokens, strict=True)) if row.advance(token)]
            if not keep:
                return
            if len(keep) < len(live):
                index = torch.tensor(keep, device=device)
                cache.batch_select_indices(index)
                attention, positions = attention[index], positions[index]
                live, generators, tokens = ([seq[j] for j in keep] for seq in (live, generators, tokens))
            attention = torch.cat([attention, attention.new_ones((len(live), 1))], dim=1)
            positions = positions + 1
            step = torch.tensor(tokens, device=device)[:, None]
            out = model(
                input_ids=step,
                attention_mask=attention,
                position_ids=positions,
                use_cache=True,
                **{cache_arg: cache},
                **extra,
            )


def _forward_parameters(model: Any) -> set[str]:
    """The keyword arguments the underlying model's forward takes (PEFT wrappers pass them through)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return set(inspect.signature(base.forward).parameters)


# -- the worker --------------------------------------------------------------------------------------


class Batcher:
    """A queue of rows and the one thread that decodes them in batches.

    `use(adapter)` is a context manager that yields the model with that adapter active (the
    adapter registry provides it); `pad_id` fills the left padding (masked, so any id works).
    """

    def __init__(
        self,
        use: Callable[[str | None], AbstractContextManager[Any]],
        pad_id: int,
        *,
        max_batch: int = 16,
        window: float = 0.01,
        on_batch: Callable[[int], None] | None = None,
    ) -> None:
        self.use, self.pad_id = use, pad_id
        self.max_batch, self.window = max_batch, window
        self.on_batch = on_batch
        self._rows: deque[Row] = deque()
        self._calls: deque[tuple[Callable[[], Any], concurrent.futures.Future]] = deque()
        self._cond = threading.Condition()
        self._stopping = False
        self._thread = threading.Thread(target=self._loop, name="tuneloop-generate", daemon=True)

    def start(self) -> Batcher:
        self._thread.start()
        return self

    def stop(self, timeout: float = 30.0) -> None:
        """Finish the batch in progress, cancel what is queued, and end the thread."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        self._thread.join(timeout)

    def submit(self, rows: Sequence[Row]) -> None:
        with self._cond:
            if self._stopping:
                for row in rows:
                    row.finish("cancelled")
                return
            self._rows.extend(rows)
            self._cond.notify_all()

    def call(self, fn: Callable[[], T]) -> concurrent.futures.Future[T]:
        """Run `fn` on the worker thread between batches (for changes to the model); a Future of its result."""
        future: concurrent.futures.Future[T] = concurrent.futures.Future()
        with self._cond:
            self._calls.append((fn, future))
            self._cond.notify_all()
        return future

    def depth(self) -> int:
        """Rows waiting for a batch."""
        return len(self._rows)

    def _loop(self) -> None:
        while True:
            with self._cond:
                while not (self._rows or self._calls or self._stopping):
                    self._cond.wait()
                if self._stopping:
                    break
                calls = list(self._calls)
                self._calls.clear()
            for fn, future in calls:
                if future.set_running_or_notify_cancel():
                    try:
                        future.set_result(fn())
                    except BaseException as e:  # handed to the caller, who reports it
                        future.set_exception(e)
            batch = self._take()
            if batch:
                self._run(batch)
        with self._cond:
            pending, self._rows = list(self._rows), deque()
        for row in pending:
            row.finish("cancelled")

    def _take(self) -> list[Row]:
        """Up to max_batch live rows with the oldest row's adapter, after waiting `window` for company."""
        deadline = time.monotonic() + self.window
        with self._cond:
            while len(self._rows) < self.max_batch and not self._stopping and not self._calls:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._cond.wait(left)
            for row in [r for r in self._rows if r.cancelled.is_set()]:
                self._rows.remove(row)
                row.finish("cancelled")
            if not self._rows:
                return []
            adapter = self._rows[0].adapter
            batch = [r for r in self._rows if r.adapter == adapter][: self.max_batch]
            for row in batch:
                self._rows.remove(row)
        return batch

    def _run(self, batch: list[Row]) -> None:
        if self.on_batch is not None:
            self.on_batch(len(batch))
        try:
            with self.use(batch[0].adapter) as model:
                decode(model, batch, self.pad_id)
        except Exception as e:  # one failed batch fails its requests, never the server
            log.exception("generation failed for a batch of %d rows", len(batch))
            for row in batch:
                row.finish("error", error=f"generation failed: {type(e).__name__}: {e}")


@contextlib.contextmanager
def plain(model: Any):
    """`use` for a model without adapters."""
    yield model
