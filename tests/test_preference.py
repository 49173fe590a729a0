"""Preference tuning: pairs from the data stage, DPO/IPO and reward models on TRL, resume, pinned losses."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest

from tests.preference_helpers import GOOD, assert_resumes_exactly, make_preference_project, pair_rows, train_losses
from tuneloop import config
from tuneloop.data.formats import Example, RowError, to_example
from tuneloop.errors import UserError


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _metrics(run_dir: Path) -> list[dict]:
    return _rows(run_dir / "metrics.jsonl")


# --------------------------------------------------------------------------- data: pairs, rejects, masks


def test_a_ranking_expands_into_every_better_worse_pair():
    from tuneloop.data.pairs import pairs_of

    ranked = to_example(
        {"prompt": "q", "responses": ["b", "a", "d", "c"], "ranking": [1, 0, 3, 2]}, "ranked", "r.jsonl:7"
    )
    pair = to_example({"prompt": "q", "chosen": "yes", "rejected": "no"}, "preference", "p.jsonl:1")
    pairs = pairs_of([ranked, pair])
    got = [(p.id, p.chosen, p.rejected) for p in pairs]
    # best first: a > b > c > d, so every one of the 6 ordered pairs, then the plain pair
    assert got == [
        ("r.jsonl:7#1>0", "a", "b"),
        ("r.jsonl:7#1>3", "a", "c"),
        ("r.jsonl:7#1>2", "a", "d"),
        ("r.jsonl:7#0>3", "b", "c"),
        ("r.jsonl:7#0>2", "b", "d"),
        ("r.jsonl:7#3>2", "c", "d"),
        ("p.jsonl:1", "yes", "no"),
    ]
    assert all(p.prompt == [{"role": "user", "content": "q"}] for p in pairs)


@pytest.mark.parametrize(
    ("record", "fmt", "reason"),
    [
        ({"prompt": "q", "chosen": "same  answer", "rejected": "same answer"}, "preference", "the same answer"),
        ({"prompt": "q", "chosen": "", "rejected": "no"}, "preference", "field 'chosen' is empty"),
        ({"prompt": "q", "chosen": "yes", "rejected": "  "}, "preference", "field 'rejected' is empty"),
        ({"chosen": "yes", "rejected": "no"}, "preference", "expected prompt, chosen, rejected"),
        ({"prompt": None, "chosen": "yes", "rejected": "no"}, "preference", "field 'prompt' is missing"),
        ({"prompt": " ", "chosen": "yes", "rejected": "no"}, "preference", "field 'prompt' is empty"),
        ({"prompt": "q", "responses": ["a", "b", "c"], "ranking": [0, 0, 1]}, "ranked", "response 0 more than once"),
        ({"prompt": "q", "responses": ["a", "b", "c"], "ranking": [2, 0]}, "ranked", "leaves out response 1"),
        ({"prompt": "q", "responses": ["a", "b"], "ranking": [[0, 1]]}, "ranked", "ties are not allowed"),
        ({"prompt": "q", "responses": ["a", "b"], "ranking": [0, 5]}, "ranked", "names response 5"),
        ({"prompt": "q", "responses": ["a", "b", "a "], "ranking": [0, 1, 2]}, "ranked", "a tie"),
        ({"prompt": "q", "responses": ["a", ""], "ranking": [0, 1]}, "ranked", "responses[1] is empty"),
        (
            {
                "prompt": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}],
                "chosen": "x",
                "rejected": "y",
            },
            "preference",
            "must end with a user turn",
        ),
    ],
)
def test_bad_pairs_and_rankings_are_rejected_with_the_reason(record, fmt, reason):
    with pytest.raises(RowError, match=re.escape(reason)):
        to_example(record, fmt, "f:1")


def test_data_prepare_rejects_bad_pairs_at_file_line(tmp_path: Path, tiny_llama: Path):
    """Through the real data stage: each bad record lands in rejects.jsonl at its file:line, good ones in the splits."""
    rows = pair_rows(30)
    bad = {
        3: {"prompt": "q3", "chosen": "same", "rejected": "same"},
        7: {"prompt": "q7", "chosen": "", "rejected": "no"},
        9: {"chosen": "yes", "rejected": "no"},
        # equal only after cleaning (the HTML tags go), so caught at the render stage
        12: {"prompt": "q12", "chosen": "<b>yes sure</b>", "rejected": "yes sure"},
    }
    for line, record in bad.items():
        rows.insert(line - 1, record)
    ranked = [
        {"prompt": "r1", "responses": ["a b", "c d", "e f"], "ranking": [2, 0, 1]},
        {"prompt": "r2", "responses": ["a", "b"], "ranking": [0, 0]},
        {"prompt": "r3", "responses": ["a", "b", "c"], "ranking": [0, 2]},
        {"prompt": "r4", "responses": ["same", "other", "same"], "ranking": [0, 1, 2]},
    ]
    path = make_preference_project(tmp_path, tiny_llama, rows=rows, ranked=ranked)
    prepared = path.parent / "data" / "prepared"
    rejects = {(Path(r["source"]).name, r["line"]): r["reason"] for r in _rows(prepared / "rejects.jsonl")}
    assert set(rejects) == {("train.jsonl", line) for line in bad} | {("ranked.jsonl", n) for n in (2, 3, 4)}
    assert "the same answer" in rejects["train.jsonl", 3] and "the same answer" in rejects["train.jsonl", 12]
    assert "field 'chosen' is empty" in rejects["train.jsonl", 7]
    assert "expected prompt, chosen, rejected" in rejects["train.jsonl", 9]
    assert "response 0 more than once" in rejects["ranked.jsonl", 2]
    assert "leaves out response 1" in rejects["ranked.jsonl", 3]
    assert "a tie" in rejects["ranked.jsonl", 4]
    kept = sum(len(_rows(prepared / f"{s}.jsonl")) for s in ("train", "val", "test"))
    assert kept == 31


# A model without a chat template renders a one-message prompt as plain text; it has no multi-turn prompts.
@pytest.mark.parametrize(("template", "history"), [("chatml", False), ("chatml", True), ("none", False)])
def test_pair_masks_equal_the_sft_renderers(template: str, history: bool):
    """The trained tokens of chosen and rejected are exactly what SFT trains for prompt + that answer."""
    from tuneloop.data.pairs import Pair, render_pairs
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
    pair = Pair("f:1", prompt, "Go to Settings, then Security.", "No.")
    (tokens,) = render_pairs(renderer, [pair])
    assert not isinstance(tokens, RowError)
    for side in ("chosen", "rejected"):
        answer = getattr(pair, side)
        messages = [{**m, "weight": 0.0} if m["role"] == "assistant" else m for m in prompt] + [
            {"role": "assistant", "content": answer}
        ]
        sft = renderer.render(Example("x", "chat", messages=messages, plain=True if template == "none" else None))
        ours_ids = tokens["prompt_ids"] + tokens[f"{side}_ids"]
        ours_mask = [0] * len(tokens["prompt_ids"]) + [1] * len(tokens[f"{side}_ids"])
        sft_mask = [int(w > 0) for w in sft.weights]
        assert sft.input_ids[: len(ours_ids)] == ours_ids
        assert sft_mask == ours_mask + [0] * (len(sft_mask) - len(ours_mask))  # only untrained tokens after
        assert sum(ours_mask) == sft.trained_tokens
    # the prompt is what evaluation and serving send for the same conversation (with a template)
    if template == "chatml":
        assert renderer.prompt_ids(prompt) == tokens["prompt_ids"]
    answer_end = tokenizer.decode(tokens["chosen_ids"][-1:])
    assert answer_end == ("<|im_end|>" if template == "chatml" else tokenizer.eos_token)


# --------------------------------------------------------------------------- config


def test_config_ties_preference_methods_to_preference_tasks(tmp_path: Path):
    path = tmp_path / "tuneloop.yaml"
    path.write_text("task: {objective: x, type: preference}\n")
    cfg = config.load(path)
    assert cfg.method.name == "dpo" and cfg.train.learning_rate == 5e-5  # the preference default
    path.write_text("task: {objective: x, type: preference}\nmethod: {preference: {adapter: full}}\n")
    assert config.load(path).train.learning_rate == 5e-7
    path.write_text("task: {objective: x, type: preference}\nmethod: {name: lora}\n")
    with pytest.raises(UserError, match=r"tuneloop.yaml:2: method.name: a preference task trains .* not lora"):
        config.load(path)
    path.write_text("task: {objective: x, type: chat}\nmethod: {name: dpo}\n")
    with pytest.raises(UserError, match=r"method.name dpo trains on preference pairs"):
        config.load(path)
    path.write_text("task: {objective: x, type: preference}\ndata: {format: messages}\n")
    with pytest.raises(UserError, match=r"reads preference or ranked records, not messages"):
        config.load(path)
    path.write_text("task: {objective: x, type: preference}\nmethod: {name: ipo}\ntrain: {metric: accuracy}\n")
    with pytest.raises(UserError, match=r"train.metric"):
        config.load(path)
    path.write_text("task: {objective: x, type: preference}\nmethod: {name: reward}\ntrain: {metric: accuracy}\n")
    assert config.load(path).train.metric == "accuracy"


# --------------------------------------------------------------------------- DPO


@pytest.fixture(scope="module")
def dpo_run(tmp_path_factory: pytest.TempPathFactory, tiny_llama: Path) -> Path:
    from tuneloop.train.preference import train

    path = make_preference_project(tmp_path_factory.mktemp("dpo"), tiny_llama)
    return train(config.load(path)).run_dir


def test_dpo_loss_at_step_0_is_log_2(dpo_run: Path):
    """Policy = reference at the start, so every pair's loss is -log sigmoid(0) = log 2."""
    rows = _metrics(dpo_run)
    assert rows[0]["step"] == 0 and rows[0]["eval_loss"] == pytest.approx(math.log(2), abs=1e-6)
    assert train_losses(dpo_run)[0] == pytest.approx(math.log(2), abs=1e-6)
    assert rows[0]["eval_reward_margin"] == pytest.approx(0.0, abs=1e-6)


