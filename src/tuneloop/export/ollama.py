"""An Ollama Modelfile whose TEMPLATE renders exactly the text the run was trained on.

Ollama does not run Jinja: a Modelfile's TEMPLATE is Go's text/template, executed with `.Messages`
(each with `.Role` and `.Content`), `.System` (the system messages joined) and `.Response`
(ollama/ollama template/template.go). So the run's chat template is recognised by rendering, not by
name: a set of probe conversations is rendered by the run's tokenizer and by each template tuneloop
can write in Go (chatml, chatml with a default system prompt as SmolLM2's, llama3, mistral, gemma,
phi3); the first whose Jinja twin renders every probe identically is used. An unrecognised template
gets no TEMPLATE line and a note saying so: a wrong template is worse than none.

BOS: the Go template writes the BOS text exactly where the Jinja template does (llama3, mistral, gemma);
the GGUF's `add_bos_token` is set so that llama.cpp adds BOS only where the training renderer did and the
template did not (gguf_file.add_bos_token). The Go templates have no `trim`, so llama3's and gemma's templates, which
trim message content, match training for content without surrounding whitespace (what
`data.clean.whitespace` produces); the note in the Modelfile says so.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from tuneloop.data.chat_templates import NAMED

# Conversations the recognition renders: with and without a system message, one and several turns.
PROBES: list[list[dict[str, str]]] = [
    [{"role": "user", "content": "Where is my order #1234?"}],
    [{"role": "system", "content": "Answer in one line."}, {"role": "user", "content": "Reset my password."}],
    [
        {"role": "user", "content": "Hi there"},
        {"role": "assistant", "content": "Hello! How can I help?"},
        {"role": "user", "content": "Cancel my plan,\nplease."},
    ],
    [
        {"role": "system", "content": "You route tickets."},
        {"role": "user", "content": "Billing question"},
        {"role": "assistant", "content": '{"queue": "billing"}'},
        {"role": "user", "content": "And this one?"},
    ],
]

_FIRST_IS_SYSTEM = '(eq (index $.Messages 0).Role "system")'


@dataclass
class GoTemplate:
    """A template in Ollama's Go syntax, the Jinja template it is equivalent to, and its stop strings."""

    family: str
    go: str
    stop: list[str]
    jinja: str  # renders the same text as `go` (what recognition compares the run's template with)
    context: dict[str, str] = field(default_factory=dict)  # extra Jinja variables (the default system prompt)
    note: str = ""


def _chatml(bos: str) -> str:
    del bos  # ChatML writes no BOS
    return "{{ range .Messages }}<|im_start|>{{ .Role }}\n{{ .Content }}<|im_end|>\n{{ end }}<|im_start|>assistant\n"


def _chatml_default_system(default: str) -> str:
    return (
        '{{ if ne (index .Messages 0).Role "system" }}<|im_start|>system\n'
        + default
        + "<|im_end|>\n{{ end }}"
        + _chatml("")
    )


