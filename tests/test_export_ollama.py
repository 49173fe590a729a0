"""The Modelfile's TEMPLATE, executed by Go's text/template with Ollama's data shape, renders exactly the
training renderer's prompt for the same conversation (tests/go/ollama_render.go mirrors ollama's
template.Execute: .Messages with .Role/.Content after its collate step, .System, .Response)."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from tuneloop.data.chat_templates import NAMED
from tuneloop.data.render import Renderer
from tuneloop.export import ollama
from tuneloop.export.gguf_file import add_bos_token
from tuneloop.tiny import CHATML_TEMPLATE, make_tokenizer

RENDER_GO = Path(__file__).parent / "go" / "ollama_render.go"
SMOLLM2_TEMPLATE = (  # the chat template inside the embedded SmolLM2 GGUF
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}"
    "{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
# Conversations unlike the recognition probes, so a match is not an artefact of the probes.
CONVERSATIONS = [
    [{"role": "user", "content": "What's the refund window?"}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Track order 77."}],
    [
        {"role": "system", "content": "Reply in JSON."},
        {"role": "user", "content": "Login fails"},
        {"role": "assistant", "content": '{"queue": "account"}'},
        {"role": "user", "content": "And billing?"},
        {"role": "assistant", "content": '{"queue": "billing"}'},
        {"role": "user", "content": "Thanks — bye."},
    ],
]
TEMPLATES = {"tiny": CHATML_TEMPLATE, "smollm2": SMOLLM2_TEMPLATE, **{n: t.jinja for n, t in NAMED.items()}}


def go_render(cases: list[dict]) -> list[str]:
    """Execute each {template, messages} case with Go's text/template, as Ollama does."""
    done = subprocess.run(
        ["go", "run", str(RENDER_GO)], input=json.dumps(cases), capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def tokenizer_with(template: str, add_bos: bool = False):
    tokenizer = make_tokenizer()
    tokenizer.chat_template = template
    if add_bos:  # a tokenizer that prepends BOS itself, as Llama's and Gemma's do
        from tokenizers import processors

        tokenizer.backend_tokenizer.post_processor = processors.TemplateProcessing(
            single=f"{tokenizer.bos_token} $A", special_tokens=[(tokenizer.bos_token, tokenizer.bos_token_id)]
        )
    return tokenizer


@pytest.mark.skipif(shutil.which("go") is None, reason="needs Go's text/template: apt-get install -y golang-go")
@pytest.mark.parametrize("add_bos", [False, True])
def test_modelfile_template_renders_the_training_prompt(add_bos: bool) -> None:
    cases, expected = [], []
    for name, jinja in TEMPLATES.items():
        tokenizer = tokenizer_with(jinja, add_bos)
        renderer = Renderer(tokenizer)
        assert renderer.add_bos is add_bos
        template = ollama.recognise(tokenizer)
        assert template is not None, name
        for conversation in CONVERSATIONS:
            cases.append({"template": template.go, "messages": conversation})
            expected.append((name, tokenizer, renderer.prompt_ids(conversation)))
    rendered = go_render(cases)
    for text, (name, tokenizer, training_ids) in zip(rendered, expected, strict=True):
        # llama.cpp tokenizes the rendered text with special tokens parsed, adding BOS when the GGUF says so.
        ids = tokenizer(text, add_special_tokens=False).input_ids
        if add_bos_token(tokenizer):
            ids = [tokenizer.bos_token_id, *ids]
        assert ids == training_ids, f"{name}: {text!r}"


@pytest.mark.skipif(shutil.which("go") is None, reason="needs Go's text/template: apt-get install -y golang-go")
def test_a_changed_default_system_prompt_would_be_caught() -> None:
    """Guard for the test itself: a Go template that renders different text fails the comparison."""
    tokenizer = tokenizer_with(SMOLLM2_TEMPLATE)
    template = ollama.recognise(tokenizer)
    wrong = template.go.replace("named SmolLM", "called SmolLM")
    text = go_render([{"template": wrong, "messages": CONVERSATIONS[0]}])[0]
    assert tokenizer(text, add_special_tokens=False).input_ids != Renderer(tokenizer).prompt_ids(CONVERSATIONS[0])


def test_recognition_names_the_family_and_the_default_system_prompt() -> None:
    smol = ollama.recognise(tokenizer_with(SMOLLM2_TEMPLATE))
    assert smol.family == "chatml with a default system prompt"
    assert "You are a helpful AI assistant named SmolLM, trained by Hugging Face" in smol.go
    for name, t in NAMED.items():
        assert ollama.recognise(tokenizer_with(t.jinja)).family == name
    # A template that writes BOS keeps it in Go, and llama.cpp is told not to add a second one.
    for with_bos in (False, True):
        llama3 = tokenizer_with(NAMED["llama3"].jinja, with_bos)
        assert ollama.recognise(llama3).go.startswith("<|im_start|>") and not add_bos_token(llama3)
    # A template without BOS from a tokenizer that adds one: llama.cpp adds it (the Go template cannot).
    assert add_bos_token(tokenizer_with(NAMED["phi3"].jinja, True))
    assert not add_bos_token(tokenizer_with(NAMED["phi3"].jinja, False))


def test_an_unrecognised_template_gets_no_template_and_a_note() -> None:
    odd = "{% for m in messages %}### {{ m['role'] }}: {{ m['content'] }}\n{% endfor %}### assistant:"
    tokenizer = tokenizer_with(odd)
    assert ollama.recognise(tokenizer) is None
    text = ollama.modelfile("run-q8_0.gguf", None, ["<|im_end|>"], [])
    assert "TEMPLATE" not in text.replace("no TEMPLATE", "").replace("a TEMPLATE", "")
    assert "FROM ./run-q8_0.gguf" in text and 'PARAMETER stop "<|im_end|>"' in text
    assert "could not match" in text
    # A near-miss (chatml without the trailing newline) is not mistaken for chatml.
    near = NAMED["chatml"].jinja.replace("'<|im_end|>' + '\\n'", "'<|im_end|>'")
    assert ollama.recognise(tokenizer_with(near)) is None
