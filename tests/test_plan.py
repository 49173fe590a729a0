"""`tuneloop plan`: parameter counts, memory against real CPU training, fits, time and cost, the CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.train_helpers import make_train_project
from tuneloop import config, plan
from tuneloop.config import MethodConfig
from tuneloop.errors import UserError

# Big enough (29M parameters) that weights, optimizer states and activations dwarf allocator noise,
# small enough that two real training steps take seconds on two cores.
MEASURED_SHAPE = {
    "vocab_size": 8192,
    "hidden_size": 512,
    "intermediate_size": 1536,
    "num_hidden_layers": 8,
    "num_attention_heads": 8,
    "num_key_value_heads": 4,
    "tie_word_embeddings": True,
}
BATCH, SEQ = 4, 128

# Runs in a fresh interpreter so the allocator holds nothing from earlier tests. It trains the way
# `tuneloop train` does: the method applied by tuneloop.train.methods.wrap, the loss from
# sft.token_loss (logits only at trained positions, built by the real Collator), clipping, and the
# Trainer's default optimizer (fused AdamW), for two steps so the second runs with optimizer state.
MEASURE = r"""
import json, sys
import torch
from transformers import LlamaConfig, LlamaForCausalLM
from tuneloop.config import ProjectConfig
from tuneloop.train import methods
from tuneloop.data.batching import Collator
from tuneloop.train.sft import token_loss

