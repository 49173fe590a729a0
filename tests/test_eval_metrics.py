"""Task metrics: each value is the reference library's own, and resampling recomputes it on the resample."""

from __future__ import annotations

import json
import sys

import jsonschema
import numpy as np
import pytest
import sacrebleu
import textstat
from rouge_score import rouge_scorer
from sklearn.metrics import accuracy_score, f1_score, precision_recall_fscore_support, precision_score, recall_score

from tuneloop.config import METRICS
from tuneloop.errors import UserError
from tuneloop.evaluate import metrics
from tuneloop.evaluate.metrics import METRIC_INFO, compute, extract_label, needs_reference, normalize_answer

PREDICTIONS = [
    "The cat sat on the mat.",
    "A quick brown fox jumps over the lazy dog!",
    "Reset your password from the settings page.",
    "Paris is the capital of France.",
    "",
    "The meeting was moved to Tuesday afternoon.",
]
REFERENCES = [
    "The cat is sitting on the mat.",
    "The quick brown fox jumped over a lazy dog.",
    "You can reset the password on the settings page.",
    "the capital of France is Paris",
    "Nothing to say.",
    "The meeting moved to Tuesday.",
]
N = len(PREDICTIONS)
IDS = [f"test.jsonl:{i + 1}" for i in range(N)]
PROMPTS = [f"prompt {i}" for i in range(N)]
# A bootstrap-like index set: repeats, and leaves some examples out.
REPEATED = np.array([0, 0, 2, 3, 3, 3, 5, 1])

LABELS = ["positive", "negative", "neutral"]
CLASS_OUTPUTS = [
    "positive",
    " Negative\n",
    "I would say neutral.",
    "negative, not positive",
    "no idea",
    "positively",  # not a whole-word label: unparsed
    "NEUTRAL",
    "positive",
]
CLASS_REFERENCES = ["positive", "negative", "neutral", "positive", "negative", "positive", "neutral", "negative"]
CLASS_EXTRACTED = ["positive", "negative", "neutral", "negative", None, None, "neutral", "positive"]


def score(name: str, predictions=PREDICTIONS, references=REFERENCES, **kwargs) -> metrics.MetricScores:
    n = len(predictions)
    return compute(
        name,
        ids=[f"test.jsonl:{i + 1}" for i in range(n)],
        prompts=[""] * n,
        predictions=predictions,
        references=references,
        **kwargs,
    )


def pick(items: list, idx) -> list:
    return [items[i] for i in idx]


def test_metric_info_covers_the_config_vocabulary():
    assert set(METRIC_INFO) == set(METRICS)
    assert needs_reference("rougeL") and needs_reference("accuracy")
    assert not needs_reference("json_valid") and not needs_reference("flesch_kincaid")
    assert not needs_reference("my_metrics:score")
    with pytest.raises(ValueError, match="unknown metric"):
        needs_reference("rogue")


@pytest.mark.parametrize("name", ["rouge1", "rouge2", "rougeL"])
def test_rouge_is_rouge_score_f_measure_with_stemming(name):
    scorer = rouge_scorer.RougeScorer([name], use_stemmer=True)
    expected = [scorer.score(r, p)[name].fmeasure for p, r in zip(PREDICTIONS, REFERENCES, strict=True)]
    result = score(name)
    np.testing.assert_allclose(result.per_example, expected)
    assert result.value == pytest.approx(np.mean(expected))
    assert result.higher_is_better
    pairs = zip(pick(PREDICTIONS, REPEATED), pick(REFERENCES, REPEATED), strict=True)
    again = [scorer.score(r, p)[name].fmeasure for p, r in pairs]
    assert result.resample(REPEATED) == pytest.approx(np.mean(again))


