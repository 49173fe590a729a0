"""KTO (method.name: kto): unpaired rated answers from the data stage, TRL's KTOTrainer, resume, pinned losses, eval."""

from __future__ import annotations

import json
import random
import re
from pathlib import Path

import pytest

from tests.preference_helpers import assert_resumes_exactly, make_preference_project, pair_rows, train_losses
from tuneloop import config
from tuneloop.data.formats import Example, RowError, to_example
from tuneloop.errors import UserError


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _metrics(run_dir: Path) -> list[dict]:
    return _rows(run_dir / "metrics.jsonl")


def rated_rows(n: int, seed: int = 1, desirable_share: float = 0.6) -> list[dict]:
    """Unpaired feedback on the separable synthetic task: each prompt has one answer, the helpful one rated up
    (about `desirable_share` of them), the curt refusal rated down."""
    r = random.Random(seed)
    rows = []
    for pair in pair_rows(n):
        good = r.random() < desirable_share
        rows.append({"prompt": pair["prompt"], "completion": pair["chosen" if good else "rejected"], "label": good})
    return rows


# --------------------------------------------------------------------------- data: the unpaired format


@pytest.mark.parametrize(
    ("record", "reason"),
    [
        ({"completion": "yes", "label": True}, "expected prompt, completion, label"),
        ({"prompt": None, "completion": "yes", "label": True}, "field 'prompt' is missing"),
        ({"prompt": "q", "completion": "", "label": True}, "field 'completion' is empty"),
        ({"prompt": "q", "completion": "  ", "label": False}, "field 'completion' is empty"),
        ({"prompt": "q", "completion": "yes", "label": "true"}, "field 'label' is 'true', expected true"),
        ({"prompt": "q", "completion": "yes", "label": 1}, "field 'label' is 1, expected true"),
        ({"prompt": "q", "completion": "yes", "label": None}, "field 'label' is None, expected true"),
        (
            {
                "prompt": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}],
                "completion": "x",
                "label": True,
            },
            "must end with a user turn",
        ),
    ],
)
def test_bad_unpaired_records_are_rejected_with_the_reason(record, reason):
    with pytest.raises(RowError, match=re.escape(reason)):
        to_example(record, "unpaired", "f:1")


def test_an_unpaired_record_reads_like_trls():
    """TRL's unpaired format: a prompt (text or messages), one completion (text or one assistant message), a label."""
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "q"}]
    example = to_example(
        {"prompt": messages, "completion": [{"role": "assistant", "content": "a"}], "label": False}, "unpaired", "f:2"
    )
    assert (example.kind, example.messages, example.completion, example.desirable) == ("unpaired", messages, "a", False)
    assert Example.from_json(example.to_json()) == example  # `desirable: false` survives the prepared JSONL


def test_detection_tells_rated_answers_from_prompt_completion_rows_with_a_label():
    from tuneloop.data.formats import shape_of

    assert shape_of({"prompt": "q", "completion": "a", "label": True}) == "unpaired"
    # a category label is a prompt/completion row's own business, not a rating
    assert shape_of({"prompt": "q", "completion": "a", "label": "billing"}) == "prompt_completion"


def test_data_prepare_rejects_bad_unpaired_records_at_file_line(tmp_path: Path, tiny_llama: Path):
    """Through the real data stage: each bad record lands in rejects.jsonl at its file:line, good ones in the splits."""
    rows = rated_rows(30)
    bad = {
        2: {"completion": "yes", "label": True},
        5: {"prompt": "q5", "completion": "", "label": True},
        8: {"prompt": "q8", "completion": "yes", "label": "yes"},
        11: {
            "prompt": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}],
            "completion": "x",
            "label": False,
        },
        # empty only after cleaning (the HTML tags go), so caught there
        14: {"prompt": "q14", "completion": "<b></b>", "label": True},
    }
    for line, record in bad.items():
        rows.insert(line - 1, record)
    path = make_preference_project(tmp_path, tiny_llama, method="kto", rows=rows)
    prepared = path.parent / "data" / "prepared"
    rejects = {(Path(r["source"]).name, r["line"]): r["reason"] for r in _rows(prepared / "rejects.jsonl")}
    assert set(rejects) == {("train.jsonl", line) for line in bad}
    assert "expected prompt, completion, label" in rejects["train.jsonl", 2]
    assert "field 'completion' is empty" in rejects["train.jsonl", 5]
    assert "expected true" in rejects["train.jsonl", 8]
    assert "must end with a user turn" in rejects["train.jsonl", 11]
    assert "completion" in rejects["train.jsonl", 14]
    kept = [e for s in ("train", "val", "test") for e in _rows(prepared / f"{s}.jsonl")]
    assert len(kept) == 30 and all(e["kind"] == "unpaired" and isinstance(e["desirable"], bool) for e in kept)


