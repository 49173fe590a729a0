"""The forgetting check: perplexity and choice accuracy on the general set, base vs tuned."""

from __future__ import annotations

import copy
import json
import math
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from tuneloop.errors import UserError
from tuneloop.evaluate import forgetting
from tuneloop.evaluate.forgetting import Question, choice_accuracy, forgetting_check, load_general_set, perplexity
from tuneloop.models import load_causal_lm

TEXTS = [
    "How do I reset my password? Go to Settings, then Security, then Reset password.",
    "Refunds are available within 14 days of a charge.",
    "The quick brown fox jumps over the lazy dog.",
    "billing technical account",
    "Summarize this ticket in one line, then open Billing and choose Request refund.",
    "You are a helpful assistant.",
]
QUESTIONS = [
    Question("q1", "How do I reset my password?", ("Go to Settings", "Open Billing", "Jump over the dog"), 0),
    Question("q2", "When are refunds available?", ("within 14 days", "never", "on Mondays", "after a year"), 0),
    Question("q3", "What jumps over the lazy dog?", ("the quick brown fox", "a ticket"), 0),
    Question("q4", "Who are you?", ("a helpful assistant", "billing", "technical account", "a password"), 3),
    Question("q5", "Which label?", ("billing", "technical", "account", "answer"), 1),
]


@pytest.fixture(scope="module")
def tiny(tiny_llama: Path):
    return load_causal_lm(str(tiny_llama))


def write_set(folder: Path, texts: list[str], questions: list[str]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "text.jsonl").write_text("".join(line + "\n" for line in texts), encoding="utf-8")
    (folder / "questions.jsonl").write_text("".join(line + "\n" for line in questions), encoding="utf-8")
    return folder


GOOD_TEXT = '{"id": "t1", "text": "An oak is a tree."}'
GOOD_QUESTION = '{"id": "q1", "question": "What is an oak?", "choices": ["a tree", "a fish"], "answer": 0}'


# --------------------------------------------------------------------------- perplexity


def test_perplexity_equals_the_models_own_loss_on_one_text(tiny):
    model, tokenizer = tiny
    text = TEXTS[0]
    ids = tokenizer(text).input_ids
    assert tokenizer.bos_token_id is not None and ids[0] != tokenizer.bos_token_id  # BOS is added by us
    ids = torch.tensor([[tokenizer.bos_token_id, *ids]])
    labels = ids.clone()
    labels[0, :2] = -100  # BOS and the first text token are context, never predicted
    with torch.no_grad():
        loss = model(input_ids=ids, labels=labels).loss.item()

    ppl, per_text = perplexity(model, tokenizer, [text])

    assert ppl == pytest.approx(math.exp(loss), rel=1e-5)
    assert per_text.shape == (1,) and per_text[0] == pytest.approx(loss, rel=1e-5)
    _, tokens = forgetting.text_nll(model, tokenizer, [text])
    assert tokens.tolist() == [ids.shape[1] - 2]  # every text token but the first, padding excluded


def test_batching_and_padding_do_not_change_perplexity(tiny):
    model, tokenizer = tiny
    one_ppl, one = perplexity(model, tokenizer, TEXTS, batch_size=1)
    four_ppl, four = perplexity(model, tokenizer, TEXTS, batch_size=4)
    assert four_ppl == pytest.approx(one_ppl, rel=1e-5)
    np.testing.assert_allclose(four, one, rtol=1e-5)
    # Corpus perplexity weighs texts by their token counts, so it is not the mean of per-text values.
    nll, tokens = forgetting.text_nll(model, tokenizer, TEXTS, batch_size=1)
    assert one_ppl == pytest.approx(math.exp(nll.sum() / tokens.sum()), rel=1e-9)


def test_max_length_cuts_long_texts(tiny):
    model, tokenizer = tiny
    _, tokens = forgetting.text_nll(model, tokenizer, [TEXTS[0] * 20], max_length=32)
    assert tokens.tolist() == [32 - 2]


def test_a_text_with_nothing_to_predict_is_an_error(tiny):
    model, tokenizer = tiny
    with pytest.raises(UserError, match="fewer than 2 tokens"):
        perplexity(model, tokenizer, ["a"])


