"""The same training under torchrun with 2 CPU processes (gloo) matches one process with the same global batch."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.conftest import REPO
from tests.train_helpers import adapter_weights, chat_rows, losses, make_train_project
from tuneloop import config
from tuneloop.train import checkpoint, sft

CPU_CONFIG = REPO / "examples" / "accelerate" / "cpu_2proc.yaml"
LAUNCHERS = {
    "torchrun": ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"],
    "accelerate": ["-m", "accelerate.commands.launch", "--config_file", str(CPU_CONFIG)],
}


@pytest.mark.parametrize("launcher", sorted(LAUNCHERS))
def test_two_processes_match_one_with_the_same_global_batch(tmp_path: Path, tiny_llama: Path, launcher: str):
    # The validation split must NOT fill every 2 × 2 batch: Accelerate then repeats rows to even out the
    # processes' last batches, and the distributed validation loss must still equal one process's.
    for n in range(80, 120):
        path = make_train_project(
            tmp_path / f"rows{n}", tiny_llama, rows=chat_rows(n), max_steps=4, batch_size=4, eval_every=2, save_every=2
        )
        if sum(1 for _ in (path.parent / "data/prepared/val.jsonl").open()) % 4 != 0:
            break
    tmp_path = path.parent
    single = sft.train(config.load(path))

    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    command = [sys.executable, *LAUNCHERS[launcher]]
    command += ["-m", "tuneloop", "train", "--config", str(path), "--set", "train.batch_size=2"]
    done = run_in_own_group(command, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    folders = [p for p in (tmp_path / "runs").iterdir() if p.is_dir()]  # not the registry's files
    runs = sorted(folders, key=lambda p: p.stat().st_mtime)
    assert len(runs) == 2, "both ranks must share one run folder"
    double = runs[-1]
    assert double != single.run_dir
    assert losses(double) == pytest.approx(losses(single.run_dir), rel=1e-5)
    evals = [
        [r["eval_loss"] for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if "eval_loss" in r]
        for run in (single.run_dir, double)
    ]
    assert evals[1] == pytest.approx(evals[0], rel=1e-5)
    a, b = adapter_weights(single.run_dir / "final"), adapter_weights(double / "final")
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-4, atol=1e-6)
    summary = json.loads((double / "summary.json").read_text())
    assert summary["processes"] == 2
    assert summary["this_session"]["trained_tokens"] == single.summary["this_session"]["trained_tokens"]
    assert "checkpoint-4" in {p.name for p in (double / "checkpoints").iterdir()}


@pytest.mark.parametrize("name", ["ddp", "fsdp", "deepspeed_zero2", "deepspeed_zero3", "cpu_2proc"])
def test_shipped_accelerate_configs_load(name: str):
    from accelerate.commands.config.config_args import load_config_from_file

    loaded = load_config_from_file(str(REPO / "examples" / "accelerate" / f"{name}.yaml"))
    assert loaded.num_processes >= 2


# Each rank trains; only rank 1 gets the signal or the NaN, during training step 3. Each rank writes what it saw.
ONE_RANK_SCRIPT = """
import json, os, signal, sys
from tuneloop import config
from tuneloop.errors import UserError
from tuneloop.train import checkpoint, sft
from tests.train_helpers import sigterm_at_training_step

mode, path, out = sys.argv[1:]
rank = int(os.environ["RANK"])
real = sft.token_loss
calls = {"n": 0}
def nan_on_rank_1(model, batch):
    loss_sum, count, correct = real(model, batch)
    calls["n"] += model.training
    if rank == 1 and model.training and calls["n"] == 3:
        loss_sum = loss_sum * float("nan")
    return loss_sum, count, correct
if mode == "sigterm" and rank == 1:
    sft.token_loss = sigterm_at_training_step(3, real)
if mode == "nan":
    sft.token_loss = nan_on_rank_1
try:
    result = sft.train(config.load(path, ["train.batch_size=2"]))
    seen = {"status": result.status, "steps": result.steps, "signal": result.summary["signal"]}
except UserError as e:
    seen = {"error": str(e)}
with open(f"{out}.{rank}", "w") as f:
    json.dump(seen, f)
"""


@pytest.mark.parametrize("mode", ["sigterm", "nan"])
def test_a_stop_seen_by_one_rank_is_agreed_by_all(tmp_path: Path, tiny_llama: Path, mode: str):
    path = make_train_project(tmp_path, tiny_llama, max_steps=6, batch_size=4, eval_every=10, save_every=10)
    script = tmp_path / "one_rank.py"
    script.write_text(ONE_RANK_SCRIPT)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "PYTHONPATH": _pythonpath()}
    command = [sys.executable, *LAUNCHERS["torchrun"], str(script), mode, str(path), str(tmp_path / "seen")]
    # Without agreement the other rank walks into the next step's collective and waits there for ever.
    done = run_in_own_group(command, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    seen = [json.loads((tmp_path / f"seen.{rank}").read_text()) for rank in (0, 1)]
    if mode == "sigterm":
        assert seen[0] == seen[1] == {"status": "stopped", "steps": 3, "signal": "SIGTERM"}
        (run,) = [p for p in (tmp_path / "runs").iterdir() if p.is_dir()]
        assert checkpoint.latest(run / "checkpoints").name == "checkpoint-3"
    else:
        for rank in (0, 1):
            assert "the loss became nan on process 1 at step 3" in seen[rank]["error"]


def run_in_own_group(command: list[str], env: dict[str, str], timeout: float) -> subprocess.CompletedProcess:
    """Run a launcher in its own process group; on a timeout kill the whole group, so no rank outlives the test."""
    with subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, start_new_session=True
    ) as child:
        try:
            out, err = child.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(child.pid, signal.SIGKILL)
            out, err = child.communicate()
            pytest.fail(f"{command[:4]} did not finish in {timeout} s (a rank waiting in a collective?): {err[-2000:]}")
    return subprocess.CompletedProcess(command, child.returncode, out, err)


def _pythonpath() -> str:
    # The repository root (for tests.train_helpers) without changing which tuneloop the caller runs.
    return os.pathsep.join(p for p in [str(REPO), os.environ.get("PYTHONPATH", ""), str(REPO / "src")] if p)
