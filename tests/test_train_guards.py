"""Training guards (issue 20): fp16 overflow, DeepSpeed, exit codes, loud failures, token counts, pickled weights."""

from __future__ import annotations

import json
import shutil
import signal
import threading
from collections import defaultdict
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from transformers import TrainerControl, TrainerState

from tests.train_helpers import make_train_project, sigterm_at_training_step
from tuneloop import config, runs
from tuneloop.errors import UserError
from tuneloop.train import checkpoint, sft


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory, tiny_llama: Path) -> Path:
    return make_train_project(tmp_path_factory.mktemp("guards"), tiny_llama)


def load(path: Path, *overrides: str) -> config.ProjectConfig:
    return config.load(path, list(overrides))


def newest_run(project: Path) -> Path:
    return max((p for p in (project.parent / "runs").iterdir() if p.is_dir()), key=lambda p: p.stat().st_mtime)


def with_cpu_grad_scaler(monkeypatch: pytest.MonkeyPatch) -> None:
    """fp16's loss scaler on CPU. Accelerate only creates one on GPUs, so it is put in place by hand: the
    real torch.amp.GradScaler, which scales the loss, skips a step whose gradients are not finite and
    halves its scale, exactly as on a GPU."""
    real = sft.make_trainer_class

    def make():
        cls = real()

        class Scaled(cls):
            def create_accelerator_and_postprocess(self):
                super().create_accelerator_and_postprocess()
                self.accelerator.scaler = torch.amp.GradScaler("cpu", init_scale=2.0**8)

        return Scaled

    monkeypatch.setattr(sft, "make_trainer_class", make)


def poison_training(monkeypatch: pytest.MonkeyPatch, steps: set[int], how: str) -> dict[int, list[str]]:
    """Make the training loss (how="loss") or its gradient (how="grad") non-finite at the given calls;
    return the example ids of each poisoned call."""
    real = sft.token_loss
    calls = {"n": 0}
    poisoned: dict[int, list[str]] = {}

    def loss(model, batch):
        loss_sum, count, correct = real(model, batch)
        calls["n"] += model.training
        if model.training and calls["n"] in steps:
            poisoned[calls["n"]] = list(batch["example_ids"])
            if how == "loss":
                loss_sum = loss_sum * float("nan")
            else:
                loss_sum.register_hook(lambda grad: grad * float("inf"))
        return loss_sum, count, correct

    monkeypatch.setattr(sft, "token_loss", loss)
    return poisoned


# --------------------------------------------------------------------------- fp16 and DeepSpeed (item 3)


def test_fp16_overflow_is_skipped_by_the_scaler_not_fatal(
    project: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
):
    with_cpu_grad_scaler(monkeypatch)
    poison_training(monkeypatch, {3}, "grad")
    result = sft.train(load(project))
    assert result.status == "completed" and result.steps == 10
    err = capsys.readouterr().err
    assert "fp16 with a loss scaler" in err
    assert "step 3: the gradients overflowed and the loss scaler skipped this update (scale now 128)" in err
    assert err.count("loss scaler skipped") == 1  # the next steps were applied, and reset the count


def test_fp16_stops_after_repeated_non_finite_losses(project: Path, monkeypatch: pytest.MonkeyPatch):
    with_cpu_grad_scaler(monkeypatch)
    monkeypatch.setattr("tuneloop.train.guards.SKIPPED_STEPS_LIMIT", 3)
    poisoned = poison_training(monkeypatch, set(range(3, 11)), "loss")
    with pytest.raises(
        UserError, match=r"3 optimizer steps in a row overflowed .*\(scale now 32\) at step 5"
    ) as caught:
        sft.train(load(project))
    assert all(i in str(caught.value) for i in poisoned[5])


