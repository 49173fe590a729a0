"""Resume that can fail: dropout, an epoch boundary, a kill during a checkpoint write, and a full disk."""

from __future__ import annotations

import errno
import io
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.train_helpers import adapter_weights, chat_rows, losses, make_train_project
from tuneloop import config
from tuneloop.errors import UserError
from tuneloop.train import checkpoint, sft

DROPOUT = "method.lora.dropout=0.1"  # resume must restore the RNG for the dropout masks to match


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory, tiny_llama: Path) -> Path:
    """32 train examples in batches of 4: an epoch is 8 steps, so a resume from step 4 crosses one."""
    return make_train_project(
        tmp_path_factory.mktemp("resume"), tiny_llama, chat_rows(40), max_steps=12, save_every=4, eval_every=4
    )


def metric_steps(run_dir: Path, key: str) -> list[int]:
    rows = map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines())
    return [row["step"] for row in rows if key in row]


# The child trains and kills itself (SIGKILL, no cleanup) in the middle of writing checkpoint-8.
KILLERS = {
    # while Trainer writes the files into the staging folder: the optimizer state half written
    "mid-file": (
        "real_save = torch.save\n"
        "def save(obj, f, *a, **k):\n"
        "    if 'checkpoint-8' in str(f):\n"
        "        buf = io.BytesIO(); real_save(obj, buf, *a, **k)\n"
        "        open(f, 'wb').write(buf.getvalue()[: len(buf.getvalue()) // 2])\n"
        "        os.kill(os.getpid(), signal.SIGKILL)\n"
        "    return real_save(obj, f, *a, **k)\n"
        "torch.save = save\n"
    ),
    # after the rename into checkpoints/checkpoint-8, before its COMPLETE marker
    "before-marker": (
        "real_commit = checkpoint.commit\n"
        "def commit(staged, checkpoints, step, info):\n"
        "    if step == 8:\n"
        "        os.replace(staged, checkpoints / f'checkpoint-{step}')\n"
        "        os.kill(os.getpid(), signal.SIGKILL)\n"
        "    return real_commit(staged, checkpoints, step, info)\n"
        "checkpoint.commit = commit\n"
    ),
}


@pytest.mark.parametrize("when", sorted(KILLERS))
def test_kill_during_a_checkpoint_write_resumes_exactly_across_an_epoch(small: Path, when: str):
    straight = sft.train(config.load(small, [DROPOUT]))
    script = (
        "import io, os, signal, torch\n"
        "from tuneloop import config\n"
        "from tuneloop.train import checkpoint, sft\n"
        + KILLERS[when]
        + f"sft.train(config.load({str(small)!r}, [{DROPOUT!r}]))\n"
    )
    runs_dir = small.parent / "runs"
    before = set(runs_dir.iterdir())
    child = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600)
    assert child.returncode == -9, child.stderr[-2000:]
    (run_dir,) = {p for p in set(runs_dir.iterdir()) - before if p.is_dir()}
    assert checkpoint.latest(run_dir / "checkpoints").name == "checkpoint-4"
    assert 8 in metric_steps(run_dir, "loss")  # the killed run had logged past its last checkpoint

    resumed = sft.train(config.load(small, [DROPOUT]), resume=run_dir)
    assert resumed.status == "completed" and resumed.steps == 12
    # The last step's weights, not final/ (which holds the best checkpoint's).
    a = adapter_weights(straight.run_dir / "checkpoints" / "checkpoint-12")
    b = adapter_weights(run_dir / "checkpoints" / "checkpoint-12")
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=1e-6)
    assert losses(run_dir) == pytest.approx(losses(straight.run_dir), rel=1e-6)
    for key in ("loss", "eval_loss"):
        steps = metric_steps(run_dir, key)
        assert steps == sorted(set(steps)), f"{key} logged twice for a step: {steps}"
        assert steps == metric_steps(straight.run_dir, key)


def test_disk_full_during_a_save_keeps_the_previous_checkpoint(small: Path, monkeypatch: pytest.MonkeyPatch):
    real_save = torch.save

    def full_at_step_8(obj, f, *args, **kwargs):
        if "checkpoint-8" in str(f):  # the disk fills up half way through the optimizer state
            buffer = io.BytesIO()
            real_save(obj, buffer, *args, **kwargs)
            Path(f).write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
            raise OSError(errno.ENOSPC, "No space left on device", str(f))
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", full_at_step_8)
    with pytest.raises(UserError) as caught:
        sft.train(config.load(small))
    message = str(caught.value)
    assert "the disk filled up while writing a checkpoint" in message
    assert re.search(r"Free at least \d+(\.\d+)? (MB|GB) on that disk", message), message
    run_dir = max((p for p in (small.parent / "runs").iterdir() if p.is_dir()), key=lambda p: p.stat().st_mtime)
    assert f"{run_dir / 'checkpoints' / 'checkpoint-4'} is complete and untouched" in message
    assert not (run_dir / "checkpoints" / checkpoint.STAGING).exists()  # the partial write's space is given back
    assert [p.name for p in checkpoint.complete(run_dir / "checkpoints")] == ["checkpoint-4"]

    monkeypatch.setattr(torch, "save", real_save)
    resumed = sft.train(config.load(small), resume=run_dir)
    assert resumed.status == "completed" and resumed.steps == 12