def test_pairs_and_rankings_become_one_desirable_and_one_undesirable_answer_each():
    from tuneloop.data.pairs import rated_of

    pair = to_example({"prompt": "q", "chosen": "yes", "rejected": "no"}, "preference", "p.jsonl:1")
    ranked = to_example({"prompt": "r", "responses": ["b", "a", "c"], "ranking": [1, 0, 2]}, "ranked", "r.jsonl:2")
    single = to_example({"prompt": "s", "completion": "meh", "label": False}, "unpaired", "u.jsonl:3")
    got = [(r.id, r.completion, r.desirable) for r in rated_of([pair, ranked, single])]
    assert got == [
        ("p.jsonl:1+", "yes", True),
        ("p.jsonl:1-", "no", False),
        ("r.jsonl:2#1>0+", "a", True),
        ("r.jsonl:2#1>0-", "b", False),
        ("r.jsonl:2#1>2+", "a", True),
        ("r.jsonl:2#1>2-", "c", False),
        ("r.jsonl:2#0>2+", "b", True),
        ("r.jsonl:2#0>2-", "c", False),
        ("u.jsonl:3", "meh", False),
    ]


# A model without a chat template renders a one-message prompt as plain text; it has no multi-turn prompts.
@pytest.mark.parametrize(("template", "history"), [("chatml", False), ("chatml", True), ("none", False)])
def test_rated_answer_masks_equal_the_sft_renderers(template: str, history: bool):
    """The trained tokens of a kto row (prompt_ids + completion_ids, the completion trained) are exactly what SFT
    trains for the same prompt + answer, and the prompt is what evaluation and serving send."""
    from tuneloop.data.pairs import Rated, render_rated
    from tuneloop.data.render import Renderer
    from tuneloop.tiny import make_tokenizer

    tokenizer = make_tokenizer(chat_template=None) if template == "none" else make_tokenizer()
    renderer = Renderer(tokenizer)
    prompt = [{"role": "user", "content": "How do I reset my password?"}]
    if history:
        prompt = [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Hello"},
            {"role": "assistant", "content": "Hi, how can I help?"},
            *prompt,
        ]
    answers = [Rated("f:1", prompt, "Go to Settings, then Security.", True), Rated("f:2", prompt, "No.", False)]
    for answer, tokens in zip(answers, render_rated(renderer, answers), strict=True):
        assert not isinstance(tokens, RowError)
        assert tokens["label"] is answer.desirable and tokens["id"] == answer.id
        messages = [{**m, "weight": 0.0} if m["role"] == "assistant" else m for m in prompt] + [
            {"role": "assistant", "content": answer.completion}
        ]
        sft = renderer.render(Example("x", "chat", messages=messages, plain=True if template == "none" else None))
        ours_ids = tokens["prompt_ids"] + tokens["completion_ids"]
        # KTOTrainer's collator marks the completion: completion_mask = 0 on the prompt, 1 on the completion
        ours_mask = [0] * len(tokens["prompt_ids"]) + [1] * len(tokens["completion_ids"])
        sft_mask = [int(w > 0) for w in sft.weights]
        assert sft.input_ids[: len(ours_ids)] == ours_ids
        assert sft_mask == ours_mask + [0] * (len(sft_mask) - len(ours_mask))  # only untrained tokens after
        assert sum(ours_mask) == sft.trained_tokens
        if template == "chatml":
            assert renderer.prompt_ids(prompt) == tokens["prompt_ids"]
        end = tokenizer.decode(tokens["completion_ids"][-1:])
        assert end == ("<|im_end|>" if template == "chatml" else tokenizer.eos_token)


