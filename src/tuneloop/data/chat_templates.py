"""Named chat templates for models whose tokenizer has none (base models) or whose template you override.

`model.chat_template` takes one of these names or a path to a Jinja file. Each entry is the Jinja
template (Transformers' `apply_chat_template` syntax) plus the token that ends an assistant turn,
which is also the stop token a server or an Ollama Modelfile must use. The Jinja text follows the
model families' published templates, reduced to what tuneloop renders: system, user and assistant
messages with string content. A system message is folded into the first user turn for the families
whose templates have no system role (mistral, gemma), as their own templates do.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class NamedTemplate:
    """A chat template by name: its Jinja source and the token that ends every assistant turn."""

    name: str
    jinja: str
    end_of_turn: str | None  # the text that closes an assistant turn (the stop string); None: the tokenizer's EOS


CHATML = NamedTemplate(
    "chatml",
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}",
    "<|im_end|>",
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
)

PHI3 = NamedTemplate(
    "phi3",
    "{% for message in messages %}"
    "{{ '<|' + message['role'] + '|>\\n' + message['content'] + '<|end|>\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\\n' }}{% endif %}",
    "<|end|>",
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
