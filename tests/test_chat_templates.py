"""Chat templates beyond ChatML: the mask, one BOS, and eval's prompt as an exact prefix of the training ids.

Each family gets a tiny tokenizer with its own special tokens (and BOS/EOS the way its real
tokenizer sets them), a base-model tokenizer without a template, and its named template from
`model.chat_template`. Nothing is downloaded.
"""

from __future__ import annotations

import re
from pathlib import Path
from types import SimpleNamespace

import pytest

from tuneloop.data.chat_templates import NAMED, apply_configured, find_end_of_turn
from tuneloop.data.formats import Example, RowError
from tuneloop.data.render import Renderer, mark_trained
from tuneloop.errors import UserError
from tuneloop.tiny import make_tokenizer

# Text with the blank lines and headers templates write, so the tokenizers learn merges across
# "\n\n" as real ones have (Llama 3's "ĊĊ"): a merge at a turn boundary is what breaks prefixes.
_TEMPLATE_TEXT = [
    "user\n\nHow do I reset my password?\n\nassistant\n\nGo to Settings.\n\n",
    "model\nRefunds take 14 days.\n\nuser\nThanks\n\n",
]

# family → (tokenizer keywords as the family's base model ships them, the turn's end token)
FAMILIES = {
    "llama3": (
        dict(
            special_tokens=[
                "<|begin_of_text|>",
                "<|end_of_text|>",
                "<|start_header_id|>",
                "<|end_header_id|>",
                "<|eot_id|>",
            ],
            bos="<|begin_of_text|>",
            eos="<|end_of_text|>",
            unk="<|end_of_text|>",
            add_bos=True,
        ),
        "<|eot_id|>",
    ),
    "mistral": (
        dict(
            special_tokens=["<unk>", "<s>", "</s>", "[INST]", "[/INST]"],
            bos="<s>",
            eos="</s>",
            unk="<unk>",
            add_bos=True,
        ),
        "</s>",
    ),
    "gemma": (
        dict(
            special_tokens=["<pad>", "<eos>", "<bos>", "<unk>", "<start_of_turn>", "<end_of_turn>"],
            bos="<bos>",
            eos="<eos>",
            pad="<pad>",
            unk="<unk>",
            add_bos=True,
        ),
        "<end_of_turn>",
    ),
    "phi3": (
        dict(
            special_tokens=[
                "<unk>",
                "<s>",
                "</s>",
                "<|endoftext|>",
                "<|user|>",
                "<|assistant|>",
                "<|system|>",
                "<|end|>",
            ],
            bos="<s>",
            eos="<|endoftext|>",
            unk="<unk>",
            add_bos=True,
        ),
        "<|end|>",
    ),
    "chatml": (dict(), "<|im_end|>"),
}


def base_tokenizer(family: str):
    """A base model's tokenizer for `family`: its special tokens, no chat template."""
    return make_tokenizer(chat_template=None, extra_text=_TEMPLATE_TEXT, **FAMILIES[family][0])


def configured(tokenizer, value: str, root: Path | None = None):
    cfg = SimpleNamespace(model=SimpleNamespace(chat_template=value), root=root or Path.cwd())
    return apply_configured(tokenizer, cfg)


def chat(*turns: str, system: str | None = None) -> Example:
    messages = [{"role": "system", "content": system}] if system else []
    messages += [{"role": "user" if i % 2 == 0 else "assistant", "content": t} for i, t in enumerate(turns)]
    return Example("t:1", "chat", messages=messages)


CONVERSATIONS = [
    chat("How do I reset my password?", "Go to Settings."),
    chat("Hi", "Hello there", "Refund?", "Within 14 days.", "Thanks", "You are welcome."),
    chat("Summarize this ticket", "Billing question.", system="You are a support assistant."),
]


@pytest.mark.parametrize("family", list(FAMILIES))
@pytest.mark.parametrize("conversation", range(len(CONVERSATIONS)))
def test_mask_is_the_assistant_and_its_end_of_turn_only(family, conversation):
    tok = configured(base_tokenizer(family), family)
    end = FAMILIES[family][1]
    example = CONVERSATIONS[conversation]
    rendered = Renderer(tok).render(example)
    marked = mark_trained(rendered, tok)
    answers = [m["content"] for m in example.messages if m["role"] == "assistant"]
    trained = [part.split("]]")[0] for part in marked.split("[[")[1:]]
    # each trained span is one answer followed by the end-of-turn token, nothing after it
    assert [t.strip() for t in trained] == [f"{a}{end}" for a in answers]
    assert rendered.trained_tokens == sum(len(tok(t, add_special_tokens=False).input_ids) for t in trained), (
        "the trained tokens are exactly the marked ones"
    )
    assert not rendered.warnings


@pytest.mark.parametrize("family", ["llama3", "mistral", "gemma", "phi3"])
def test_exactly_one_bos(family):
    # llama3, mistral and gemma templates write BOS and the tokenizer adds one too; phi3's writes none
    tok = configured(base_tokenizer(family), family)
    bos = tok.bos_token_id
    assert tok("a").input_ids[0] == bos
    renderer = Renderer(tok)
    rendered = renderer.render(CONVERSATIONS[1])
    assert rendered.input_ids.count(bos) == 1 and rendered.input_ids[0] == bos
    prompt = renderer.prompt_ids(CONVERSATIONS[1].messages[:1])
    assert prompt.count(bos) == 1 and prompt[0] == bos