def test_the_trainers_collator_trains_exactly_those_tokens():
    """What KTOTrainer computes the log-probabilities over: our rows through TRL's collator (plus the example ids)."""
    from tuneloop.data.pairs import Rated, render_rated
    from tuneloop.data.render import Renderer
    from tuneloop.tiny import make_tokenizer
    from tuneloop.train import kto
    from tuneloop.train.preference import collator

    renderer = Renderer(make_tokenizer())
    prompt = [{"role": "user", "content": "How do I reset my password?"}]
    answers = [Rated("a", prompt, "Go to Settings, then Security.", True), Rated("b", prompt, "No.", False)]
    items = render_rated(renderer, answers)
    rows = kto.ordered_rows(items, batch_size=2, seed=0, shuffle=False)
    assert rows[0]["KL_completion_ids"] == items[1]["completion_ids"]  # each row's KL answer is its neighbour's
    assert rows[1]["KL_completion_ids"] == items[0]["completion_ids"]
    batch = collator("kto", pad_id=0)(rows)
    assert batch["example_ids"] == ["a", "b"] and batch["label"].tolist() == [True, False]
    for row, item in enumerate(items):
        n = len(item["prompt_ids"]) + len(item["completion_ids"])
        assert batch["input_ids"][row, :n].tolist() == item["prompt_ids"] + item["completion_ids"]
        mask = batch["completion_mask"][row].tolist()
        assert mask == [0] * len(item["prompt_ids"]) + [1] * len(item["completion_ids"]) + [0] * (len(mask) - n)


def test_sft_and_dpo_refuse_rated_answers_naming_kto(tmp_path: Path, tiny_llama: Path):
    from tuneloop.data.render import Renderer
    from tuneloop.tiny import make_tokenizer
    from tuneloop.train.preference import train

    example = to_example({"prompt": "q", "completion": "a", "label": True}, "unpaired", "f:1")
    with pytest.raises(RowError, match=r"not trained by supervised fine-tuning: .*method.name kto"):
        Renderer(make_tokenizer()).render(example)
    path = make_preference_project(tmp_path, tiny_llama, method="dpo", rows=rated_rows(20))
    with pytest.raises(UserError, match=r"holds unpaired records .* train rated answers with method.name kto"):
        train(config.load(path))


# --------------------------------------------------------------------------- config and weights


def test_config_ties_kto_to_its_data_and_batches(tmp_path: Path):
    path = tmp_path / "tuneloop.yaml"
    base = "task: {objective: x, type: preference}\n"
    path.write_text(base + "method: {name: kto}\ndata: {format: unpaired}\n")
    cfg = config.load(path)
    assert cfg.train.learning_rate == 5e-5  # the dpo family's first-try rate with LoRA
    assert cfg.method.preference.desirable_weight is None  # balanced by the counts at train time
    path.write_text(base + "method: {name: dpo}\ndata: {format: unpaired}\n")
    with pytest.raises(UserError, match=r"not unpaired \(single rated answers train with method.name kto\)"):
        config.load(path)
    path.write_text(base + "method: {name: kto}\ndata: {format: messages}\n")
    with pytest.raises(UserError, match=r"kto reads unpaired .* not messages"):
        config.load(path)
    path.write_text(base + "method: {name: kto}\ntrain: {batch_size: 1}\n")
    with pytest.raises(UserError, match=r"train.batch_size: .*KL term .* 2 or more"):
        config.load(path)
    path.write_text(base + "method: {name: dpo, preference: {desirable_weight: 2}}\n")
    with pytest.raises(UserError, match=r"desirable_weight weighs KTO's loss"):
        config.load(path)


def _items(labels: list[bool]) -> list[dict]:
    return [{"id": str(i), "prompt_ids": [1], "completion_ids": [2], "label": d} for i, d in enumerate(labels)]


def test_weights_balance_the_counts_unless_set(tmp_path: Path):
    from tuneloop.train.kto import loss_weights

    path = tmp_path / "tuneloop.yaml"
    path.write_text("task: {objective: x, type: preference}\nmethod: {name: kto}\n")
    cfg = config.load(path)
    assert loss_weights(cfg, _items([True] * 30 + [False] * 10)) == (1.0, 3.0)
    assert loss_weights(cfg, _items([True] * 10 + [False] * 40)) == (4.0, 1.0)
    assert loss_weights(cfg, _items([True, False] * 5)) == (1.0, 1.0)
    assert loss_weights(cfg, _items([True] * 4)) == (1.0, 1.0)
    path.write_text("task: {objective: x, type: preference}\nmethod: {name: kto, preference: {desirable_weight: 2}}\n")
    assert loss_weights(config.load(path), _items([True] * 30 + [False] * 10)) == (2.0, 1.0)