def test_dpo_moves_chosen_up_relative_to_rejected(dpo_run: Path):
    """Over a few steps the chosen answers' log-probabilities gain on the rejected ones' (validation pairs)."""
    evals = [r for r in _metrics(dpo_run) if "eval_loss" in r]
    first, last = evals[0], evals[-1]
    chosen_gain = last["eval_logp_chosen"] - first["eval_logp_chosen"]
    rejected_gain = last["eval_logp_rejected"] - first["eval_logp_rejected"]
    assert chosen_gain > rejected_gain
    assert last["eval_reward_chosen"] > last["eval_reward_rejected"] and last["eval_reward_margin"] > 0.1
    assert last["eval_loss"] < math.log(2) - 0.05
    summary = json.loads((dpo_run / "summary.json").read_text())
    assert summary["validation"]["reward_accuracy"] == last["eval_reward_accuracy"]
    assert summary["method"] == "dpo" and summary["beta"] == 0.1
    assert (dpo_run / "final" / "adapter_model.safetensors").is_file()  # an adapter on the configured base


def test_the_console_names_validation_metrics_as_metrics_jsonl_does(capsys: pytest.CaptureFixture):
    from transformers import TrainerControl, TrainerState

    from tuneloop.train import kto
    from tuneloop.train.callbacks import Progress
    from tuneloop.train.preference import METRIC_NAMES

    state = TrainerState(global_step=4, max_steps=8)
    logs = {"eval_loss": 0.6, "eval_rewards/accuracies": 0.75, "eval_rewards/margins": 0.25}
    Progress(METRIC_NAMES).on_log(None, state, TrainerControl(), logs=logs)
    Progress(kto.METRIC_NAMES).on_log(None, state, TrainerControl(), logs=logs)
    dpo, kto_line = capsys.readouterr().err.strip().splitlines()
    assert dpo == "step 4/8: eval_loss 0.6, eval_reward_accuracy 0.75, eval_reward_margin 0.25"
    assert kto_line == "step 4/8: eval_loss 0.6, eval_reward_margin 0.25"  # kto's "accuracy" is not a pair's