@pytest.mark.parametrize(
    ("name", "corpus", "sentence"),
    [
        ("bleu", sacrebleu.corpus_bleu, sacrebleu.sentence_bleu),
        ("chrf", sacrebleu.corpus_chrf, sacrebleu.sentence_chrf),
    ],
)
def test_sacrebleu_metrics_are_its_corpus_and_sentence_scores(name, corpus, sentence):
    result = score(name)
    assert result.value == corpus(PREDICTIONS, [REFERENCES]).score
    expected = [sentence(p, [r]).score for p, r in zip(PREDICTIONS, REFERENCES, strict=True)]
    np.testing.assert_allclose(result.per_example, expected)
    resampled = corpus(pick(PREDICTIONS, REPEATED), [pick(REFERENCES, REPEATED)]).score
    assert result.resample(REPEATED) == pytest.approx(resampled, abs=1e-9)
    if name == "bleu":
        assert result.details["signature"].startswith("nrefs:1|")


def test_normalize_answer_is_squad_style():
    assert normalize_answer("  The Cat's  hat!  ") == "cats hat"
    assert normalize_answer("An apple, a pear and the plum.") == "apple pear and plum"
    assert normalize_answer("Theory") == "theory"  # articles only as whole words


def test_exact_match_trims_and_normalized_exact_match_normalizes():
    predictions = ["Paris\n", "the capital is Paris", "PARIS!", "London"]
    references = ["Paris", "Capital is Paris.", "paris", "Paris"]
    exact = score("exact_match", predictions, references)
    normalized = score("normalized_exact_match", predictions, references)
    assert exact.per_example.tolist() == [1, 0, 0, 0]
    assert normalized.per_example.tolist() == [1, 1, 1, 0]
    assert (exact.value, normalized.value) == (0.25, 0.75)
    assert normalized.resample(np.array([1, 1, 3])) == pytest.approx(2 / 3)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("positive", "positive"),
        ("  Negative \n", "negative"),
        ("I would say neutral.", "neutral"),
        ("negative, not positive", "negative"),  # earliest mention wins, not the label order
        ("The sentiment is POSITIVE", "positive"),
        ("positively", None),
        ("no idea", None),
        ("", None),
    ],
)
def test_extract_label(text, expected):
    assert extract_label(text, LABELS) == expected


def test_extract_label_prefers_the_longer_label_at_the_same_place():
    assert extract_label("very positive indeed", ["very", "very positive"]) == "very positive"
    assert extract_label("non-urgent", ["urgent", "non-urgent"]) == "non-urgent"


def test_classification_metrics_are_scikit_learn_macro_on_extracted_labels():
    assert [extract_label(o, LABELS) for o in CLASS_OUTPUTS] == CLASS_EXTRACTED
    y_pred = [e if e is not None else "<unparsed>" for e in CLASS_EXTRACTED]
    macro = {"labels": LABELS, "average": "macro", "zero_division": 0}
    expected = {
        "accuracy": accuracy_score(CLASS_REFERENCES, y_pred),
        "precision": precision_score(CLASS_REFERENCES, y_pred, **macro),
        "recall": recall_score(CLASS_REFERENCES, y_pred, **macro),
        "f1": f1_score(CLASS_REFERENCES, y_pred, **macro),
    }
    correct = [float(p == r) for p, r in zip(y_pred, CLASS_REFERENCES, strict=True)]
    for name, value in expected.items():
        result = score(name, CLASS_OUTPUTS, CLASS_REFERENCES, labels=LABELS)
        assert result.value == pytest.approx(value), name
        assert result.per_example.tolist() == correct
        assert result.details["unparsed"] == 2
        assert result.details["classes"] == LABELS

    p, r, f, s = precision_recall_fscore_support(CLASS_REFERENCES, y_pred, labels=LABELS, zero_division=0)
    table = score("f1", CLASS_OUTPUTS, CLASS_REFERENCES, labels=LABELS).details["per_class"]
    for i, label in enumerate(LABELS):
        assert table[label] == pytest.approx({"precision": p[i], "recall": r[i], "f1": f[i], "support": s[i]})