# --------------------------------------------------------------------------- training


@pytest.fixture(scope="module")
def kto_run(tmp_path_factory: pytest.TempPathFactory, tiny_llama: Path) -> Path:
    from tuneloop.train.preference import train

    path = make_preference_project(tmp_path_factory.mktemp("kto"), tiny_llama, method="kto", rows=rated_rows(60))
    return train(config.load(path)).run_dir


def _first_batch_weights(run_dir: Path) -> list[float]:
    """The weight of each answer in the first training batch, in the order training reads them."""
    from tuneloop.data.chat_templates import project_tokenizer
    from tuneloop.data.prepared import load_split
    from tuneloop.train import kto

    cfg = config.load(run_dir.parent.parent / "tuneloop.yaml")
    examples, _ = load_split(cfg, "train")
    items = kto.render_split(examples, project_tokenizer(cfg), cfg, "train")
    rows = kto.ordered_rows(items, cfg.train.batch_size, cfg.train.seed, shuffle=True)
    weights = json.loads((run_dir / "summary.json").read_text())["kto_weights"]
    return [weights["desirable" if r["label"] else "undesirable"] for r in rows[: cfg.train.batch_size]]


def test_kto_loss_at_step_0_is_half_the_mean_weight(kto_run: Path):
    """Policy = reference at the start: every log-ratio is 0 and the KL estimate (clamped at 0) is 0, so each
    answer's loss is 1 - sigmoid(0) = 0.5 times its weight, and a batch's loss is the mean of those."""
    weights = _first_batch_weights(kto_run)
    assert len(set(weights)) == 2  # the first batch mixes both labels, so the weights matter
    rows = _metrics(kto_run)
    first_train = next(r for r in rows if "loss" in r)
    assert first_train["step"] == 1 and first_train["kl"] == 0.0
    assert first_train["loss"] == pytest.approx(0.5 * sum(weights) / len(weights), abs=1e-6)
    assert rows[0]["step"] == 0 and rows[0]["eval_kl"] == 0.0
    assert rows[0]["eval_reward_desirable"] == 0.0 and rows[0]["eval_reward_undesirable"] == 0.0
    summary = json.loads((kto_run / "summary.json").read_text())
    counts = [e["desirable"] for e in _rows(kto_run.parent.parent / "data" / "prepared" / "train.jsonl")]
    desirable, undesirable = sum(counts), len(counts) - sum(counts)
    assert desirable > undesirable  # so the undesirable answers are weighted up to balance them
    assert summary["kto_weights"] == {"desirable": 1.0, "undesirable": pytest.approx(desirable / undesirable)}


def test_kto_moves_desirable_up_relative_to_undesirable(kto_run: Path):
    """Over a few steps the desirable answers' log-probabilities gain on the undesirable ones' (validation)."""
    evals = [r for r in _metrics(kto_run) if "eval_loss" in r]
    first, last = evals[0], evals[-1]
    desirable_gain = last["eval_logp_desirable"] - first["eval_logp_desirable"]
    undesirable_gain = last["eval_logp_undesirable"] - first["eval_logp_undesirable"]
    assert desirable_gain > undesirable_gain
    assert last["eval_reward_desirable"] > last["eval_reward_undesirable"] and last["eval_reward_margin"] > 0.1
    assert last["eval_loss"] < first["eval_loss"]
    summary = json.loads((kto_run / "summary.json").read_text())
    assert summary["method"] == "kto" and summary["validation"]["reward_margin"] == last["eval_reward_margin"]
    # and by the records' own labels (not the trainer's view of them): the final model's implicit reward
    from tuneloop.data.pairs import rated_of
    from tuneloop.data.prepared import load_split
    from tuneloop.evaluate.preference import rated_rewards

    cfg = config.load(kto_run.parent.parent / "tuneloop.yaml")
    rated = rated_of(load_split(cfg, "val")[0] + load_split(cfg, "test")[0])
    rewards = rated_rewards(cfg, kto_run, rated)
    up = [float(r) for a, r in zip(rated, rewards, strict=True) if a.desirable]
    down = [float(r) for a, r in zip(rated, rewards, strict=True) if not a.desirable]
    assert up and down and sum(up) / len(up) > sum(down) / len(down) + 0.1
    assert (kto_run / "final" / "adapter_model.safetensors").is_file()  # an adapter on the configured base