def test_dpo_losses_are_pinned(dpo_run: Path):
    """Seeded, on CPU in fp32: the same config gives these losses (a change in TRL or our data path shows here)."""
    assert train_losses(dpo_run) == pytest.approx(PINNED_DPO, abs=1e-5)


PINNED_DPO = [
    0.6931471824645996,
    0.5654207468032837,
    0.4914696514606476,
    0.3831844925880432,
    0.3596658408641815,
    0.3846733868122101,
]


def test_dpo_resumes_exactly_after_sigterm(tmp_path: Path, tiny_llama: Path, dpo_run: Path, monkeypatch):
    """SIGTERM at step 3 saves a checkpoint and stops; --resume then gives the uninterrupted run's losses."""
    assert_resumes_exactly(monkeypatch, make_preference_project(tmp_path, tiny_llama), dpo_run)


def test_ipo_trains_with_trls_ipo_loss(tmp_path: Path, tiny_llama: Path):
    from tuneloop.train.preference import train

    path = make_preference_project(tmp_path, tiny_llama, method="ipo", max_steps=3, eval_every=3)
    run = train(config.load(path)).run_dir
    evals = [r for r in _metrics(run) if "eval_loss" in r]
    # IPO's loss is (margin - 1/(2 beta))^2: at step 0 the margin is 0, so 25 for beta 0.1
    assert evals[0]["eval_loss"] == pytest.approx((1 / (2 * 0.1)) ** 2, rel=1e-5)
    assert evals[-1]["eval_loss"] < evals[0]["eval_loss"]