@pytest.mark.parametrize("name", ["accuracy", "precision", "recall", "f1"])
def test_classification_resample_recomputes_on_the_repeated_lists(name):
    idx = np.array([0, 0, 1, 3, 3, 4, 7, 7, 7])
    y_true = pick(CLASS_REFERENCES, idx)
    y_pred = [e if e is not None else "<unparsed>" for e in pick(CLASS_EXTRACTED, idx)]
    library = {
        "accuracy": lambda: accuracy_score(y_true, y_pred),
        "precision": lambda: precision_score(y_true, y_pred, labels=LABELS, average="macro", zero_division=0),
        "recall": lambda: recall_score(y_true, y_pred, labels=LABELS, average="macro", zero_division=0),
        "f1": lambda: f1_score(y_true, y_pred, labels=LABELS, average="macro", zero_division=0),
    }[name]
    result = score(name, CLASS_OUTPUTS, CLASS_REFERENCES, labels=LABELS)
    assert result.resample(idx) == pytest.approx(library())


def test_classification_labels_default_to_the_references():
    result = score("accuracy", ["Spam.", "ham", "it is spam"], ["spam", "ham", "ham"])
    assert result.details["classes"] == ["ham", "spam"]
    assert result.per_example.tolist() == [1, 1, 0]


def test_flesch_kincaid_is_textstat_grade_and_needs_no_reference():
    result = score("flesch_kincaid", references=None)
    expected = [textstat.flesch_kincaid_grade(p) for p in PREDICTIONS]
    np.testing.assert_allclose(result.per_example, expected)
    assert result.value == pytest.approx(np.mean(expected))
    assert not result.higher_is_better


def test_json_valid_is_strict_about_the_whole_output():
    outputs = ['{"a": 1}', "  [1, 2]\n", "3", '```json\n{"a": 1}\n```', "NaN", '{"a": 1} trailing', ""]
    result = score("json_valid", outputs, None)
    assert result.per_example.tolist() == [1, 1, 1, 0, 0, 0, 0]
    assert result.value == pytest.approx(3 / 7)
    assert result.details["invalid"] == 4
    assert result.details["first_invalid"][0]["id"] == "test.jsonl:4"


def test_json_schema_validates_with_jsonschema():
    schema = {
        "type": "object",
        "properties": {"name": {"type": "string"}, "age": {"type": "integer", "minimum": 0}},
        "required": ["name"],
    }
    outputs = ['{"name": "Ada", "age": 36}', '{"age": 3}', '{"name": "Bo", "age": -1}', "not json", '{"name": "C"}']
    result = score("json_schema", outputs, None, schema=schema)
    validator = jsonschema.Draft202012Validator(schema)
    expected = []
    for text in outputs:
        try:
            expected.append(float(validator.is_valid(json.loads(text))))
        except json.JSONDecodeError:
            expected.append(0.0)
    assert result.per_example.tolist() == expected == [1, 0, 0, 0, 1]
    assert (result.details["invalid_json"], result.details["schema_failures"]) == (1, 2)
    assert "'name' is a required property" in result.details["first_failures"][0]["error"]

    with pytest.raises(UserError, match="needs a JSON Schema"):
        score("json_schema", outputs, None)
    with pytest.raises(UserError, match="not a valid JSON Schema"):
        score("json_schema", outputs, None, schema={"type": "no-such-type"})


def test_output_length_counts_whitespace_words():
    result = score("output_length", ["one two  three", "", "a\nb"], None)
    assert result.per_example.tolist() == [3, 0, 2]
    assert result.value == pytest.approx(5 / 3)


@pytest.mark.parametrize("name", sorted(n for n, info in METRIC_INFO.items() if not info.model_based))
def test_resample_on_all_indices_is_the_value_and_details_are_json(name):
    kwargs = {"schema": {"type": "object"}} if name == "json_schema" else {}
    if name in ("accuracy", "precision", "recall", "f1"):
        result = score(name, CLASS_OUTPUTS, CLASS_REFERENCES, labels=LABELS)
    elif name == "json_match":
        result = score(name, ['{"a": 1}', "no", '{"a": 2}'], ['{"a": 1}', '{"a": 1}', '{"a": 1}'])
    else:
        result = score(name, **kwargs)
    n = len(result.per_example)
    assert result.resample(np.arange(n)) == pytest.approx(result.value, abs=1e-12)
    assert result.details["n"] == n
    json.dumps(result.details)