def test_kto_losses_are_pinned(kto_run: Path):
    """Seeded, on CPU in fp32: the same config gives these losses (a change in TRL or our data path shows here)."""
    assert train_losses(kto_run) == pytest.approx(PINNED_KTO, abs=1e-5)


PINNED_KTO = [
    0.6029411554336548,
    0.6640365123748779,
    0.5549187064170837,
    0.5247975587844849,
    0.5004211664199829,
    0.5672258138656616,
]


def test_kto_resumes_exactly_after_sigterm(tmp_path: Path, tiny_llama: Path, kto_run: Path, monkeypatch):
    """SIGTERM at step 3 saves a checkpoint and stops; --resume then gives the uninterrupted run's losses."""
    path = make_preference_project(tmp_path, tiny_llama, method="kto", rows=rated_rows(60))
    assert_resumes_exactly(monkeypatch, path, kto_run)


# --------------------------------------------------------------------------- evaluation


def test_eval_scores_implicit_reward_like_trl(kto_run: Path):
    """The evaluation's implicit rewards of the validation answers give TRL's logged validation rewards (TRL
    averages each batch's desirable (undesirable) rewards, then the batches)."""
    from tuneloop.data.pairs import rated_of
    from tuneloop.data.prepared import load_split
    from tuneloop.evaluate.preference import rated_rewards

    cfg = config.load(kto_run.parent.parent / "tuneloop.yaml")
    val, _ = load_split(cfg, "val")
    rated = rated_of(val)
    rewards = rated_rewards(cfg, kto_run, rated)
    final = json.loads((kto_run / "summary.json").read_text())["validation"]
    size = cfg.train.batch_size
    for label, key in ((True, "reward_desirable"), (False, "reward_undesirable")):
        means = []
        for start in range(0, len(rated), size):
            answers, scores = rated[start : start + size], rewards[start : start + size]
            batch = [float(r) for a, r in zip(answers, scores, strict=True) if a.desirable is label]
            if batch:
                means.append(sum(batch) / len(batch))
        assert sum(means) / len(means) == pytest.approx(final[key], rel=1e-4, abs=1e-5)


def test_eval_of_a_kto_run_scores_base_at_one_half(kto_run: Path, cli):
    """On unpaired test rows: the share whose implicit reward has the label's sign; the base (the reference) ties
    on every answer, 0.5, and the tuned run is compared with it by a paired bootstrap."""
    result = cli("eval", "--config", kto_run.parent.parent / "tuneloop.yaml", "--run", kto_run)
    assert result.code == 0, result.err
    report = json.loads((kto_run / "eval" / "metrics.json").read_text())
    c = report["comparisons"][kto_run.name]["label_accuracy"]
    assert c["baseline"] == 0.5 and c["candidate"] > 0.5 and c["ci_low"] <= c["delta"] <= c["ci_high"]
    assert report["test"]["rated"] == report["test"]["examples"] > 0 and report["test"]["pairs"] == 0
    outputs = _rows(kto_run / "eval" / "outputs.jsonl")
    assert len(outputs) == report["test"]["rated"] and all(o["rewards"]["base"] == 0 for o in outputs)
    assert "label_accuracy" in result.out and "rated answers" in (kto_run / "eval" / "report.md").read_text()


def test_kto_on_pairs_trains_and_scores_preference_accuracy(tmp_path: Path, tiny_llama: Path, cli):
    """Preference pairs train kto (`tuneloop train`) as one desirable and one undesirable answer each; eval then
    gives dpo's preference accuracy on the test pairs (base 0.5)."""
    from tuneloop.evaluate.preference import evaluate

    path = make_preference_project(tmp_path, tiny_llama, method="kto", max_steps=3, eval_every=3)
    trained = cli("train", "--config", path)
    assert trained.code == 0, trained.err
    assert re.search(r"answers\s+\d+ train, \d+ validation", trained.out)
    assert re.search(r"implicit reward [+-][\d.]+ desirable, [+-][\d.]+ undesirable, KL [\d.]+", trained.out)
    (run,) = [d for d in (path.parent / "runs").iterdir() if d.is_dir()]
    summary = json.loads((run / "summary.json").read_text())
    pairs = len(_rows(path.parent / "data" / "prepared" / "train.jsonl"))
    assert summary["examples"]["train_answers"] == 2 * pairs
    assert summary["kto_weights"] == {"desirable": 1.0, "undesirable": 1.0}  # balanced by construction
    assert train_losses(run)[0] == pytest.approx(0.5, abs=1e-6)
    result = evaluate(config.load(path), [run])
    c = result.report["comparisons"][run.name]["preference_accuracy"]
    assert c["baseline"] == 0.5 and c["candidate"] > 0.5
    assert set(result.report["comparisons"][run.name]) == {"preference_accuracy", "reward_margin"}