def test_deepspeed_guard_reads_the_engines_norm(capsys: pytest.CaptureFixture):
    """DeepSpeed leaves no p.grad: the guard says so and checks the engine's global norm after each step."""
    from tuneloop.train.guards import NonFiniteError, StepGuard, non_finite_message

    class Engine:  # the accelerate DeepSpeedEngineWrapper method the guard reads
        norm: float | None = 1.0

        def get_global_grad_norm(self):
            return self.norm

    accelerator = SimpleNamespace(
        scaler=None, num_processes=1, deepspeed_engine_wrapped=Engine(), optimizer_step_was_skipped=False
    )
    model = torch.nn.Linear(2, 2)  # no .grad anywhere, as under ZeRO
    trainer = SimpleNamespace(accelerator=accelerator, is_deepspeed_enabled=True, step_example_ids=["a:1"], model=model)
    guard, state, control = StepGuard(trainer), TrainerState(), TrainerControl()
    guard.on_train_begin(None, state, control)
    assert "DeepSpeed owns the gradients, so the per-parameter NaN/inf check is off" in capsys.readouterr().err
    state.global_step = 1
    guard.on_pre_optimizer_step(None, state, control, model=model)
    guard.on_step_end(None, state, control)
    state.global_step, accelerator.optimizer_step_was_skipped = 2, True
    Engine.norm = float("inf")  # DeepSpeed's fp16 optimizer skipped the overflowing step
    guard.on_step_end(None, state, control)
    assert "step 2: the gradients overflowed and the loss scaler skipped" in capsys.readouterr().err
    state.global_step, accelerator.optimizer_step_was_skipped = 3, False
    Engine.norm = float("nan")  # ... but here it applied one
    with pytest.raises(NonFiniteError) as caught:
        guard.on_step_end(None, state, control)
    assert caught.value.applied and caught.value.step == 3 and caught.value.example_ids == ["a:1"]
    message = non_finite_message(caught.value, None)
    assert "DeepSpeed applied a step whose gradient norm was nan at step 3" in message
    assert "had already applied the step" in message


# --------------------------------------------------------------------------- stopping (items 5 and 6)