@pytest.mark.parametrize("family", list(FAMILIES))
@pytest.mark.parametrize("conversation", range(len(CONVERSATIONS)))
def test_eval_prompt_ids_are_an_exact_prefix_of_the_training_ids(family, conversation):
    tok = configured(base_tokenizer(family), family)
    renderer = Renderer(tok)
    example = CONVERSATIONS[conversation]
    rendered = renderer.render(example)
    turns = [i for i, m in enumerate(example.messages) if m["role"] == "assistant"]
    for i in turns:  # every assistant turn, as eval (last turn) or a multi-turn chat would prompt it
        prompt = renderer.prompt_ids(example.messages[:i])
        assert rendered.input_ids[: len(prompt)] == prompt, f"turn {i}: prompt is not a prefix"
        assert rendered.weights[len(prompt)] > 0, f"turn {i}: the first token after the prompt is not trained"
        assert not any(w > 0 for w in rendered.weights[: len(prompt)][-1:])


@pytest.mark.parametrize("family", list(FAMILIES))
def test_generation_stops_on_the_templates_end_of_turn(family):
    from tuneloop.generate import stop_token_ids

    tok = configured(base_tokenizer(family), family)
    end = FAMILIES[family][1]
    assert find_end_of_turn(tok) == end
    model = SimpleNamespace(generation_config=SimpleNamespace(eos_token_id=tok.eos_token_id))
    assert tok.convert_tokens_to_ids(end) in stop_token_ids(model, tok)


def test_a_template_whose_end_token_the_tokenizer_lacks_is_refused_naming_the_ones_that_fit():
    tok = base_tokenizer("gemma")  # no <|eot_id|>, no <|im_end|>, no <|end|>
    with pytest.raises(UserError) as e:
        configured(tok, "llama3")
    message = str(e.value)
    assert "<|eot_id|>" in message and "does not have as one token" in message
    assert "Templates whose end-of-turn token it has: mistral, gemma" in message
    assert len(tok) == len(base_tokenizer("gemma")), "no token was added"


def test_a_jinja_file_relative_to_the_config_folder(tmp_path):
    (tmp_path / "templates").mkdir()
    jinja = NAMED["gemma"].jinja.replace("<start_of_turn>", "<start_of_turn>")
    (tmp_path / "templates" / "mine.jinja").write_text(jinja)
    tok = configured(base_tokenizer("gemma"), "templates/mine.jinja", tmp_path)
    assert tok.chat_template == jinja
    with pytest.raises(UserError, match="neither a named template"):
        configured(base_tokenizer("gemma"), "templates/missing.jinja", tmp_path)


def test_a_jinja_file_without_a_special_end_of_turn_is_refused(tmp_path):
    (tmp_path / "plain.jinja").write_text(
        "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
        "{% if add_generation_prompt %}assistant: {% endif %}"
    )
    with pytest.raises(UserError, match="could not learn to stop"):
        configured(base_tokenizer("gemma"), "plain.jinja", tmp_path)


def test_the_setting_overrides_the_models_own_template():
    tok = configured(
        make_tokenizer(
            special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|end|>", "<|user|>", "<|assistant|>"]
        ),
        "phi3",
    )
    marked = mark_trained(Renderer(tok).render(CONVERSATIONS[0]), tok)
    assert "<|user|>" in marked and "<|im_start|>" not in marked and marked.count("[[") == 1


# --------------------------------------------------------------------------- no template at all


def plain(prompt: str, completion: str) -> Example:
    return Example(
        "t:1",
        "chat",
        messages=[{"role": "user", "content": prompt}, {"role": "assistant", "content": completion}],
        plain=True,
    )


@pytest.mark.parametrize("family", ["llama3", "gemma", "mistral"])
def test_prompt_completion_without_a_template_trains_the_completion_and_eos(family):
    tok = base_tokenizer(family)
    renderer = Renderer(tok)
    rendered = renderer.render(plain("Question: How do I reset my password?\nAnswer:", " Go to Settings."))
    marked = mark_trained(rendered, tok)
    bos = tok.bos_token
    assert marked == f"{bos}Question: How do I reset my password?\nAnswer:[[ Go to Settings.{tok.eos_token}]]"
    prompt = renderer.prompt_ids([{"role": "user", "content": "Question: How do I reset my password?\nAnswer:"}])
    assert rendered.input_ids[: len(prompt)] == prompt and rendered.weights[len(prompt)] > 0
    assert rendered.input_ids.count(tok.bos_token_id) == 1


def test_chat_rows_without_a_template_say_to_set_model_chat_template():
    renderer = Renderer(base_tokenizer("gemma"))
    hint = re.escape("set model.chat_template to one of chatml, llama3, mistral, gemma, phi3")
    for example in (CONVERSATIONS[0], chat("a", "b", system="s")):
        with pytest.raises(RowError, match=hint):
            renderer.render(example)
    with pytest.raises(RowError, match=re.escape("set model.chat_template")):
        renderer.prompt_ids([{"role": "system", "content": "s"}, {"role": "user", "content": "q"}])


def test_preference_rows_are_refused_unless_only_lengths_are_measured():
    tok = base_tokenizer("gemma")
    tok = configured(tok, "gemma")
    pair = Example(
        "t:1", "preference", messages=[{"role": "user", "content": "q"}], chosen="short", rejected="a longer answer"
    )
    with pytest.raises(RowError, match="preference tuning"):
        Renderer(tok).render(pair)
    measured = Renderer(tok, lengths_only=True).render(pair)
    assert "a longer answer" in measured.text  # the longest sequence a preference trainer will see