def status(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024

shape, method, batch, seq = json.loads(sys.argv[1]), sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
cfg = ProjectConfig.model_validate({"task": {"objective": "measure", "type": "chat"}, "method": {"name": method}})
torch.manual_seed(0)
prompt = seq // 2  # the first half of each example is prompt, the second half is trained
items = [
    {"id": str(k), "input_ids": torch.randint(0, shape["vocab_size"], (seq,)).tolist(),
     "weights": [0.0] * prompt + [1.0] * (seq - prompt)}
    for k in range(batch)
]
data = Collator(pad_id=0, packed=False)(items)
try:
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # restart the high-water mark here, forgetting the imports' transient peak
except OSError:
    pass
before = status("VmRSS")
model = methods.wrap(LlamaForCausalLM(LlamaConfig(**shape)), cfg, gradient_checkpointing=False)
model.train()
params = [p for p in model.parameters() if p.requires_grad]
optimizer = torch.optim.AdamW(params, lr=1e-4, fused=True)
for _ in range(2):
    loss_sum, count, _ = token_loss(model, data)
    (loss_sum / count).backward()
    torch.nn.utils.clip_grad_norm_(params, 1.0)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
kept = int(data["logits_to_keep"].sum())
print(json.dumps({"peak": status("VmHWM") - before, "trained_fraction": kept / (batch * seq)}))
"""


def measure_training_memory(method: str) -> dict:
    """Peak RSS growth of real CPU training steps, from just before the model exists.

    glibc's malloc raises its mmap threshold each time a large block is freed, after which freed
    activations stay in the heap and RSS creeps up step after step (LoRA here: 346, 491, 552 MiB
    over three steps). Pinning the threshold makes large tensors come from mmap and go back on
    free, so peak RSS measures what training needs rather than how long it ran.
    """
    # One thread: on a busy two-core machine two OpenMP threads spin-wait on each other (7x slower
    # here), and the peak barely depends on the thread count.
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536", "OMP_NUM_THREADS": "1"}
    args = [json.dumps(MEASURED_SHAPE), method, str(BATCH), str(SEQ)]
    done = subprocess.run(
        [sys.executable, "-c", MEASURE, *args], env=env, capture_output=True, text=True, timeout=300, check=False
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def measured_shape() -> plan.ModelShape:
    from transformers import LlamaConfig

    return plan.shape_from_config(LlamaConfig(**MEASURED_SHAPE), "measured", "test")


@pytest.mark.parametrize("method", ["full", "lora"])
def test_memory_estimate_matches_real_cpu_training(method: str, measured_shape: plan.ModelShape):
    measured = measure_training_memory(method)
    estimate = plan.estimate_memory(
        measured_shape,
        MethodConfig(name=method),  # LoRA with the defaults: r=16, dropout 0.05, attention and MLP projections
        BATCH,
        SEQ,
        device="cpu",
        precision="fp32",
        trained_fraction=measured["trained_fraction"],
    )
    mib = 1024**2
    print(f"{method}: measured {measured['peak'] / mib:.0f} MiB, estimated {estimate.peak / mib:.0f} MiB")
    assert estimate.peak == pytest.approx(measured["peak"], rel=0.25)


# --------------------------------------------------------------------------- model shapes


@pytest.mark.parametrize(
    ("text", "count"),
    [("135M", 135_000_000), ("7B", 7_000_000_000), ("70b", 70_000_000_000), ("1.5B", 1_500_000_000),
     ("350K", 350_000), ("2T", 2_000_000_000_000), ("123456789", 123_456_789), (" 13 B ", 13_000_000_000)],
)  # fmt: skip
def test_parameter_count_strings(text: str, count: int):
    assert plan.parse_parameter_count(text) == count


@pytest.mark.parametrize("text", ["abc", "7X", "B", "", "org/model", "0.1", "7B-instruct"])
def test_not_parameter_counts(text: str):
    assert plan.parse_parameter_count(text) is None


def test_bare_count_gets_a_llama_shape():
    seven = plan.model_shape("7B")
    assert (seven.hidden, seven.layers, seven.intermediate, seven.vocab) == (4096, 32, 11008, 32000)
    assert seven.parameters == 6_738_415_616  # Llama-2-7B, counted from the meta-device model
    small = plan.model_shape("135M")
    assert abs(small.parameters - 135e6) < 0.1 * 135e6
    with pytest.raises(UserError, match="no Llama-like shape has about 1,000 parameters"):
        plan.model_shape("1K")


def test_local_folder_shape_reads_config(tiny_llama: Path):
    from transformers import AutoModelForCausalLM

    shape = plan.model_shape(str(tiny_llama))
    real = AutoModelForCausalLM.from_pretrained(str(tiny_llama))
    assert shape.parameters == sum(p.numel() for p in real.parameters())
    assert (shape.hidden, shape.layers, shape.kv_heads, shape.model_type) == (64, 2, 2, "llama")
    assert [m.name for m in shape.modules if m.head] == ["lm_head"]


def test_offline_hub_id_says_what_to_pass(monkeypatch: pytest.MonkeyPatch):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(UserError) as err:
        plan.model_shape("tuneloop-tests/not-a-cached-model")
    message = str(err.value)
    assert "tuneloop-tests/not-a-cached-model" in message
    assert "local folder" in message and "parameter count" in message


def test_no_connection_is_said_at_once_not_after_the_hub_clients_retries(monkeypatch: pytest.MonkeyPatch):
    import time

    from tuneloop import models

    monkeypatch.setattr(models, "hub_reachable", lambda timeout=3.0: False)
    start = time.perf_counter()
    with pytest.raises(UserError, match=r"tuneloop-tests/not-a-cached-model: no connection to https?://"):
        plan.model_shape("tuneloop-tests/not-a-cached-model")
    assert time.perf_counter() - start < 5  # huggingface_hub alone retries for ~25 s


def test_hub_reachable_tries_one_connection_and_trusts_a_proxy(monkeypatch: pytest.MonkeyPatch):
    import socket

    from tuneloop import models

    for var in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(var, raising=False)
    tries = []

    def refuse(address, timeout):
        tries.append((address, timeout))
        raise OSError("no route")

    monkeypatch.setattr(socket, "create_connection", refuse)
    assert models.hub_reachable(timeout=0.5) is False
    assert len(tries) == 1 and tries[0][1] == 0.5 and tries[0][0][1] in (80, 443)
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.example:3128")
    assert models.hub_reachable() is True and len(tries) == 1


def test_unknown_names_are_user_errors(tmp_path: Path):
    with pytest.raises(UserError, match="parameter count like 7B"):
        plan.model_shape("not a model")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match=r"no config\.json"):
        plan.model_shape(str(tmp_path / "empty"))


# --------------------------------------------------------------------------- trainable parameters


@pytest.mark.parametrize(
    "method",
    [
        {"name": "lora"},
        {"name": "lora", "lora": {"r": 8, "target_modules": "all-linear"}},
        {"name": "lora", "lora": {"r": 4, "target_modules": ["q_proj", "v_proj"]}},
        {"name": "dora", "lora": {"r": 8}},
        {"name": "lora", "lora": {"last_layers": 1}},
        {"name": "lora", "lora": {"target_modules": ["q_proj", "down_proj"], "last_layers": 1}},
        {"name": "prompt_tuning", "prompt": {"num_virtual_tokens": 7}},
        {"name": "prefix_tuning", "prompt": {"num_virtual_tokens": 5}},
        {"name": "full"},
    ],
)
def test_trainable_count_equals_peft(tiny_llama: Path, method: dict):
    from tuneloop.models import load_causal_lm
    from tuneloop.train import methods

    cfg = config.ProjectConfig.model_validate({"task": {"objective": "x", "type": "chat"}, "method": method})
    model, _ = load_causal_lm(str(tiny_llama), dtype="float32")
    wrapped = methods.wrap(model, cfg, gradient_checkpointing=False)
    expected = methods.count_parameters(wrapped).trainable
    assert plan.trainable_parameters(plan.model_shape(str(tiny_llama)), cfg.method) == expected


def test_last_layers_adapts_only_the_top_blocks_and_backprop_stops_below_them(tiny_llama: Path):
    """The point of method.lora.last_layers is the cheaper backward: the lower block must not join the graph."""
    import torch

    from tuneloop.models import load_causal_lm
    from tuneloop.train import methods

    cfg = config.ProjectConfig.model_validate(
        {
            "task": {"objective": "x", "type": "chat"},
            "method": {"lora": {"target_modules": "all-linear", "last_layers": 1}},
        }
    )
    model, _ = load_causal_lm(str(tiny_llama), dtype="float32")
    assert methods.block_count(model) == 2
    linear = set(methods.linear_names(model))
    assert linear == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
    wrapped = methods.wrap(model, cfg, gradient_checkpointing=False)
    adapted = {name.split(".layers.")[1].split(".")[0] for name, _ in wrapped.named_parameters() if "lora_A" in name}
    assert adapted == {"1"}
    kinds = {
        name.rsplit(".lora_A", 1)[0].rsplit(".", 1)[-1] for name, _ in wrapped.named_parameters() if "lora_A" in name
    }
    assert kinds == linear
    seen = {}
    blocks = wrapped.base_model.model.model.layers
    blocks[0].register_forward_hook(lambda m, i, o: seen.setdefault(0, (o[0] if isinstance(o, tuple) else o)))
    blocks[1].register_forward_hook(lambda m, i, o: seen.setdefault(1, (o[0] if isinstance(o, tuple) else o)))
    ids = torch.tensor([[1, 5, 7, 9]])
    wrapped(input_ids=ids, labels=ids).loss.backward()
    assert not seen[0].requires_grad and seen[1].requires_grad


def test_last_layers_beyond_the_model_is_a_user_error(tiny_llama: Path):
    from tuneloop.models import load_causal_lm
    from tuneloop.train import methods

    cfg = config.ProjectConfig.model_validate(
        {"task": {"objective": "x", "type": "chat"}, "method": {"lora": {"last_layers": 3}}}
    )
    model, _ = load_causal_lm(str(tiny_llama), dtype="float32")
    with pytest.raises(UserError, match="last_layers is 3 but the model has 2 transformer blocks"):
        methods.wrap(model, cfg, gradient_checkpointing=False)


def test_unknown_lora_target_is_a_user_error(tiny_llama: Path):
    method = MethodConfig(name="lora", lora={"target_modules": ["q_proj", "qkv"]})
    with pytest.raises(UserError, match=r"qkv match no layer.*q_proj"):
        plan.trainable_parameters(plan.model_shape(str(tiny_llama)), method)


# --------------------------------------------------------------------------- memory arithmetic


def test_full_fine_tuning_bytes_per_parameter(measured_shape: plan.ModelShape):
    n = measured_shape.parameters
    gpu = plan.estimate_memory(measured_shape, MethodConfig(name="full"), 1, 16)
    assert (gpu.weights, gpu.gradients, gpu.optimizer, gpu.weight_copies) == (4 * n, 4 * n, 8 * n, 2 * n)
    cpu = plan.estimate_memory(measured_shape, MethodConfig(name="full"), 1, 16, device="cpu", precision="fp32")
    assert cpu.weight_copies == 0 and cpu.overhead == plan.CPU_OVERHEAD
    assert gpu.peak >= 16 * n + plan.GPU_OVERHEAD  # 16-18 bytes per parameter, plus the CUDA context


def test_quantised_and_frozen_bases_are_smaller(measured_shape: plan.ModelShape):
    peaks = {
        name: plan.estimate_memory(measured_shape, MethodConfig(name=name), 1, 16).weights
        for name in ("full", "lora", "qlora")
    }
    assert peaks["qlora"] < peaks["lora"] < peaks["full"]
    no_dq = MethodConfig(name="qlora", quant={"double_quant": False})
    assert plan.estimate_memory(measured_shape, no_dq, 1, 16).weights > peaks["qlora"]


def test_memory_grows_with_batch_and_checkpointing_saves_activations(measured_shape: plan.ModelShape):
    lora = MethodConfig(name="lora")
    one, eight = (plan.estimate_memory(measured_shape, lora, b, 256).activations for b in (1, 8))
    assert eight == pytest.approx(8 * one, rel=0.01)
    kept = plan.estimate_memory(measured_shape, lora, 8, 256, gradient_checkpointing=True).activations
    assert kept < eight / 3
    fewer_logits = plan.estimate_memory(measured_shape, lora, 8, 256, trained_fraction=0.25).logits
    assert fewer_logits == pytest.approx(plan.estimate_memory(measured_shape, lora, 8, 256).logits / 4, rel=0.01)


def test_max_batch_size_is_the_largest_that_fits():
    def peak(b: int) -> int:
        return 100 + 10 * b

    assert plan.max_batch_size(peak, 155) == 5
    assert plan.max_batch_size(peak, 160) == 6
    assert plan.max_batch_size(peak, 110) == 1
    assert plan.max_batch_size(peak, 109) == 0
    assert plan.max_batch_size(lambda b: 1, 10) == plan.MAX_BATCH


def test_fits_and_max_batch_on_a_gpu(tmp_path: Path, measured_shape: plan.ModelShape):
    setting = plan.Setting(256, 0.5, False, "mixed", "fp32", None)
    lora = MethodConfig(name="lora")
    gpu = plan.Gpu("small", memory_gb=2, tflops=100, bf16=True, usd_per_hour=1)
    row = plan.estimate_gpu(measured_shape, lora, 4, setting, gpu, tokens=10**6, flops=1, mfu=0.5)
    limit = plan.FIT_SHARE * gpu.memory_bytes
    assert row.max_batch >= 1
    assert setting.memory(measured_shape, lora, row.max_batch, "gpu").peak <= limit
    assert setting.memory(measured_shape, lora, row.max_batch + 1, "gpu").peak > limit
    assert row.fits == (row.peak <= limit) and row.fits == (row.max_batch >= 4)
    tiny_gpu = plan.Gpu("tiny", memory_gb=1, tflops=100, bf16=True, usd_per_hour=1)  # the CUDA context alone is 1 GiB
    none = plan.estimate_gpu(measured_shape, lora, 4, setting, tiny_gpu, tokens=10**6, flops=1, mfu=0.5)
    assert (none.fits, none.max_batch, none.hours, none.cost) == (False, 0, None, None)


def test_time_and_cost_hand_checked():
    # 1B tokens through a 1B-parameter model: 6e18 FLOPs; at 989 TFLOPS × 0.35 that is 17,334 s.
    flops = plan.flops_per_token(1_000_000_000, "full")
    assert flops == 6_000_000_000
    hours = plan.training_hours(1_000_000_000, flops, tflops=989, mfu=0.35)
    assert hours == pytest.approx(4.8149, abs=1e-3)
    assert hours * 3.0 == pytest.approx(14.44, abs=0.01)
    assert plan.flops_per_token(1000, "lora") == 4000
    assert plan.flops_per_token(1000, "full", gradient_checkpointing=True) == 8000


# --------------------------------------------------------------------------- recommendation


def _stats(rows: int) -> plan.DataStats:
    return plan.DataStats(Path("."), rows, rows // 10, rows * 200, rows * 50, 512, 300, None)


@pytest.mark.parametrize(
    ("memory_gb", "rows", "expected"),
    [(400, 20_000, "full"), (400, 500, "lora"), (40, 20_000, "lora"), (12, 20_000, "qlora"), (2, 20_000, "none")],
)
def test_recommendation(memory_gb: float, rows: int, expected: str):
    seven = plan.model_shape("7B")
    setting = plan.Setting(256, 0.5, False, "mixed", "fp32", None)
    gpu = plan.Gpu("card", memory_gb=memory_gb, tflops=100, bf16=True, usd_per_hour=1)
    method, reason = plan.recommend(seven, MethodConfig(name="lora"), 1, setting, [gpu], _stats(rows))
    assert method == expected, reason


# --------------------------------------------------------------------------- the GPU table


def test_shipped_table_has_the_common_gpus():
    table = plan.load_gpus()
    for name, memory in [("RTX 4090", 24), ("A100 40GB", 40), ("A100 80GB", 80), ("H100 80GB", 80), ("L4", 24),
                         ("T4", 16), ("A10G", 24), ("L40S", 48)]:  # fmt: skip
        assert table[name].memory_gb == memory
        assert table[name].tflops > 0 and table[name].usd_per_hour > 0
    assert not table["T4"].bf16
    assert [g.name for g in plan.select_gpus(table, ["h100", "a100-80gb", "t4"])] == ["H100 80GB", "A100 80GB", "T4"]
    with pytest.raises(UserError, match="A100 40GB, A100 80GB"):
        plan.select_gpus(table, ["a100"])


def test_bad_gpu_table_says_what_is_wrong(tmp_path: Path):
    bad = tmp_path / "gpus.yaml"
    bad.write_text("gpus:\n  X1:\n    memory_gb: 24\n    tflops: 100\n    bf16: yes\n")
    with pytest.raises(UserError, match=r"GPU 'X1'.*usd_per_hour"):
        plan.load_gpus(bad)
    bad.write_text("gpus:\n  X1: {memory_gb: -1, tflops: 100, bf16: true, usd_per_hour: 1}\n")
    with pytest.raises(UserError, match="memory_gb is -1"):
        plan.load_gpus(bad)


# --------------------------------------------------------------------------- the command


@pytest.fixture(scope="module")
def tiny_project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tuneloop.tiny import make_tiny_llama

    root = tmp_path_factory.mktemp("plan")
    return make_train_project(root / "project", make_tiny_llama(root / "model"), precision="auto")


def test_cli_prints_a_row_per_gpu_and_a_recommendation(cli, tiny_project: Path):
    result = cli("plan", "-c", tiny_project)
    assert result.code == 0, result.err
    for name in plan.load_gpus():
        assert name in result.out
    assert "recommend lora" in result.out and "peak" in result.out and "this machine" in result.out
    assert "training examples; fine-tuning usually needs at least 1,000" in result.err  # the tiny project is tiny


def test_cli_json_uses_the_prepared_data(cli, tiny_project: Path):
    result = cli("plan", "-c", tiny_project, "--json", "--gpu", "H100", "--method", "full", "--mfu", "0.5")
    assert result.code == 0, result.err
    out = json.loads(result.out)
    report = json.loads((tiny_project.parent / "data/prepared/report.json").read_text())
    assert out["seq_len"] == report["lengths"]["max"]
    assert out["trained_fraction"] == pytest.approx(report["trained_tokens_per_epoch"] / report["tokens_per_epoch"])
    mean = report["tokens_per_epoch"] / report["splits"]["train"]["rows"]
    assert out["tokens"] == round(10 * 4 * mean)  # train.max_steps × batch × mean tokens per example
    [row] = out["gpus"]
    n = out["model"]["parameters"]
    assert out["flops_per_token"] == 6 * n
    assert row["hours"] == pytest.approx(out["tokens"] * 6 * n / (989e12 * 0.5) / 3600)
    assert row["cost_usd"] == pytest.approx(row["hours"] * row["usd_per_hour"])
    assert out["memory_bytes"]["cpu"]["precision"] == "fp32"


def test_cli_project_gpu_table_and_overrides(cli, tiny_project: Path, tmp_path: Path):
    own = tiny_project.parent / "gpus.yaml"
    own.write_text("gpus:\n  Lab Card: {memory_gb: 12, tflops: 50, bf16: true, usd_per_hour: 0.25}\n")
    try:
        result = cli("plan", "-c", tiny_project, "--json", "--model", "135M", "--batch-size", "2", "--seq-len", "64")
    finally:
        own.unlink()
    out = json.loads(result.out)
    assert [g["name"] for g in out["gpus"]] == ["Lab Card"]
    assert (out["batch_size"], out["seq_len"], out["model"]["name"]) == (2, 64, "135M")
    other = tmp_path / "mine.yaml"
    other.write_text("gpus:\n  Big: {memory_gb: 1000, tflops: 1, bf16: false, usd_per_hour: 9}\n")
    result = cli("plan", "-c", tiny_project, "--json", "--gpus-file", other)
    assert [(g["name"], g["precision"]) for g in json.loads(result.out)["gpus"]] == [("Big", "fp16")]


def test_cli_errors_say_what_to_do(cli, tiny_project: Path, tmp_path: Path):
    unknown = cli("plan", "-c", tiny_project, "--gpu", "V100")
    assert unknown.code == 1 and "choose from" in unknown.err
    method = cli("plan", "-c", tiny_project, "--method", "ia3")
    assert method.code == 1 and "choose from full, lora" in method.err
    missing = cli("plan", "-c", tiny_project, "--gpus-file", tmp_path / "nope.yaml")
    assert missing.code == 1 and "copy" in missing.err
    mfu = cli("plan", "-c", tiny_project, "--mfu", "35")
    assert mfu.code == 1 and "between 0 and 1" in mfu.err


def test_without_prepared_data_it_falls_back_and_warns(cli, tiny_project: Path, tmp_path: Path):
    doc = yaml.safe_load(tiny_project.read_text())
    doc["data"]["prepared_dir"] = str(tmp_path / "never-prepared")
    path = tmp_path / "tuneloop.yaml"
    path.write_text(yaml.safe_dump(doc))
    result = cli("plan", "-c", path, "--json")
    out = json.loads(result.out)
    assert out["seq_len"] == doc["data"]["max_length"]
    assert out["tokens"] == 10 * 4 * doc["data"]["max_length"]  # max_steps × batch × max_length: an upper bound
    assert out["trained_fraction"] == 1.0
    assert any("no prepared data" in w and "tuneloop data prepare" in w for w in out["warnings"])
    result = cli("plan", "-c", path, "--json", "--set", "train.max_steps=null")
    out = json.loads(result.out)
    assert out["tokens"] is None and all(g["hours"] is None for g in out["gpus"])


def test_no_validation_split_warns(cli, tmp_path: Path, tiny_project: Path):
    from tuneloop.data.prepare import prepare

    doc = yaml.safe_load(tiny_project.read_text())
    doc["data"]["split"] = {"train": 0.9, "val": 0.0, "test": 0.1}
    doc["data"]["train"] = [str(tiny_project.parent / "data/train.jsonl")]
    path = tmp_path / "tuneloop.yaml"
    path.write_text(yaml.safe_dump(doc))
    prepare(config.load(path), workers=0)
    result = cli("plan", "-c", path)
    assert result.code == 0, result.err
    assert "no validation split" in result.err and "data.split.val" in result.err