@pytest.mark.parametrize(("sig", "code"), [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_a_stopped_training_exits_non_zero(project: Path, cli, monkeypatch: pytest.MonkeyPatch, sig, code: int):
    monkeypatch.setattr(sft, "token_loss", sigterm_at_training_step(2, sft.token_loss, sig))
    done = cli("train", "--config", project, "--set", "train.max_steps=4")
    assert done.code == code, done.err
    assert "status    stopped at step 2/4" in done.out
    assert json.loads((newest_run(project) / "summary.json").read_text())["signal"] == sig.name


def test_signal_handling_off_the_main_thread_is_reported(capsys: pytest.CaptureFixture):
    from tuneloop.train.callbacks import GracefulStop

    stop = GracefulStop()
    worker = threading.Thread(target=stop.install)
    worker.start()
    worker.join()
    assert "off the main thread" in capsys.readouterr().err
    assert signal.getsignal(signal.SIGTERM) is not stop._handle


def test_a_non_finite_validation_loss_stops_the_run(project: Path, monkeypatch: pytest.MonkeyPatch):
    real_loss, real_stats = sft.token_loss, sft.example_losses
    calls = {"n": 0}

    def counting(model, batch):
        calls["n"] += 1  # training steps taken
        return real_loss(model, batch)

    def nan_in_validation(model, batch):
        stats = real_stats(model, batch)
        if calls["n"] >= 5:  # the validation after step 5
            stats[:, 0] = float("nan")
        return stats

    monkeypatch.setattr(sft, "token_loss", counting)
    monkeypatch.setattr(sft, "example_losses", nan_in_validation)
    with pytest.raises(UserError, match=r"the validation metric eval_loss is nan at step 5") as caught:
        sft.train(load(project))
    assert "No checkpoint was written for this evaluation" in str(caught.value)
    assert checkpoint.complete(newest_run(project) / "checkpoints") == []


def test_prepared_data_without_a_template_hash_is_refused(project: Path, tmp_path: Path):
    copy = tmp_path / "project"
    shutil.copytree(project.parent, copy, ignore=shutil.ignore_patterns("runs"))
    manifest_path = copy / "data" / "prepared" / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    del manifest["chat_template_sha256"]
    manifest_path.write_text(json.dumps(manifest))
    with pytest.raises(UserError, match="records no chat template hash"):
        sft.train(load(copy / "tuneloop.yaml"))


# --------------------------------------------------------------------------- the loss's token count (test 11)


def test_trainer_passes_each_steps_token_count_even_across_an_uneven_epoch_end(
    project: Path, monkeypatch: pytest.MonkeyPatch
):
    """Micro-batches of 4 with grad_accum 3, over a train split whose size leaves the epoch's last step
    short. Every call must get the token count of its whole step, never None."""
    rows = sum(1 for _ in (project.parent / "data/prepared/train.jsonl").open())
    micro = -(-rows // 4)  # micro-batches per epoch
    epoch = [3] * (micro // 3) + ([micro % 3] if micro % 3 else [])
    expected = (epoch * 8)[:8]
    assert any(n < 3 for n in expected), f"{rows} train rows make no short step in 8; the test needs one"
    seen: list[tuple[int, object, int]] = []
    real = sft.make_trainer_class

    def make():
        cls = real()

        class Spy(cls):
            def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
                trained = int((inputs["shift_labels"] != -100).sum())
                seen.append((self.state.global_step, num_items_in_batch, trained))
                return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)

        return Spy

    monkeypatch.setattr(sft, "make_trainer_class", make)
    result = sft.train(load(project, "train.grad_accum=3", "train.max_steps=8", "train.eval_every=100"))
    assert result.steps == 8
    assert all(n is not None for _, n, _ in seen)
    per_step: dict[int, list[tuple[int, int]]] = defaultdict(list)
    for step, n, trained in seen:
        per_step[step].append((int(n), trained))
    assert [len(calls) for calls in per_step.values()] == expected
    for calls in per_step.values():
        assert {n for n, _ in calls} == {sum(t for _, t in calls)}


def test_compute_loss_refuses_a_missing_token_count(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(sft, "token_loss", lambda model, batch: (torch.tensor(2.0), torch.tensor(4), torch.tensor(1)))
    fake = SimpleNamespace(
        state=SimpleNamespace(global_step=0),
        _ids_step=-1,
        step_example_ids=[],
        args=SimpleNamespace(average_tokens_across_devices=True, world_size=1),
        tokens={"trained": 0, "real": 0, "computed": 0},
    )
    model = SimpleNamespace(training=False)
    with pytest.raises(RuntimeError, match="did not pass num_items_in_batch"):
        sft.make_trainer_class().compute_loss(fake, model, {"example_ids": ["a:1"]}, num_items_in_batch=None)


# --------------------------------------------------------------------------- pickled weights (item 7)


def test_a_pickled_adapter_is_refused_when_a_run_is_loaded(tmp_path: Path, tiny_llama: Path):
    from peft import LoraConfig, get_peft_model

    from tuneloop import models

    base, _ = models.load_causal_lm(str(tiny_llama), "float32", False)
    adapted = get_peft_model(base, LoraConfig(r=2, target_modules=["q_proj"]))
    final = tmp_path / "run" / "final"
    adapted.save_pretrained(str(final), safe_serialization=False)
    models.load_tokenizer(tiny_llama).save_pretrained(str(final))  # all a run's final/ holds, the pickle aside
    assert (final / "adapter_model.bin").is_file()
    (tmp_path / "tuneloop.yaml").write_text(f"task:\n  objective: x\n  type: chat\nmodel:\n  name: {tiny_llama}\n")
    with pytest.raises(UserError, match=r"holds pickled weights \(adapter_model.bin\)"):
        runs.load_final(config.load(tmp_path / "tuneloop.yaml"), tmp_path / "run")


def test_a_pickled_checkpoint_is_refused_on_resume(tmp_path: Path, project: Path):
    run = tmp_path / "run"
    staged = checkpoint.staging_dir(run / "checkpoints") / "checkpoint-3"
    staged.mkdir()
    (staged / "adapter_config.json").write_text("{}")
    torch.save({"w": torch.zeros(2)}, staged / "adapter_model.bin")
    checkpoint.commit(staged, run / "checkpoints", 3, {})
    with pytest.raises(UserError, match=r"checkpoint to resume .* holds pickled weights \(adapter_model.bin\)"):
        sft.run_folder(load(project), run)
