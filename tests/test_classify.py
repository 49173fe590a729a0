"""Classification fine-tuning (task.type classification) on a tiny random BERT and a tiny Llama."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.classify_helpers import ALL_WORDS, make_classify_project, topic_rows
from tuneloop import config
from tuneloop.data.prepared import load_split
from tuneloop.errors import UserError
from tuneloop.models import load_sequence_classifier
from tuneloop.tiny import make_tiny_bert
from tuneloop.train import classify, classify_trainer


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_bert(tmp_path_factory.mktemp("tiny-bert"), ALL_WORDS)


def predict(final: Path, texts: list[str]) -> list[str]:
    model, tokenizer = load_sequence_classifier(str(final))
    with torch.no_grad():
        batch = tokenizer(texts, padding=True, truncation=True, return_tensors="pt")
        ids = model(**batch).logits.argmax(-1).tolist()
    return [model.config.id2label[i] for i in ids]


def test_accuracy(cfg_path: Path, final: Path) -> tuple[float, float]:
    """(accuracy on the test split, the majority class's share of it)."""
    cfg = config.load(cfg_path)
    test, _ = load_split(cfg, "test")
    train, _ = load_split(cfg, "train")
    majority = Counter(e.label for e in train).most_common(1)[0][0]
    predicted = predict(final, [e.text for e in test])
    accuracy = sum(p == e.label for p, e in zip(predicted, test, strict=True)) / len(test)
    return accuracy, sum(e.label == majority for e in test) / len(test)


test_accuracy.__test__ = False  # a helper, not a test


@pytest.mark.parametrize(
    "method,settings",
    [
        ("features", {}),  # the head fitted by logistic regression
        ("features-linear", {"learning_rate": 0.05, "max_steps": 60}),  # classify.head: linear, by gradient
        ("last_k", {"learning_rate": 0.01}),
        ("lora", {"learning_rate": 0.02}),
        ("full", {"learning_rate": 0.005}),
    ],
)
def test_every_strategy_beats_the_majority_class_on_a_separable_fixture(tmp_path, tiny_bert, method, settings):
    name, _, head = method.partition("-")
    cfg_path = make_classify_project(tmp_path, tiny_bert, method=name, **settings)
    cfg = config.load(cfg_path, [f"classify.head={head}"] if head else [])
    result = classify.train(cfg)
    accuracy, majority = test_accuracy(cfg_path, result.final_dir)
    assert accuracy > majority + 0.15, (method, accuracy, majority)
    assert result.summary["method"] == name
    if name == "features":
        assert ("logistic" in result.summary["strategy"]) == (head != "linear")


def test_a_decoder_classifies_through_a_sequence_classification_head(tmp_path, tiny_llama):
    from tuneloop.tiny import make_tiny_llama, make_tokenizer

    model = make_tiny_llama(tmp_path / "llama", tokenizer=make_tokenizer(extra_text=[" ".join(ALL_WORDS)] * 5))
    cfg_path = make_classify_project(tmp_path / "p", model, method="full", learning_rate=0.003, max_steps=60)
    result = classify.train(config.load(cfg_path))
    config_json = json.loads((result.final_dir / "config.json").read_text())
    assert config_json["architectures"] == ["LlamaForSequenceClassification"]
    accuracy, majority = test_accuracy(cfg_path, result.final_dir)
    assert accuracy > majority + 0.15, (accuracy, majority)


def _changed(base: Path, final: Path) -> dict[str, bool]:
    """Per backbone parameter name (without the 'bert.' prefix): did training change it?"""
    before = load_file(str(base / "model.safetensors"))
    after = {k.removeprefix("bert."): v for k, v in load_file(str(final / "model.safetensors")).items()}
    return {name: not torch.equal(before[name], after[name]) for name in before if name in after}


def test_features_trains_no_encoder_weight(tmp_path, tiny_bert):
    cfg_path = make_classify_project(tmp_path, tiny_bert, method="features", max_steps=10)
    cfg = config.load(cfg_path)
    model, _ = classify.load_classifier(cfg, ["billing", "tech", "travel"])
    model = classify.apply_strategy(model, cfg)
    assert {n for n, p in model.named_parameters() if p.requires_grad} == {"classifier.weight", "classifier.bias"}
    result = classify.train(cfg)
    changed = _changed(tiny_bert, result.final_dir)
    assert changed and not any(changed.values()), [n for n, c in changed.items() if c]
    head = load_file(str(result.final_dir / "model.safetensors"))["classifier.weight"]
    torch.manual_seed(cfg.train.seed)
    fresh, _ = classify.load_classifier(cfg, ["billing", "tech", "travel"])
    assert not torch.equal(head, fresh.classifier.weight.detach())  # the head did train
    assert result.summary["parameters"]["trainable"] == 3 * 32 + 3


def test_last_k_trains_only_the_top_k_blocks_and_the_head(tmp_path, tiny_bert):
    cfg_path = make_classify_project(tmp_path, tiny_bert, method="last_k", max_steps=10)  # classify.last_k: 1
    cfg = config.load(cfg_path)
    model, _ = classify.load_classifier(cfg, ["billing", "tech", "travel"])
    model = classify.apply_strategy(model, cfg)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    for name, _ in model.named_parameters():
        expected = name.startswith(("bert.encoder.layer.1.", "bert.pooler.", "classifier."))
        assert (name in trainable) == expected, name
    result = classify.train(cfg)
    for name, changed in _changed(tiny_bert, result.final_dir).items():
        if name.startswith(("embeddings.", "encoder.layer.0.")):
            assert not changed, f"{name} is below the top block but changed"
        elif name.startswith("encoder.layer.1.") and name.endswith("weight"):
            assert changed, f"{name} is in the top block but did not train"


def test_class_weights_change_the_loss_as_specified():
    logits = torch.tensor([[2.0, 0.5, -1.0], [0.1, 0.3, 0.2], [-0.5, 1.5, 0.0], [1.0, 1.0, 3.0]])
    labels = torch.tensor([0, 1, 1, 2])
    ce = torch.nn.functional.cross_entropy(logits, labels, reduction="none")
    weights = torch.tensor([1.0, 3.0, 0.5])
    expected = (weights[labels] * ce).sum() / weights[labels].sum()
    assert classify_trainer.weighted_loss(logits, labels, weights).item() == pytest.approx(expected.item(), rel=1e-6)
    assert classify_trainer.weighted_loss(logits, labels, None).item() == pytest.approx(ce.mean().item(), rel=1e-6)
    # auto: n / (classes × count), over the classes train holds; a dict weighs unnamed classes 1.
    train = ["a"] * 6 + ["b"] * 2 + ["c"] * 1
    assert classify.class_weights("auto", ["a", "b", "c", "d"], train) == pytest.approx([0.5, 1.5, 3.0, 1.0])
    assert classify.class_weights({"b": 4.0}, ["a", "b", "c"], train) == [1.0, 4.0, 1.0]
    assert classify.class_weights("none", ["a", "b"], train) is None
    with pytest.raises(UserError, match="names z, which the data does not hold"):
        classify.class_weights({"z": 2.0}, ["a", "b", "c"], train)


def test_the_trainer_uses_the_class_weights_in_its_loss(tmp_path, tiny_bert):
    """One step on the whole train split as one batch: the logged loss is the weighted loss of the initial model."""
    rows = topic_rows(40)
    cfg_path = make_classify_project(tmp_path, tiny_bert, rows=rows, max_steps=1, batch_size=64, log_every=1)
    weights = {"billing": 5.0, "tech": 0.2}
    overrides = [f"train.class_weights={json.dumps(weights)}", "classify.warm_start=none"]  # the initial head
    cfg = config.derive(config.load(cfg_path), overrides)
    labels = ["billing", "tech", "travel"]
    train, _ = load_split(cfg, "train")
    model, tokenizer = classify.load_classifier(cfg, labels)
    batch = tokenizer([e.text for e in train], padding=True, return_tensors="pt")
    target = torch.tensor([labels.index(e.label) for e in train])
    with torch.no_grad():
        logits = model(**batch).logits
    w = torch.tensor([5.0, 0.2, 1.0])
    weighted = classify_trainer.weighted_loss(logits, target, w).item()
    plain = classify_trainer.weighted_loss(logits, target, None).item()
    assert abs(weighted - plain) > 1e-3  # the fixture must tell the two apart
    result = classify.train(cfg)
    first = next(json.loads(line) for line in (result.run_dir / "metrics.jsonl").open() if '"loss"' in line)
    assert first["loss"] == pytest.approx(weighted, rel=1e-4)
    assert result.summary["class_weights"] == {"billing": 5.0, "tech": 0.2, "travel": 1.0}


def test_oversampling_evens_out_the_classes():
    items = [{"labels": 0}] * 6 + [{"labels": 1}] * 2 + [{"labels": 2}]
    counts = Counter(item["labels"] for item in classify.oversample(items, seed=0))
    assert counts == {0: 6, 1: 6, 2: 6}


def test_the_label_map_is_saved_in_the_run_and_in_final(tmp_path, tiny_bert):
    cfg_path = make_classify_project(tmp_path, tiny_bert, method="features", max_steps=2)
    result = classify.train(config.load(cfg_path))
    assert json.loads((result.run_dir / "labels.json").read_text())["labels"] == ["billing", "tech", "travel"]
    assert json.loads((result.final_dir / "labels.json").read_text())["labels"] == ["billing", "tech", "travel"]
    saved = json.loads((result.final_dir / "config.json").read_text())
    assert saved["id2label"] == {"0": "billing", "1": "tech", "2": "travel"}
    assert saved["label2id"] == {"billing": 0, "tech": 1, "travel": 2}


def test_data_labels_fix_the_order_of_the_label_map(tmp_path, tiny_bert):
    cfg_path = make_classify_project(tmp_path, tiny_bert, method="features", max_steps=2)
    cfg = config.derive(config.load(cfg_path), ["data.labels=[travel, billing, tech, other]"])
    splits = {name: load_split(cfg, name)[0] for name in ("train", "val", "test")}
    assert classify.label_list(cfg, splits) == ["travel", "billing", "tech", "other"]


def test_the_same_seed_gives_the_same_losses(tmp_path, tiny_bert):
    cfg_path = make_classify_project(tmp_path, tiny_bert, method="lora", max_steps=6, log_every=1)
    a = classify.train(config.load(cfg_path))
    b = classify.train(config.load(cfg_path))

    def losses(run: Path) -> list[float]:
        return [json.loads(line)["loss"] for line in (run / "metrics.jsonl").open() if '"loss"' in line]

    assert losses(a.run_dir) == losses(b.run_dir) and len(losses(a.run_dir)) == 6


def test_non_classification_rows_are_refused_naming_their_kind(tmp_path, tiny_bert):
    cfg_path = make_classify_project(tmp_path, tiny_bert, method="features")
    cfg = config.load(cfg_path)
    prepared = cfg.path(cfg.data.prepared_dir) / "train.jsonl"
    prepared.write_text(prepared.read_text() + json.dumps({"id": "x:1", "kind": "text", "text": "hello"}) + "\n")
    with pytest.raises(UserError, match="1 text rows"):
        classify.train(cfg)


def test_features_and_last_k_need_a_classification_task(project):
    (project / "tuneloop.yaml").write_text("task:\n  objective: chat\n  type: chat\nmethod:\n  name: features\n")
    with pytest.raises(UserError, match=r"method\.name features trains a classification head"):
        config.load(project / "tuneloop.yaml")
    with pytest.raises(UserError, match=r"classification task trains with method\.name"):
        config.load(project / "tuneloop.yaml", ["task.type=classification", "method.name=qlora"])
    with pytest.raises(UserError, match=r"not in data\.labels"):
        config.load(
            project / "tuneloop.yaml",
            ["task.type=classification", "data.labels=[a, b]", "train.class_weights={a: 2, c: 1}"],
        )
    with pytest.raises(UserError, match="class weights must be positive"):
        config.load(project / "tuneloop.yaml", ["task.type=classification", "train.class_weights={a: 0}"])
    cfg = config.load(project / "tuneloop.yaml", ["task.type=classification", "train.metric=f1"])
    assert cfg.method.name == "features" and cfg.train.learning_rate == config.DEFAULT_LEARNING_RATE["features"]


# --------------------------------------------------------------------------- bad input at data prepare


def _prepare(tmp_path: Path, model: Path, rows: list[dict], *overrides: str):
    from tuneloop.data.prepare import prepare

    cfg_path = make_classify_project(tmp_path, model, rows=rows)
    return prepare(config.load(cfg_path, list(overrides)), workers=0)


def test_prepare_measures_texts_with_an_encoder_tokenizer_that_has_no_eos(tmp_path, tiny_bert):
    prepared = _prepare(tmp_path, tiny_bert, topic_rows(60))
    assert prepared.report["rows_out"] == 60
    assert prepared.report["splits"]["train"]["tokens"] > 0


def test_unknown_labels_are_rejected_and_counted(tmp_path, tiny_bert):
    rows = topic_rows(60) + [{"text": f"weather rain {i}", "label": "weather"} for i in range(3)]
    prepared = _prepare(tmp_path, tiny_bert, rows, "data.labels=[billing, tech, travel]")
    assert prepared.report["rows_out"] == 60
    reasons = prepared.report["reject_reasons"]
    assert [(r["stage"], r["count"]) for r in reasons] == [("validate", 3)]
    assert "unknown label 'weather'" in reasons[0]["example"]
    rejects = (prepared.out_dir / "rejects.jsonl").read_text().splitlines()
    assert len(rejects) == 3


def test_a_label_only_in_val_or_test_is_a_counted_warning(tmp_path, tiny_bert):
    test_rows = [{"text": f"weather rain sun {i}", "label": "weather"} for i in range(2)]
    (tmp_path / "data").mkdir(parents=True)
    (tmp_path / "data" / "test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in test_rows))
    prepared = _prepare(tmp_path, tiny_bert, topic_rows(60), "data.test=data/test.jsonl")
    assert prepared.report["splits"]["test"]["labels"] == {"weather": 2}
    (warning,) = [w for w in prepared.warnings if "never in train" in w]
    assert "'weather' (2 rows in test)" in warning


def test_a_class_too_small_for_the_split_is_a_counted_warning(tmp_path, tiny_bert):
    rows = topic_rows(90) + [{"text": f"rare {n}", "label": "rare"} for n in ("one", "two", "three")]
    prepared = _prepare(tmp_path, tiny_bert, rows)
    counts = {name: s.get("labels", {}).get("rare", 0) for name, s in prepared.report["splits"].items()}
    assert counts == {"train": 2, "val": 0, "test": 1}  # where the seeded content hash puts these three
    (warning,) = [w for w in prepared.warnings if "no rows in a split" in w]
    assert "'rare' (3 rows; none in val)" in warning and "about 10 rows per label" in warning


def test_tuneloop_train_trains_a_classifier_and_generative_commands_say_they_do_not(tmp_path, tiny_bert, cli):
    cfg_path = make_classify_project(tmp_path, tiny_bert, method="last_k", max_steps=4)
    result = cli("train", "--config", cfg_path)
    assert result.code == 0, result.err
    assert "method    last_k (top 1 blocks and the head)" in result.out
    assert "labels    3: billing, tech, travel" in result.out
    run_dir = Path(result.out.split("run       ")[1].split()[0])
    assert json.loads((run_dir / "summary.json").read_text())["status"] == "completed"
    refused = cli("generate", "--config", cfg_path, "--run", str(run_dir), "hello")
    assert refused.code == 1 and "does not take task.type classification" in refused.err


# --------------------------------------------------------------------------- the head's learning rate, warm start


@pytest.mark.parametrize("method", ["full", "last_k", "lora"])
def test_the_head_trains_at_its_own_learning_rate(tmp_path, tiny_bert, method):
    """The optimizer holds the head's parameters (a LoRA head's trained copy) in groups at classify.head_learning_rate,
    and every other trained parameter at train.learning_rate."""
    cfg_path = make_classify_project(tmp_path, tiny_bert, method=method, learning_rate=1e-4)
    cfg = config.load(cfg_path, ["classify.head_learning_rate=0.02"])
    model, _ = classify.load_classifier(cfg, ["billing", "tech", "travel"])
    model = classify.apply_strategy(model, cfg)
    trainer = classify_trainer.make_trainer_class()(
        model=model,
        args=classify_trainer.training_arguments(cfg, tmp_path / "run", False),
        train_dataset=[],
        head_learning_rate=classify._head_rate(cfg),
    )
    optimizer = trainer.create_optimizer()
    rate = {id(p): group["lr"] for group in optimizer.param_groups for p in group["params"]}
    trained = {n: p for n, p in model.named_parameters() if p.requires_grad}
    assert set(rate) == {id(p) for p in trained.values()}  # every trained parameter, once
    head = {n for n in trained if ".classifier." in f".{n}"}
    assert head and len(head) < len(trained)
    for name, param in trained.items():
        assert rate[id(param)] == (0.02 if name in head else 1e-4), name
    # features trains the head alone, at train.learning_rate
    assert classify._head_rate(config.derive(cfg, ["method.name=features"])) is None


def test_a_warm_started_run_starts_at_the_probes_validation_accuracy(tmp_path, tiny_bert):
    """classify.warm_start probe: a full run's first validation pass (step 0, before any step) scores what the
    features run's fitted probe scores; without the warm start it scores the random head's figures."""
    cfg_path = make_classify_project(tmp_path, tiny_bert, method="full", max_steps=1, eval_every=1)

    def first_and_last(run: Path) -> tuple[dict, dict]:
        rows = [json.loads(line) for line in (run / "metrics.jsonl").open() if '"eval_accuracy"' in line]
        return rows[0], rows[-1]

    probe = classify.train(config.load(cfg_path, ["method.name=features"]))
    _, probed = first_and_last(probe.run_dir)
    warm = classify.train(config.load(cfg_path))
    start, _ = first_and_last(warm.run_dir)
    cold = classify.train(config.load(cfg_path, ["classify.warm_start=none"]))
    random_start, _ = first_and_last(cold.run_dir)
    assert start["step"] == 0 and start["eval_accuracy"] == pytest.approx(probed["eval_accuracy"])
    assert start["eval_f1"] == pytest.approx(probed["eval_f1"])
    assert start["eval_loss"] == pytest.approx(probed["eval_loss"], rel=1e-4)
    assert random_start["eval_accuracy"] < probed["eval_accuracy"] - 0.2  # the fixture tells the two apart
    assert warm.summary["warm_start"]["probe_iterations"] > 0 and cold.summary["warm_start"] is None