def test_the_model_is_left_in_the_mode_it_was_in(tiny):
    model, tokenizer = tiny
    model.train()
    try:
        perplexity(model, tokenizer, TEXTS[:2])
        assert model.training
    finally:
        model.eval()
    perplexity(model, tokenizer, TEXTS[:2])
    assert not model.training


# --------------------------------------------------------------------------- choices


def test_choice_accuracy_is_a_fraction_with_per_question_zero_or_one(tiny):
    model, tokenizer = tiny
    accuracy, correct = choice_accuracy(model, tokenizer, QUESTIONS, batch_size=3)
    assert 0.0 <= accuracy <= 1.0
    assert correct.shape == (len(QUESTIONS),) and set(correct.tolist()) <= {0, 1}
    assert accuracy == pytest.approx(correct.mean())
    one_accuracy, one = choice_accuracy(model, tokenizer, QUESTIONS, batch_size=1)
    assert one.tolist() == correct.tolist() and one_accuracy == accuracy


# --------------------------------------------------------------------------- loading


@pytest.mark.parametrize(
    ("texts", "questions", "where", "message"),
    [
        ([GOOD_TEXT, '{"id": "t2", "text": '], [GOOD_QUESTION], "text.jsonl:2", "invalid JSON"),
        ([GOOD_TEXT, '{"id": "t2"}'], [GOOD_QUESTION], "text.jsonl:2", "missing 'text'"),
        ([GOOD_TEXT, '{"id": "t2", "text": "  "}'], [GOOD_QUESTION], "text.jsonl:2", "'text' is empty"),
        ([GOOD_TEXT, '["t2", "text"]'], [GOOD_QUESTION], "text.jsonl:2", "expected a JSON object"),
        ([GOOD_TEXT, GOOD_TEXT], [GOOD_QUESTION], "text.jsonl:2", "duplicate id 't1'"),
        (
            [GOOD_TEXT],
            [GOOD_QUESTION, "", GOOD_QUESTION.replace('"q1"', '"q2"').replace('"answer": 0', '"answer": 2')],
            "questions.jsonl:3",
            "not the index of one of the 2 choices",
        ),
        (
            [GOOD_TEXT],
            [GOOD_QUESTION.replace('"answer": 0', '"answer": true')],
            "questions.jsonl:1",
            "'answer' must be an integer, got bool",
        ),
        (
            [GOOD_TEXT],
            [GOOD_QUESTION.replace('["a tree", "a fish"]', '["a tree"]')],
            "questions.jsonl:1",
            "at least 2 non-empty strings",
        ),
        (
            [GOOD_TEXT],
            [GOOD_QUESTION.replace('["a tree", "a fish"]', '["a tree", "a tree"]')],
            "questions.jsonl:1",
            "two choices are the same",
        ),
        ([GOOD_TEXT], [], "questions.jsonl", "the file has no records"),
    ],
)
def test_a_malformed_general_file_is_a_user_error_at_its_line(tmp_path, texts, questions, where, message):
    folder = write_set(tmp_path / "general", texts, questions)
    with pytest.raises(UserError) as error:
        load_general_set(folder)
    assert f"{folder / where}: " in str(error.value)
    assert message in str(error.value)


def test_every_problem_is_reported_at_once_and_missing_files_are_named(tmp_path):
    folder = write_set(tmp_path / "general", ["{", GOOD_TEXT, "{"], [GOOD_QUESTION])
    with pytest.raises(UserError) as error:
        load_general_set(folder)
    assert f"{folder}/text.jsonl:1: " in str(error.value) and f"{folder}/text.jsonl:3: " in str(error.value)
    (folder / "questions.jsonl").unlink()
    with pytest.raises(UserError, match=r"questions\.jsonl: missing"):
        load_general_set(folder)
    with pytest.raises(UserError, match="does not exist"):
        load_general_set(tmp_path / "nowhere")


def test_a_users_own_set_loads(tmp_path):
    folder = write_set(tmp_path / "mine", [GOOD_TEXT], [GOOD_QUESTION])
    general = load_general_set(folder)
    assert general.texts == ["An oak is a tree."] and general.text_ids == ["t1"]
    assert general.questions == [Question("q1", "What is an oak?", ("a tree", "a fish"), 0)]
    assert str(folder) in general.describe()