# --------------------------------------------------------------------------- reward model


@pytest.fixture(scope="module")
def reward_run(tmp_path_factory: pytest.TempPathFactory, tiny_llama: Path) -> Path:
    from tuneloop.train.preference import train

    path = make_preference_project(
        tmp_path_factory.mktemp("reward"), tiny_llama, method="reward", rows=pair_rows(100), max_steps=12, eval_every=6
    )
    return train(config.load(path)).run_dir


def test_reward_model_beats_chance_on_a_separable_task(reward_run: Path):
    """Held-out pairs: the trained reward model scores the helpful answer above the refusal."""
    from tuneloop.reward import load_reward_model

    summary = json.loads((reward_run / "summary.json").read_text())
    assert summary["validation"]["pair_accuracy"] >= 0.9
    fresh = pair_rows(40, seed=99)
    score = load_reward_model(reward_run)
    chosen = score([r["prompt"] for r in fresh], [r["chosen"] for r in fresh])
    rejected = score([r["prompt"] for r in fresh], [[{"role": "assistant", "content": r["rejected"]}] for r in fresh])
    accuracy = sum(c > r for c, r in zip(chosen, rejected, strict=True)) / len(fresh)
    assert accuracy >= 0.9


def test_reward_losses_are_pinned(reward_run: Path):
    assert train_losses(reward_run)[:6] == pytest.approx(PINNED_REWARD, abs=1e-5)


PINNED_REWARD = [
    0.8041523694992065,
    0.7415225505828857,
    0.5734120011329651,
    0.3830662667751312,
    0.24172715842723846,
    0.09183317422866821,
]


def test_load_reward_model_refuses_other_runs(dpo_run: Path, reward_run: Path):
    from tuneloop import runs
    from tuneloop.reward import load_reward_model

    with pytest.raises(UserError, match="not a reward-model run"):
        load_reward_model(dpo_run)
    # and the other way round: generate, serve and eval load a language model, which a reward run is not
    cfg = config.load(reward_run.parent.parent / "tuneloop.yaml")
    with pytest.raises(UserError, match="is a reward model: it scores answers"):
        runs.load_final(cfg, reward_run)


def test_reward_model_scores_what_it_trained_on(reward_run: Path):
    """The scoring function renders a pair as training did: the same ids give the same score in a batch or alone."""
    from tuneloop.reward import load_reward_model

    score = load_reward_model(reward_run, batch_size=3)
    prompts = ["ticket 1: refund", "ticket 2: a much longer question about billing and the plan", "q"]
    answers = [GOOD, "no", "no plan"]
    together = score(prompts, answers)
    alone = [score([p], [a])[0] for p, a in zip(prompts, answers, strict=True)]
    assert together == pytest.approx(alone, abs=1e-5)
    with pytest.raises(ValueError, match="2 prompts but 1 completions"):
        score(prompts[:2], answers[:1])