# --------------------------------------------------------------------------- monitor export: feedback as rated answers


def test_monitor_export_writes_thumbs_up_and_down_as_rated_answers_for_a_kto_project(project: Path):
    """A kto project's feedback is training data as it is: thumbs up → desirable, thumbs down → undesirable (no
    review needed), a correction → desirable with the model's answer undesirable; `data prepare` reads the file."""
    from tests.test_monitor_export import logged
    from tuneloop.data.formats import detect_format, read_rows
    from tuneloop.monitor import export as monitor_export
    from tuneloop.traffic import TrafficLog

    (project / "tuneloop.yaml").write_text("task: {objective: x, type: preference}\nmethod: {name: kto}\n")
    cfg = config.load(project / "tuneloop.yaml")
    log = TrafficLog.open(project / "monitor" / "traffic.sqlite")
    log.write(logged(1, output="go to settings"))
    log.write(logged(2, output="no"))
    log.write(logged(3, output="wrong"))
    log.write(logged(4, prompt="Once upon a time", output="the end"))
    log.write(logged(5, output="unrated"))
    log.add_feedback("chatcmpl-1", "up")
    log.add_feedback("chatcmpl-2", "down")
    log.add_feedback("chatcmpl-3", "down", correction="right")
    log.add_feedback("cmpl-4", "up")
    log.close()
    out = project / "out.jsonl"
    result = monitor_export.export(cfg, out=out)
    q = [[{"role": "user", "content": f"question {i}"}] for i in range(4)]
    assert _rows(out) == [
        {"prompt": q[1], "completion": "go to settings", "label": True, "traffic_id": "chatcmpl-1"},
        {"prompt": q[2], "completion": "no", "label": False, "traffic_id": "chatcmpl-2"},
        {"prompt": q[3], "completion": "right", "label": True, "traffic_id": "chatcmpl-3"},
        {"prompt": q[3], "completion": "wrong", "label": False, "traffic_id": "chatcmpl-3"},
        {"prompt": "Once upon a time", "completion": "the end", "label": True, "traffic_id": "cmpl-4"},
    ]
    assert (result.rated, result.corrected, result.review_rows) == (3, 1, 0)
    rows = list(read_rows(out, "out.jsonl"))
    assert detect_format(rows, "out.jsonl") == "unpaired"
    assert [to_example(r.value, "unpaired", "x").desirable for r in rows] == [True, False, True, False, True]
    # --only down: the thumbs-down ones alone (corrected or not)
    monitor_export.export(cfg, only="down", out=out)
    assert [r["traffic_id"] for r in _rows(out)] == ["chatcmpl-2", "chatcmpl-3", "chatcmpl-3"]


def test_full_kto_starts_at_one_half_and_writes_a_whole_model(tmp_path: Path, tiny_llama: Path):
    """adapter: full trains every weight against a frozen copy of the start (the reference): step 0's loss is 0.5
    (balanced pairs), the policy then moves off the reference, and the final folder is a whole model."""
    from tuneloop.train.preference import train

    path = make_preference_project(
        tmp_path, tiny_llama, method="kto", adapter="full", max_steps=2, eval_every=2, save_every=2
    )
    result = train(config.load(path))
    losses = train_losses(result.run_dir)
    assert losses[0] == pytest.approx(0.5, abs=1e-6) and len(losses) == 2
    evals = [r for r in _metrics(result.run_dir) if "eval_loss" in r]
    assert evals[0]["eval_kl"] == 0.0 and evals[-1]["eval_reward_margin"] != 0.0  # the policy moved off the copy
    assert (result.run_dir / "final" / "model.safetensors").is_file()
