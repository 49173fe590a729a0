"""GRPO (`method.name: grpo`): learning from a reward, the guard, resume, pinned losses, the shared renderer."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.train_helpers import chat_rows, make_train_project
from tuneloop.errors import UserError

VOWELS = "def reward(prompt, response):\n    return sum(c in 'aeiou' for c in response) / max(len(response), 1)\n"


def grpo_project(root: Path, model: Path, module: str, source: str = VOWELS, steps: int = 8, **train) -> Path:
    """A prepared chat project whose GRPO reward is `module`:reward, written beside the config."""
    root.mkdir(parents=True, exist_ok=True)
    (root / f"{module}.py").write_text(source)
    settings = {"max_steps": steps, "batch_size": 4, "learning_rate": 1e-2, "save_every": 3, **train}
    return make_train_project(root, model, rows=chat_rows(16, max_words=6), **settings)


def grpo_config(path: Path, module: str, *extra: str):
    from tuneloop import config

    settings = [
        "method.name=grpo",
        f"method.grpo.rewards=[{module}:reward]",
        "method.grpo.adapter=full",
        "method.grpo.max_completion_length=8",
        "method.grpo.num_generations=4",
    ]
    return config.load(path, [*settings, *extra])


def logged(run_dir: Path, key: str) -> list[float]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [row[key] for row in rows if key in row]


def test_grpo_raises_the_mean_reward_and_logs_reward_kl_and_length(tmp_path, tiny_llama):
    from tuneloop.train import grpo

    cfg = grpo_config(
        grpo_project(tmp_path, tiny_llama, "vowels_a", steps=12), "vowels_a", "method.grpo.guard.max_kl=null"
    )
    result = grpo.train(cfg)
    assert result.status == "completed" and (result.final_dir / "model.safetensors").is_file()
    rewards = logged(result.run_dir, "reward")
    assert len(rewards) == 12
    assert sum(rewards[-3:]) / 3 > sum(rewards[:3]) / 3 + 0.03  # the share of vowels the policy writes went up
    kl = logged(result.run_dir, "kl")
    assert kl[0] == 0.0 and kl[-1] > 0  # the policy starts as the reference, then moves away from it
    assert logged(result.run_dir, "completions/mean_length")
    assert json.loads((result.run_dir / "summary.json").read_text())["status"] == "completed"


def test_grpo_losses_are_pinned_on_cpu(tmp_path, tiny_llama):
    from tuneloop.train import grpo

    cfg = grpo_config(grpo_project(tmp_path, tiny_llama, "vowels_b", steps=4), "vowels_b")
    run_dir = grpo.train(cfg).run_dir
    assert logged(run_dir, "loss") == pytest.approx(PINNED_LOSSES, abs=1e-5)
    assert logged(run_dir, "reward") == pytest.approx(PINNED_REWARDS, abs=1e-5)


# Seeded, fp32 on CPU (TRL 1.16, torch as in constraints.txt). Step 1's loss is 0: the policy is its own reference.
PINNED_LOSSES = [4.470348358154297e-08, -0.010708587244153023, 0.001133541576564312, -0.1531045287847519]
PINNED_REWARDS = [0.14058946073055267, 0.19184894859790802, 0.1719706952571869, 0.15755146741867065]


def test_a_kl_blowup_stops_the_run_with_a_checkpoint(tmp_path, tiny_llama):
    from tuneloop.train import checkpoint, grpo

    path = grpo_project(tmp_path, tiny_llama, "vowels_c", steps=8, learning_rate=5e-2, save_every=100)
    cfg = grpo_config(path, "vowels_c", "method.grpo.guard.max_kl=0.001")
    with pytest.raises(
        UserError, match=r"GRPO stopped at step (\d+): KL blow-up.*above method.grpo.guard.max_kl 0.001"
    ):
        grpo.train(cfg)
    run_dir = next(d for d in (tmp_path / "runs").iterdir() if d.is_dir())  # runs/ also holds registry.sqlite
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "guard_stopped" and summary["final"] is None
    saved = checkpoint.latest(run_dir / "checkpoints")
    assert saved is not None and checkpoint.step_of(saved) == summary["guard"]["step"] < 8  # saved at the stop
    assert not (run_dir / "final").exists()


def guard_for(**settings):
    from tuneloop.config_grpo import GrpoGuardConfig
    from tuneloop.train.grpo import RewardHackingGuard, Watcher

    class Cfg:
        class method:
            class grpo:
                guard = GrpoGuardConfig(**settings)

    return RewardHackingGuard(Cfg, Watcher(), None)


class Control:
    should_save = should_training_stop = False


class Args:
    num_generations = 4


class State:
    global_step = 7


def test_the_guard_stops_on_length_explosion_and_on_collapse_over_a_window():
    guard, control = guard_for(max_length_growth=3.0), Control()
    guard.on_log(Args, State, control, logs={"completions/mean_length": 10.0})
    guard.on_log(Args, State, control, logs={"completions/mean_length": 29.0})
    assert not control.should_training_stop
    guard.on_log(Args, State, control, logs={"completions/mean_length": 31.0})
    assert control.should_training_stop and control.should_save and "length explosion" in guard.stop.reason

    guard, control = guard_for(max_collapsed_share=0.5, window=3), Control()
    same, mixed = ["x", "x", "x", "x"], ["x", "y", "x", "x"]
    for answers_a, answers_b in [(same, same), (same, same), (same, mixed), (same, same), (same, same)]:
        guard.watcher.see(["a"] * 4 + ["b"] * 4, answers_a + answers_b)
        guard.on_step_end(Args, State, control)
        assert not control.should_training_stop  # half the prompts collapsed is not more than half; a gap resets
    guard.watcher.see(["a"] * 4 + ["b"] * 4, same + same)
    guard.on_step_end(Args, State, control)
    assert control.should_training_stop and "collapse: for 3 steps" in guard.stop.reason


def test_grpo_resumes_from_its_checkpoint_where_an_uninterrupted_run_would_be(tmp_path, tiny_llama):
    from tuneloop.train import checkpoint, grpo

    full = grpo.train(grpo_config(grpo_project(tmp_path / "a", tiny_llama, "vowels_d", steps=6), "vowels_d"))
    stopper = VOWELS.replace(
        "def reward(prompt, response):\n",
        "import os, signal\ncalls = []\n\ndef reward(prompt, response):\n"
        "    calls.append(1)\n"
        "    if len(calls) == 3 * 16:  # the last answer of step 3 (4 prompts x 4 answers a step)\n"
        "        os.kill(os.getpid(), signal.SIGTERM)\n",
    )
    path = grpo_project(tmp_path / "b", tiny_llama, "vowels_e", stopper, steps=6)
    stopped = grpo.train(grpo_config(path, "vowels_e"))
    assert stopped.status == "stopped" and stopped.steps == 3
    assert checkpoint.step_of(checkpoint.latest(stopped.run_dir / "checkpoints")) == 3
    resumed = grpo.train(grpo_config(path, "vowels_e"), resume=stopped.run_dir)
    assert resumed.status == "completed" and resumed.steps == 6
    rows = [json.loads(line) for line in (stopped.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [row["step"] for row in rows if "loss" in row] == [1, 2, 3, 4, 5, 6]  # each step once across both sessions
    # The stop falls at the end of the first epoch (12 prompts, 4 a step), so the resumed process must draw the
    # second epoch's prompt order, not the first's again (train/grpo.py's PromptOrder); the RNG state is
    # restored, so the same answers are sampled: prompts (their token counts), rewards and losses are exactly
    # those of the uninterrupted run.
    for key in ("num_tokens", "reward", "loss", "kl", "grad_norm"):
        assert logged(resumed.run_dir, key) == logged(full.run_dir, key), key


def test_prompts_are_rendered_by_the_shared_renderer(tmp_path, tiny_llama):
    from tuneloop import config
    from tuneloop.data.prepared import load_split
    from tuneloop.data.render import Renderer
    from tuneloop.models import load_causal_lm
    from tuneloop.train.grpo import prompt_rows

    cfg = config.load(grpo_project(tmp_path, tiny_llama, "vowels_f"))
    examples, _ = load_split(cfg, "train")
    _, tokenizer = load_causal_lm(str(tiny_llama))
    rows = prompt_rows(examples, tokenizer, 256)
    renderer = Renderer(tokenizer)
    for example, row in zip(examples, rows, strict=True):
        ids = renderer.prompt_ids(example.messages[:-1])
        assert tokenizer(text=[row["prompt"]])["input_ids"][0] == ids  # what TRL tokenizes is the renderer's
        assert row["reference"] == example.messages[-1]["content"] and row["id"] == example.id


def test_grpo_config_mistakes_are_clear(tmp_path, tiny_llama):
    from tuneloop import config
    from tuneloop.train import grpo

    path = grpo_project(tmp_path, tiny_llama, "vowels_g")
    with pytest.raises(UserError, match="weights has 1 values for 2 rewards"):
        config.load(path, ["method.name=grpo", "method.grpo.rewards=[json_valid,length]", "method.grpo.weights=[1]"])
    with pytest.raises(UserError, match=r"method\.grpo\.rewards is empty"):
        grpo.train(config.load(path, ["method.name=grpo"]))
    with pytest.raises(UserError, match=r"reward json_schema validates against eval\.json_schema"):
        grpo.train(config.load(path, ["method.name=grpo", "method.grpo.rewards=[json_schema]"]))


def test_builtin_rewards():
    from tuneloop.train import rewards

    assert rewards.json_valid("q", ' {"a": 1} ') == 1.0
    assert rewards.json_valid("q", '```json\n{"a": 1}\n```') == 0.0
    assert rewards.json_valid("q", '{"a": NaN}') == 0.0
    schema = {"type": "object", "required": ["a"], "properties": {"a": {"type": "integer"}}}
    valid = rewards.load("json_schema", schema=schema)
    assert (valid("q", '{"a": 1}'), valid("q", '{"a": "x"}'), valid("q", "nope")) == (1.0, 0.0, 0.0)
    assert rewards.exact_match("q", " Paris\n", "Paris") == 1.0 and rewards.exact_match("q", "paris", "Paris") == 0.0
    with pytest.raises(ValueError, match="needs a reference"):
        rewards.exact_match("q", "Paris", None)
    reference = '{"category": "refund", "priority": "high", "product": null, "order_id": "ORD-1"}'
    fields = rewards.load("json_fields")
    assert fields("q", reference, reference) == 1.0
    assert fields("q", '{"category":"refund","priority":"low","product":null,"order_id":"ORD-1"}', reference) == 0.75
    assert fields("q", '{"category":"refund","product":"null"}', reference) == 0.25  # "null" is not null
    assert (fields("q", "refund, high", reference), fields("q", "[1]", reference)) == (0.0, 0.0)
    with pytest.raises(ValueError, match="not a JSON object: use exact_match"):
        fields("q", "Paris", "Paris")
    length = rewards.load("length", max_chars=10)
    assert (length("q", "x" * 10), length("q", "x" * 20), length("q", "x" * 30)) == (0.0, -1.0, -2.0)
    with pytest.raises(UserError, match="unknown reward 'jsonvalid'"):
        rewards.load("jsonvalid")


def test_user_rewards_take_two_or_three_arguments(tmp_path):
    from tuneloop.train import rewards

    (tmp_path / "user_rewards_h.py").write_text(
        "def two(prompt, response):\n    return len(response)\n"
        "def three(prompt, response, reference):\n    return float(response == reference)\n"
        "def bad(prompt, response):\n    return 'high'\n"
    )
    assert rewards.load("user_rewards_h:two", root=tmp_path)("q", "abc", "x") == 3.0
    assert rewards.load("user_rewards_h:three", root=tmp_path)("q", "x", "x") == 1.0
    with pytest.raises(ValueError, match="returned 'high', not a number"):
        rewards.load("user_rewards_h:bad", root=tmp_path)("q", "x", None)
    with pytest.raises(UserError, match="has no function 'missing'"):
        rewards.load("user_rewards_h:missing", root=tmp_path)


def test_a_tokenizer_that_does_not_round_trip_the_rendered_prompt_is_refused(tmp_path, tiny_llama):
    from tuneloop import config
    from tuneloop.data.prepared import load_split
    from tuneloop.models import load_causal_lm
    from tuneloop.train.grpo import prompt_rows

    cfg = config.load(grpo_project(tmp_path, tiny_llama, "vowels_i"))
    examples, _ = load_split(cfg, "train")
    _, tokenizer = load_causal_lm(str(tiny_llama))

    class AddsAToken(type(tokenizer)):  # as a tokenizer that puts a BOS before any text it is given
        def __call__(self, *args, **kwargs):
            encoded = super().__call__(*args, **kwargs)
            if "text" in kwargs:  # how GRPOTrainer calls it; the renderer's own calls stay as they were
                encoded["input_ids"] = [[0, *ids] for ids in encoded["input_ids"]]
            return encoded

    tokenizer.__class__ = AddsAToken
    with pytest.raises(UserError, match="does not tokenize back to the renderer's ids"):
        prompt_rows(examples, tokenizer, 256)


def test_grpo_starts_from_an_sft_run_which_is_its_kl_reference(tmp_path, tiny_llama):
    from tuneloop import config, runs
    from tuneloop.train import grpo, sft

    path = grpo_project(tmp_path, tiny_llama, "vowels_j", steps=3)
    sft_run = sft.train(config.load(path, ["train.learning_rate=0.05"])).run_dir
    cfg = grpo_config(path, "vowels_j", f"method.grpo.start={sft_run}", "method.grpo.adapter=lora")
    result = grpo.train(cfg)
    # Step 1's KL is 0 only if the reference is the policy's start, the SFT model (the base would differ).
    assert logged(result.run_dir, "kl")[0] == 0.0
    assert not (result.final_dir / "adapter_config.json").exists()  # the whole model: SFT and GRPO folded in
    tuned, _ = runs.load_final(cfg, result.run_dir)
    started, _ = runs.load_final(cfg, sft_run)
    assert tuned.num_parameters() == runs.merged_for_inference(started).num_parameters()
    with pytest.raises(UserError, match="needs adapter lora or dora"):
        grpo_config(path, "vowels_j", f"method.grpo.start={sft_run}")  # adapter full


def test_what_grpo_does_not_do_is_refused_when_the_config_loads(tmp_path, tiny_llama):
    from tuneloop import config

    path = grpo_project(tmp_path, tiny_llama, "vowels_k")
    with pytest.raises(UserError, match=r"grpo does not size its run by time yet"):
        config.load(path, ["method.name=grpo", "train.time_budget=5m", "train.max_steps=null"])
    with pytest.raises(UserError, match=r"grpo runs no validation pass.*drop train\.track_forgetting"):
        config.load(path, ["method.name=grpo", "train.track_forgetting=true"])