# --------------------------------------------------------------------------- evaluation


def test_eval_scores_implicit_reward_like_trl(dpo_run: Path):
    """The evaluation's own log-prob code gives TRL's validation margin on the same pairs (one batch of 4)."""
    from tuneloop.data.pairs import pairs_of
    from tuneloop.data.prepared import load_split
    from tuneloop.evaluate.preference import implicit_reward_margins

    cfg = config.load(dpo_run.parent.parent / "tuneloop.yaml")
    val, _ = load_split(cfg, "val")
    pairs = pairs_of(val)
    assert len(pairs) <= cfg.train.batch_size  # TRL averages per batch: one batch makes its mean the pairs' mean
    margins = implicit_reward_margins(cfg, dpo_run, pairs)
    summary = json.loads((dpo_run / "summary.json").read_text())["validation"]
    assert float(margins.mean()) == pytest.approx(summary["reward_margin"], rel=1e-4, abs=1e-5)
    assert float((margins > 0).mean()) == summary["reward_accuracy"]


def test_eval_reports_preference_accuracy_base_vs_tuned(dpo_run: Path, cli):
    result = cli("eval", "--config", dpo_run.parent.parent / "tuneloop.yaml", "--run", dpo_run)
    assert result.code == 0, result.err
    report = json.loads((dpo_run / "eval" / "metrics.json").read_text())
    c = report["comparisons"][dpo_run.name]["preference_accuracy"]
    assert c["baseline"] == 0.5  # the reference ties on every pair
    assert c["candidate"] > 0.5 and c["ci_low"] <= c["delta"] <= c["ci_high"]
    assert report["comparisons"][dpo_run.name]["reward_margin"]["candidate"] > 0
    assert "preference_accuracy" in result.out and (dpo_run / "eval" / "report.html").is_file()
    outputs = _rows(dpo_run / "eval" / "outputs.jsonl")
    assert len(outputs) == report["test"]["examples"] and all(o["margins"]["base"] == 0 for o in outputs)


def test_eval_of_a_reward_run_compares_with_the_untrained_head(reward_run: Path):
    from tuneloop.evaluate.preference import evaluate

    cfg = config.load(reward_run.parent.parent / "tuneloop.yaml")
    result = evaluate(cfg, [reward_run])
    c = result.report["comparisons"][reward_run.name]["preference_accuracy"]
    assert c["candidate"] >= 0.9 and c["candidate"] > c["baseline"]
    assert result.report["test"]["examples"] >= 10 and c["verdict"] == "better"


def test_sft_then_dpo_from_the_sft_run(tmp_path: Path, tiny_llama: Path, dpo_run: Path, cli):
    """`tuneloop train --from SFT_RUN`: the SFT model is the start and the reference; final/ is a whole model."""
    from tests.train_helpers import make_train_project
    from tuneloop.train.sft import train as sft_train

    sft = sft_train(config.load(make_train_project(tmp_path / "sft", tiny_llama, max_steps=4))).run_dir
    path = make_preference_project(tmp_path / "dpo", tiny_llama)
    result = cli("train", "--config", path, "--from", sft)
    assert result.code == 0, result.err
    assert "implicit-reward accuracy" in result.out
    (run,) = [d for d in (path.parent / "runs").iterdir() if d.is_dir()]
    rows = _metrics(run)
    assert rows[0]["eval_loss"] == pytest.approx(math.log(2), abs=1e-6)  # policy = reference = the SFT model
    # the SFT model, not the base, gives the step-0 log-probabilities
    assert rows[0]["eval_logp_chosen"] != pytest.approx(_metrics(dpo_run)[0]["eval_logp_chosen"], abs=1e-3)
    assert (run / "final" / "model.safetensors").is_file() and not (run / "final" / "adapter_config.json").exists()
    assert json.loads((run / "summary.json").read_text())["start"] == str(sft.resolve())
    evaluated = cli("eval", "--config", path, "--run", run)
    assert evaluated.code == 0, evaluated.err
    report = json.loads((run / "eval" / "metrics.json").read_text())
    assert report["comparisons"][run.name]["preference_accuracy"]["candidate"] > 0.5