def test_the_shipped_set_loads_with_its_documented_sizes():
    general = load_general_set()
    readme = (forgetting.DEFAULT_GENERAL / "README.md").read_text(encoding="utf-8")
    assert len(general.texts) == 100 and "100 short passages" in readme
    assert len(general.questions) == 80 and "80 four-way multiple-choice questions" in readme
    assert "WordNet 3.0 Copyright 2006 by Princeton University" in readme  # the licence travels with the data
    for name in ("text.jsonl", "questions.jsonl"):
        assert (forgetting.DEFAULT_GENERAL / name).stat().st_size < 150_000
    assert all(len(q.choices) == 4 and 0 <= q.answer < 4 for q in general.questions)
    assert all(len(set(q.choices)) == 4 for q in general.questions)
    # Balanced positions: always answering the same letter scores exactly chance.
    assert set(Counter(q.answer for q in general.questions).values()) == {20}
    asked = {q.id.removeprefix("q-").split(".")[0] for q in general.questions}
    assert not asked & {i.split(".")[0] for i in general.text_ids}  # no word both asked and in the text
    assert "the default WordNet set" in general.describe()


# --------------------------------------------------------------------------- the check


def small_set(tmp_path: Path) -> forgetting.GeneralSet:
    texts = [json.dumps({"id": f"t{i}", "text": t}) for i, t in enumerate(TEXTS)]
    questions = [
        json.dumps({"id": q.id, "question": q.question, "choices": list(q.choices), "answer": q.answer})
        for q in QUESTIONS
    ]
    return load_general_set(write_set(tmp_path / "general", texts, questions))


def test_the_same_model_twice_shows_no_change_and_the_result_is_json(tiny, tmp_path):
    general = small_set(tmp_path)
    result = forgetting_check(tiny, tiny, general, threshold=0.05)
    json.dumps(result, allow_nan=False)
    ppl, acc = result["general_perplexity"], result["general_accuracy"]
    assert ppl["change"] == pytest.approx(0.0, abs=1e-12) and acc["change"] == 0.0
    assert ppl["ci_low"] == ppl["ci_high"] == 0.0 and not ppl["significant"]
    assert not result["regressed"] and not ppl["regressed"] and not acc["regressed"]


def test_a_noisy_copy_is_flagged_and_the_threshold_rules_apply(tiny, tmp_path):
    general = small_set(tmp_path)
    model, tokenizer = tiny
    broken = copy.deepcopy(model)
    torch.manual_seed(0)
    with torch.no_grad():
        for p in broken.parameters():
            p.mul_(8.0)  # saturated logits: confidently wrong about every token
    result = forgetting_check(tiny, (broken, tokenizer), general, threshold=0.05)
    ppl, acc = result["general_perplexity"], result["general_accuracy"]
    change = ppl["candidate"] / ppl["baseline"] - 1
    assert ppl["change"] == pytest.approx(change)
    assert change > 0.05 and ppl["regressed"] and result["regressed"]  # the threshold rule, whatever n is
    drop = acc["baseline"] - acc["candidate"]
    assert acc["regressed"] == (drop > 0.05)
    lenient = forgetting_check(tiny, (broken, tokenizer), general, threshold=change + 1)
    assert not lenient["general_perplexity"]["regressed"]


# --------------------------------------------------------------------------- SmolLM2 (slow)


@pytest.mark.slow
def test_smollm2_knows_the_general_set_and_a_broken_copy_is_flagged():
    base = load_causal_lm("smollm2-135m-instruct")
    general = load_general_set()
    model, tokenizer = base
    broken = copy.deepcopy(model)
    torch.manual_seed(0)
    with torch.no_grad():
        for p in broken.parameters():
            p.add_(torch.randn_like(p) * p.float().std())  # noise as large as each tensor's own spread

    result = forgetting_check(base, (broken, tokenizer), general, threshold=0.05)

    ppl, acc = result["general_perplexity"], result["general_accuracy"]
    print(
        f"\nSmolLM2-135M-Instruct on the default set: perplexity {ppl['baseline']:.2f}, accuracy {acc['baseline']:.3f}"
        f"\nbroken copy: perplexity {ppl['candidate']:.2f}, accuracy {acc['candidate']:.3f}"
        f"\nforgetting_check (both models): {result['seconds']:.1f} s"
    )
    assert ppl["baseline"] < 100  # ordinary English for a model of this size
    assert acc["baseline"] >= 0.40  # chance is 0.25; a working model knows common words
    assert ppl["regressed"] and ppl["change"] > 1.0
    assert result["regressed"]
