"""Chat templates: the named ones for `model.chat_template`, and the one place a project's tokenizer gets its template.

`model.chat_template` takes one of these names or a path to a Jinja file. Each entry is the Jinja
template (Transformers' `apply_chat_template` syntax) plus the token that ends an assistant turn,
which is also the stop token a server or an Ollama Modelfile must use. The Jinja text follows the
model families' published templates, reduced to what tuneloop renders: system, user and assistant
messages with string content. A system message is folded into the first user turn for the families
whose templates have no system role (mistral, gemma), as their own templates do.

`project_tokenizer(cfg)` and `project_model(cfg)` load a project's tokenizer (and model) with that
setting applied. Prepare, inspect, train, eval and generate all load through them, so they render
identically; a trained run then carries the template in `final/` (the tokenizer saves it).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tuneloop.config import ProjectConfig


@dataclass(frozen=True)
class NamedTemplate:
    """A chat template by name: its Jinja source and the token that ends every assistant turn."""

    name: str
    jinja: str
    end_of_turn: str | None  # the text that closes an assistant turn (the stop string); None: the tokenizer's EOS
    markers: tuple[str, ...] = ()  # the other control tokens it writes (a tokenizer without them splits them up)


CHATML = NamedTemplate(
    "chatml",
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}",
    "<|im_end|>",
    ("<|im_start|>",),
)

LLAMA3 = NamedTemplate(
    "llama3",
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' + message['content'] | trim"
    " + '<|eot_id|>' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}",
    "<|eot_id|>",
    ("<|start_header_id|>", "<|end_header_id|>"),
)

MISTRAL = NamedTemplate(
    "mistral",
    "{{ bos_token }}"
    "{% if messages[0]['role'] == 'system' %}{% set system = messages[0]['content'] + '\\n\\n' %}"
    "{% set messages = messages[1:] %}{% else %}{% set system = '' %}{% endif %}"
    "{% for message in messages %}"
    "{% if message['role'] == 'user' %}"
    "{{ '[INST] ' + (system if loop.first else '') + message['content'] + ' [/INST]' }}"
    "{% elif message['role'] == 'assistant' %}{{ ' ' + message['content'] + eos_token }}"
    "{% endif %}"
    "{% endfor %}",
    None,
)

GEMMA = NamedTemplate(
    "gemma",
    "{{ bos_token }}"
    "{% if messages[0]['role'] == 'system' %}{% set system = messages[0]['content'] + '\\n\\n' %}"
    "{% set messages = messages[1:] %}{% else %}{% set system = '' %}{% endif %}"
    "{% for message in messages %}"
    "{% set role = 'model' if message['role'] == 'assistant' else message['role'] %}"
    "{{ '<start_of_turn>' + role + '\\n' + (system if loop.first else '') + message['content'] | trim"
    " + '<end_of_turn>\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<start_of_turn>model\\n' }}{% endif %}",
    "<end_of_turn>",
    ("<start_of_turn>",),
)

PHI3 = NamedTemplate(
    "phi3",
    "{% for message in messages %}"
    "{{ '<|' + message['role'] + '|>\\n' + message['content'] + '<|end|>\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\\n' }}{% endif %}",
    "<|end|>",
    ("<|user|>", "<|assistant|>"),
)

NAMED: dict[str, NamedTemplate] = {t.name: t for t in (CHATML, LLAMA3, MISTRAL, GEMMA, PHI3)}


def resolve(value: str, base_dir: Path | None = None) -> str:
    """The Jinja text for `model.chat_template`: a name from NAMED, or a path to a Jinja file.

    A relative path starts from `base_dir` (the config file's folder). Raises ValueError naming the
    choices when the value is neither.
    """
    if value in NAMED:
        return NAMED[value].jinja
    path = Path(value)
    if not path.is_absolute() and base_dir is not None:
        path = base_dir / path
    if path.is_file():
        return path.read_text(encoding="utf-8")
    raise ValueError(
        f"chat_template {value!r} is neither a named template ({', '.join(NAMED)}) nor an existing Jinja file"
    )


def name_of(jinja: str | None) -> str | None:
    """The name of a named template whose Jinja text equals `jinja` exactly, else None."""
    for t in NAMED.values():
        if jinja == t.jinja:
            return t.name
    return None


def choices() -> str:
    """The accepted values of model.chat_template, for error messages."""
    return f"one of {', '.join(NAMED)}, or a path to a Jinja file"


# --------------------------------------------------------------------------- the end of a turn


def special_tokens(tokenizer: Any) -> list[str]:
    """Every special or added-special token string of `tokenizer`, longest first."""
    found = [t for t in tokenizer.all_special_tokens if t] + [
        str(t) for t in getattr(tokenizer, "added_tokens_decoder", {}).values() if getattr(t, "special", False)
    ]
    return sorted(set(found), key=len, reverse=True)


_PROBE_ANSWER = "tuneloop probe answer"


def find_end_of_turn(tokenizer: Any) -> str | None:
    """The special token the chat template writes right after an assistant's answer, or None.

    Found by rendering a one-turn probe conversation: the first special token after the answer
    is what the model must learn to emit, and what generation stops on.
    """
    probe = [{"role": "user", "content": "tuneloop probe question"}, {"role": "assistant", "content": _PROBE_ANSWER}]
    try:
        text = tokenizer.apply_chat_template(probe, tokenize=False)
    except Exception:  # a template that refuses the probe has no end of turn we can name
        return None
    at = text.rfind(_PROBE_ANSWER)
    if at < 0:
        return None
    tail = text[at + len(_PROBE_ANSWER) :]
    hits = [(tail.find(t), -len(t), t) for t in special_tokens(tokenizer) if t in tail]
    return min(hits)[2] if hits else None


def is_one_token(tokenizer: Any, text: str) -> bool:
    """Whether `text` tokenizes to exactly one token (a control token the tokenizer knows)."""
    return len(tokenizer(text, add_special_tokens=False).input_ids) == 1


# --------------------------------------------------------------------------- a project's tokenizer


def configured_jinja(cfg: ProjectConfig) -> str | None:
    """The Jinja text `model.chat_template` names, or None when it is not set."""
    from tuneloop.errors import UserError

    if cfg.model.chat_template is None:
        return None
    try:
        return resolve(cfg.model.chat_template, cfg.root)
    except ValueError as e:
        raise UserError(f"model.{e} (a relative path starts at the config file's folder)") from None


def apply_configured(tokenizer: Any, cfg: ProjectConfig) -> Any:
    """Set `model.chat_template` on a tokenizer (the one place it is applied) and check the tokenizer can end a turn.

    With no setting the model's own template stays (or none: then prompt/completion rows train as
    plain text and chat rows are refused). A template whose end-of-turn token the tokenizer lacks is
    refused: the model could not learn a single token to stop on, and adding one would resize the
    embeddings with an untrained row.
    """
    from tuneloop.errors import UserError

    jinja = configured_jinja(cfg)
    if jinja is None:
        return tokenizer
    value = cfg.model.chat_template
    tokenizer.chat_template = jinja
    named = NAMED.get(value)
    if named is None:
        end = find_end_of_turn(tokenizer)
        if end is None:
            raise UserError(
                f"model.chat_template {value!r} does not end an assistant turn with one of this tokenizer's special "
                f"tokens, so the model could not learn to stop; end assistant turns with, e.g., its EOS "
                f"{tokenizer.eos_token!r} (or use {choices()})"
            )
        return tokenizer
    end = named.end_of_turn or tokenizer.eos_token
    if not _ends_with_a_token(tokenizer, named):
        fits = [t.name for t in NAMED.values() if _ends_with_a_token(tokenizer, t)]
        raise UserError(
            f"model.chat_template {value!r} ends assistant turns with {end}, which this tokenizer does not have as "
            "one token: the model could not learn a token to stop on, and generation would not stop. "
            f"Templates whose end-of-turn token it has: {', '.join(fits) or 'none'}; or write a Jinja file that "
            "ends assistant turns with one of its special tokens. (tuneloop does not add tokens: that would "
            "resize the embeddings with an untrained row.)"
        )
    split = [m for m in named.markers if not is_one_token(tokenizer, m)]
    if split:
        from tuneloop import console

        console.warn(
            f"model.chat_template {value!r} writes {', '.join(split)}, which this tokenizer splits into several "
            "tokens; it trains, but each turn costs more tokens than with a template the tokenizer knows"
        )
    return tokenizer


def _ends_with_a_token(tokenizer: Any, template: NamedTemplate) -> bool:
    end = template.end_of_turn or tokenizer.eos_token
    return end is not None and is_one_token(tokenizer, end)


def project_tokenizer(cfg: ProjectConfig) -> Any:
    """The tokenizer of the project's model, with `model.chat_template` applied."""
    from tuneloop.models import load_tokenizer
    from tuneloop.models import resolve as resolve_model

    tokenizer = load_tokenizer(resolve_model(cfg.model.name, cfg.model.revision), cfg.model.trust_remote_code)
    return apply_configured(tokenizer, cfg)


def project_model(cfg: ProjectConfig, dtype: str | None = None, **load_kwargs: Any) -> tuple[Any, Any]:
    """(model, tokenizer) of the project's base model, the tokenizer with `model.chat_template` applied."""
    from tuneloop.models import load_causal_lm

    model, tokenizer = load_causal_lm(
        cfg.model.name, dtype or cfg.model.dtype, cfg.model.trust_remote_code, cfg.model.revision, **load_kwargs
    )
    return model, apply_configured(tokenizer, cfg)