# --------------------------------------------------------------------------- reference-free: simpo, orpo


def test_cpo_and_orpo_columns_carry_the_renderers_masks():
    """The columns CPOTrainer/ORPOTrainer read: labels train exactly the answer tokens the SFT renderer trains."""
    from tuneloop.data.pairs import Pair, render_pairs
    from tuneloop.data.render import Renderer
    from tuneloop.tiny import make_tokenizer
    from tuneloop.train.preference import sequences

    renderer = Renderer(make_tokenizer())
    pair = Pair("f:1", [{"role": "user", "content": "How do I reset my password?"}], "Go to Settings.", "No.")
    (tokens,) = render_pairs(renderer, [pair])
    columns = sequences(tokens)
    for side in ("chosen", "rejected"):
        conversation = [*pair.prompt, {"role": "assistant", "content": getattr(pair, side)}]
        sft = renderer.render(Example("x", "chat", messages=conversation))
        ids = columns[f"{side}_input_ids"]
        assert sft.input_ids[: len(ids)] == ids and columns[f"{side}_attention_mask"] == [1] * len(ids)
        trained = [i for i, label in enumerate(columns[f"{side}_labels"]) if label != -100]
        assert trained == [i for i, w in enumerate(sft.weights) if w > 0]
        assert [columns[f"{side}_labels"][i] for i in trained] == [ids[i] for i in trained]
    assert columns["prompt_input_ids"] == tokens["prompt_ids"]


@pytest.fixture(scope="module", params=["simpo", "orpo"])
def free_run(request, tmp_path_factory: pytest.TempPathFactory, tiny_llama: Path) -> Path:
    from tuneloop.train.preference import train

    path = make_preference_project(tmp_path_factory.mktemp(request.param), tiny_llama, method=request.param)
    return train(config.load(path)).run_dir


def test_reference_free_methods_move_chosen_up_relative_to_rejected(free_run: Path):
    evals = [r for r in _metrics(free_run) if "eval_loss" in r]
    first, last = evals[0], evals[-1]
    assert last["eval_loss"] < first["eval_loss"]
    assert last["eval_reward_margin"] > first["eval_reward_margin"]
    assert (
        last["eval_logp_chosen"] - first["eval_logp_chosen"] > last["eval_logp_rejected"] - first["eval_logp_rejected"]
    )
    assert (free_run / "final" / "adapter_model.safetensors").is_file()


def test_reference_free_losses_are_pinned(free_run: Path):
    method = json.loads((free_run / "summary.json").read_text())["method"]
    assert train_losses(free_run) == pytest.approx(PINNED_FREE[method], abs=1e-5)


PINNED_FREE = {
    "simpo": [0.9751854538917542, 0.9628468155860901, 0.9575711488723755, 0.9443097114562988, 0.9474592208862305,
              0.945989727973938],
    "orpo": [6.048659801483154, 5.976977348327637, 5.864131927490234, 5.85315465927124, 5.849081993103027,
             5.841740131378174],
}  # fmt: skip


def test_eval_scores_reference_free_runs_like_trl(free_run: Path):
    """Their evaluation scores the mean per-token log-probability; on the validation pairs (one batch) it gives
    TRL's own logged mean log-probabilities, and `tuneloop eval` compares the run with its starting model."""
    from tuneloop import runs
    from tuneloop.data.pairs import pairs_of
    from tuneloop.data.prepared import load_split
    from tuneloop.evaluate.preference import evaluate, mean_logp_margins

    cfg = config.load(free_run.parent.parent / "tuneloop.yaml")
    val, _ = load_split(cfg, "val")
    pairs = pairs_of(val)
    assert len(pairs) <= cfg.train.batch_size
    model, _ = runs.load_final(cfg, free_run)
    margins = mean_logp_margins(cfg, model, pairs)
    final = json.loads((free_run / "summary.json").read_text())["validation"]  # the weights in final/
    assert float(margins.mean()) == pytest.approx(final["logp_chosen"] - final["logp_rejected"], rel=1e-4)
    result = evaluate(cfg, [free_run])
    c = result.report["comparisons"][free_run.name]
    assert set(c) == {"preference_accuracy", "logp_margin"} and c["logp_margin"]["delta"] > 0