@pytest.mark.parametrize("references", [None, ["", " ", "", "", "", ""]])
@pytest.mark.parametrize("name", ["rougeL", "bleu", "exact_match", "f1"])
def test_reference_metric_without_references_names_the_metric(name, references):
    expected = (
        f"metric {name} needs reference answers, but the test split has none; "
        "drop it from task.metrics or add references"
    )
    with pytest.raises(UserError) as caught:
        score(name, references=references)
    assert str(caught.value) == expected


@pytest.mark.parametrize("name", ["perplexity", "preference_accuracy"])
def test_model_based_metrics_are_left_to_the_model_based_evaluator(name):
    with pytest.raises(ValueError, match="model-based evaluator"):
        score(name)


def test_mismatched_lengths_and_unknown_metrics_are_caller_errors():
    with pytest.raises(ValueError, match="differ in length"):
        compute("bleu", ids=IDS, prompts=PROMPTS, predictions=PREDICTIONS, references=REFERENCES[:2])
    with pytest.raises(ValueError, match="unknown metric"):
        score("rogue")


def write_module(folder, name: str, source: str) -> None:
    (folder / f"{name}.py").write_text(source)


def test_user_metric_is_imported_from_the_search_path(tmp_path):
    module = "tl_user_metric_ok"
    write_module(
        tmp_path,
        module,
        "def overlap(prompt, prediction, reference):\n"
        "    return len(set(prediction.split()) & set(reference.split())) + len(prompt) * 0\n"
        "def shorter(prompt, prediction, reference):\n"
        "    assert reference is None\n"
        "    return len(prediction)\n"
        "shorter.higher_is_better = False\n",
    )
    path_before = list(sys.path)
    result = compute(
        f"{module}:overlap",
        ids=IDS,
        prompts=PROMPTS,
        predictions=PREDICTIONS,
        references=REFERENCES,
        search_path=tmp_path,
    )
    expected = [len(set(p.split()) & set(r.split())) for p, r in zip(PREDICTIONS, REFERENCES, strict=True)]
    assert result.per_example.tolist() == expected
    assert result.value == pytest.approx(np.mean(expected))
    assert result.higher_is_better
    assert result.resample(REPEATED) == pytest.approx(np.mean(pick(expected, REPEATED)))
    assert sys.path == path_before

    shorter = compute(
        f"{module}:shorter", ids=IDS, prompts=PROMPTS, predictions=PREDICTIONS, references=None, search_path=tmp_path
    )
    assert shorter.per_example.tolist() == [len(p) for p in PREDICTIONS]
    assert not shorter.higher_is_better


def test_user_metric_failures_name_the_example(tmp_path):
    module = "tl_user_metric_bad"
    write_module(
        tmp_path,
        module,
        "def divide(prompt, prediction, reference):\n"
        "    return 1 / len(prediction)\n"
        "def words(prompt, prediction, reference):\n"
        "    return prediction.split()\n",
    )
    common = {"ids": IDS, "prompts": PROMPTS, "predictions": PREDICTIONS, "references": REFERENCES}
    with pytest.raises(UserError) as caught:
        compute(f"{module}:divide", **common, search_path=tmp_path)
    # The fifth prediction is empty.
    assert str(caught.value) == (
        f"metric {module}:divide failed on example test.jsonl:5: ZeroDivisionError: division by zero"
    )
    with pytest.raises(UserError, match=r"failed on example test\.jsonl:1: returned \[.*\], expected a number"):
        compute(f"{module}:words", **common, search_path=tmp_path)
    with pytest.raises(UserError, match="has no function 'missing'"):
        compute(f"{module}:missing", **common, search_path=tmp_path)
    with pytest.raises(UserError, match="cannot import module 'tl_no_such_module'"):
        compute("tl_no_such_module:fn", **common, search_path=tmp_path)