_CHATML_DEFAULT_JINJA = (
    "{% for message in messages %}"
    "{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\\n' + default_system + '<|im_end|>\\n' }}"
    "{% endif %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


def _llama3(bos: str) -> str:
    return (
        bos + "{{ range .Messages }}<|start_header_id|>{{ .Role }}<|end_header_id|>\n\n{{ .Content }}<|eot_id|>"
        "{{ end }}<|start_header_id|>assistant<|end_header_id|>\n\n"
    )


def _mistral(bos: str, eos: str) -> str:
    return (
        bos + '{{ range $i, $m := .Messages }}{{ if eq $m.Role "user" }}[INST] '
        "{{ if and (eq $i 1) " + _FIRST_IS_SYSTEM + " }}{{ (index $.Messages 0).Content }}\n\n{{ end }}"
        '{{ $m.Content }} [/INST]{{ else if eq $m.Role "assistant" }} {{ $m.Content }}' + eos + "{{ end }}{{ end }}"
    )


def _gemma(bos: str) -> str:
    return (
        bos + '{{ range $i, $m := .Messages }}{{ if not (and (eq $i 0) (eq $m.Role "system")) }}'
        '<start_of_turn>{{ if eq $m.Role "assistant" }}model{{ else }}{{ $m.Role }}{{ end }}\n'
        "{{ if and (eq $i 1) " + _FIRST_IS_SYSTEM + " }}{{ (index $.Messages 0).Content }}\n\n{{ end }}"
        "{{ $m.Content }}<end_of_turn>\n{{ end }}{{ end }}<start_of_turn>model\n"
    )


def _phi3(bos: str) -> str:
    del bos
    return "{{ range .Messages }}<|{{ .Role }}|>\n{{ .Content }}<|end|>\n{{ end }}<|assistant|>\n"


_TRIM_NOTE = (
    "the training template trims each message; Ollama's Go templates cannot, so send messages without "
    "leading or trailing whitespace"
)


def candidates(tokenizer: Any) -> list[GoTemplate]:
    """Every template tuneloop can write in Go for this tokenizer's BOS/EOS, with its Jinja twin."""
    bos = tokenizer.bos_token or ""
    eos = tokenizer.eos_token or ""
    found = [
        GoTemplate("chatml", _chatml(bos), ["<|im_end|>"], NAMED["chatml"].jinja),
        GoTemplate("llama3", _llama3(bos), ["<|eot_id|>"], NAMED["llama3"].jinja, note=_TRIM_NOTE),
        GoTemplate("mistral", _mistral(bos, eos), [eos], NAMED["mistral"].jinja),
        GoTemplate("gemma", _gemma(bos), ["<end_of_turn>"], NAMED["gemma"].jinja, note=_TRIM_NOTE),
        GoTemplate("phi3", _phi3(bos), ["<|end|>"], NAMED["phi3"].jinja),
    ]
    default = _default_system_prompt(tokenizer)
    if default is not None:
        found.insert(
            0,
            GoTemplate(
                "chatml with a default system prompt",
                _chatml_default_system(default),
                ["<|im_end|>"],
                _CHATML_DEFAULT_JINJA,
                {"default_system": default},
            ),
        )
    return found


def _default_system_prompt(tokenizer: Any) -> str | None:
    """The system prompt a ChatML-style template adds when the conversation has none (SmolLM2's does)."""
    text = _render(tokenizer, tokenizer.chat_template, [{"role": "user", "content": "X"}])
    m = re.fullmatch(
        r"<\|im_start\|>system\n(.*?)<\|im_end\|>\n<\|im_start\|>user\nX<\|im_end\|>\n<\|im_start\|>assistant\n",
        text or "",
        re.S,
    )
    return m.group(1) if m else None


def _render(tokenizer: Any, jinja: str | None, messages: list[dict[str, str]], **context: str) -> str | None:
    if not jinja:
        return None
    try:
        return tokenizer.apply_chat_template(
            messages, chat_template=jinja, tokenize=False, add_generation_prompt=True, **context
        )
    except Exception:  # a template that rejects a probe (e.g. one that forbids system messages) does not match
        return None


def recognise(tokenizer: Any) -> GoTemplate | None:
    """The Go template that renders every probe exactly as the run's chat template does, or None."""
    for candidate in candidates(tokenizer):
        if not _safe_literals(candidate):
            continue
        if all(
            _render(tokenizer, tokenizer.chat_template, p)
            == _render(tokenizer, candidate.jinja, p, **candidate.context)
            for p in PROBES
        ):
            return candidate
    return None


def _safe_literals(t: GoTemplate) -> bool:
    """Literal text (BOS, EOS, a default system prompt) must not open a Go action or close the TEMPLATE quotes."""
    literals = [*t.context.values(), *t.stop]
    return not any("{{" in s or "}}" in s or '"""' in s for s in literals) and '"""' not in t.go


def modelfile(gguf_name: str, template: GoTemplate | None, stops: list[str], others: list[str]) -> str:
    """The Modelfile text: FROM the GGUF, TEMPLATE when recognised, and one PARAMETER stop per stop string."""
    lines = ["# Ollama Modelfile written by `tuneloop export`: ollama create NAME -f Modelfile"]
    for other in others:
        lines.append(f"# Another quantisation of the same model: FROM ./{other}")
    if template is not None:
        lines.append(f"# TEMPLATE renders the run's training chat template ({template.family}) in Go syntax.")
        if template.note:
            lines.append(f"# Note: {template.note}.")
    else:
        lines += [
            "# NOTE: no TEMPLATE. tuneloop could not match this run's chat template (chat_template.jinja, also in",
            "# the GGUF as tokenizer.chat_template) to one it can write in Go: chatml, llama3, mistral, gemma, phi3.",
            "# Write a TEMPLATE by hand that renders exactly what chat_template.jinja renders before serving.",
        ]
    lines.append(f"FROM ./{gguf_name}")
    if template is not None:
        lines.append(f'TEMPLATE """{template.go}"""')
    for stop in dict.fromkeys([*(template.stop if template else []), *stops]):
        if stop:
            lines.append(f'PARAMETER stop "{stop}"')
    return "\n".join(lines) + "\n"
