"""`tuneloop plan` for preference (dpo, ipo, simpo, orpo, reward) and GRPO runs: what each step runs, in memory
and time, and the plan's CLI for them."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from tests.preference_helpers import make_preference_project, pair_rows
from tests.test_plan import MEASURED_SHAPE
from tests.train_helpers import chat_rows, make_train_project
from tuneloop import config, plan
from tuneloop.config import MethodConfig
from tuneloop.errors import UserError
from tuneloop.plan import methods

GRPO = ["method.name=grpo", "method.grpo.rewards=[json_valid]"]


@pytest.fixture(scope="module")
def shape() -> plan.ModelShape:
    from transformers import LlamaConfig

    return plan.shape_from_config(LlamaConfig(**MEASURED_SHAPE), "measured", "test")


def memory(shape: plan.ModelShape, method: MethodConfig, batch: int = 4, seq: int = 256, **kw) -> plan.Memory:
    settings = {"device": "gpu", "precision": "mixed", "trained_fraction": 0.5, "gradient_checkpointing": False}
    settings |= {"base_dtype_bytes": None, **kw}
    return methods.step_memory(shape, methods.recipe(method), batch, seq, **settings)


def dpo(adapter: str = "lora", name: str = "dpo") -> MethodConfig:
    return MethodConfig(name=name, preference={"adapter": adapter})


def grpo(**settings) -> MethodConfig:
    return MethodConfig(name="grpo", grpo={"rewards": ["json_valid"], **settings})


# --------------------------------------------------------------------------- memory

# A DPO step as TRL's DPOTrainer runs it (trl 1.16's _compute_loss): chosen and rejected in one batch through
# the policy and, without gradients, the reference (the adapter-off policy, or a frozen copy), both through
# TRL's chunked LM head; AdamW over two steps. Run in a fresh interpreter, as test_plan.py's MEASURE.
MEASURE_DPO = r"""
import json, sys
import torch
from transformers import LlamaConfig, LlamaForCausalLM
from trl.trainer.utils import add_fused_lm_head, use_adapter
from tuneloop.config import ProjectConfig
from tuneloop.train import methods

def status(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024

shape, adapter, batch, seq = json.loads(sys.argv[1]), sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
torch.manual_seed(0)
prompt = seq // 2
ids = torch.randint(0, shape["vocab_size"], (2 * batch, seq))  # chosen rows, then rejected rows
labels = ids.clone()
labels[:, :prompt] = -100  # the prompt half carries no loss
try:
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
except OSError:
    pass
before = status("VmRSS")
model = LlamaForCausalLM(LlamaConfig(**shape))
reference = None
if adapter == "full":
    import copy
    reference = copy.deepcopy(model).eval().requires_grad_(False)
    add_fused_lm_head(reference)
add_fused_lm_head(model)
if adapter != "full":
    method = {"name": adapter, "lora": {"dropout": 0.0}}
    cfg = ProjectConfig.model_validate({"task": {"objective": "m", "type": "chat"}, "method": method})
    model = methods.wrap(model, cfg, gradient_checkpointing=False)
model.train()
params = [p for p in model.parameters() if p.requires_grad]
optimizer = torch.optim.AdamW(params, lr=1e-4, fused=True)
for _ in range(2):
    with torch.no_grad():
        if reference is None:
            with use_adapter(model, None):
                ref = model(input_ids=ids, labels=labels, fused_lm_head=True).log_probs.sum(-1)
        else:
            ref = reference(input_ids=ids, labels=labels, fused_lm_head=True).log_probs.sum(-1)
    logps = model(input_ids=ids, labels=labels, fused_lm_head=True).log_probs.sum(-1)
    ratio = (logps - ref)
    loss = -torch.nn.functional.logsigmoid(0.1 * (ratio[:batch] - ratio[batch:])).mean()
    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, 1.0)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
print(json.dumps({"peak": status("VmHWM") - before}))
"""


@pytest.mark.parametrize("adapter", ["lora", "full"])
def test_dpo_memory_estimate_matches_a_real_cpu_step(adapter: str, shape: plan.ModelShape):
    import os
    import subprocess
    import sys

    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536", "OMP_NUM_THREADS": "1"}
    args = [json.dumps(MEASURED_SHAPE), adapter, "2", "128"]
    done = subprocess.run(
        [sys.executable, "-c", MEASURE_DPO, *args], env=env, capture_output=True, text=True, timeout=300, check=False
    )
    assert done.returncode == 0, done.stderr[-3000:]
    measured = json.loads(done.stdout.strip().splitlines()[-1])["peak"]
    method = MethodConfig(name="dpo", preference={"adapter": adapter}, lora={"dropout": 0.0})
    estimate = memory(shape, method, batch=2, seq=128, device="cpu", precision="fp32")  # every position scored on CPU
    print(f"dpo {adapter}: measured {measured / 2**20:.0f} MiB, estimated {estimate.peak / 2**20:.0f} MiB")
    assert estimate.peak == pytest.approx(measured, rel=0.15)


def test_sft_methods_are_estimated_exactly_as_before(shape: plan.ModelShape):
    for name in ("full", "lora", "qlora", "dora"):
        sft = plan.estimate_memory(shape, MethodConfig(name=name), 4, 256, trained_fraction=0.5)
        assert memory(shape, MethodConfig(name=name)) == sft


def test_dpo_full_holds_a_frozen_copy_of_the_weights_and_lora_none(shape: plan.ModelShape):
    n = shape.parameters
    sft_full = memory(shape, MethodConfig(name="full"))
    dpo_full = memory(shape, dpo("full"))
    assert dpo_full.reference == 4 * n  # the fp32 reference beside the fp32 policy
    assert dpo_full.peak >= sft_full.peak + 4 * n
    dpo_lora, simpo_lora = memory(shape, dpo("lora")), memory(shape, dpo("lora", "simpo"))
    assert dpo_lora.reference == 0  # the adapter-off policy is the reference
    assert dpo_lora.weights == simpo_lora.weights  # no more weights than a method without any reference
    adapter = plan.trainable_parameters(shape, MethodConfig(name="lora"))
    assert dpo_lora.weights == 4 * n + 4 * adapter  # preference runs load the frozen base in fp32, even on a GPU


def test_a_pair_runs_chosen_and_rejected_through_the_policy(shape: plan.ModelShape):
    lora = MethodConfig(name="lora")
    two = plan.estimate_memory(shape, lora, 8, 256, trained_fraction=0.5, base_dtype_bytes=4)
    for name in ("dpo", "ipo", "simpo", "orpo"):
        assert memory(shape, dpo("lora", name), batch=4).activations == two.activations, name


def test_the_reward_model_has_no_vocabulary_sized_logits(shape: plan.ModelShape):
    big_vocab = replace(shape, vocab=shape.vocab * 16)
    reward = MethodConfig(name="reward", preference={"adapter": "full"})
    assert memory(shape, reward).logits == memory(big_vocab, reward).logits == 0
    assert memory(big_vocab, reward).peak == memory(shape, reward).peak  # the vocabulary is in no other term
    simpo = dpo("full", "simpo")  # full logits at every position
    assert memory(big_vocab, simpo).logits == pytest.approx(16 * memory(shape, simpo).logits, rel=0.01)
    # DPO's chunked head holds a tile of fixed width, whatever the vocabulary
    assert memory(big_vocab, dpo("full")).logits == memory(shape, dpo("full")).logits < memory(shape, simpo).logits


def test_the_reward_model_drops_an_untied_lm_head():
    seven = plan.model_shape("7B")  # Llama-2-7B: untied 32,000 × 4,096 head
    assert seven.head_parameters == 32_000 * 4096
    reward = methods.recipe(MethodConfig(name="reward", preference={"adapter": "full"}))
    assert methods.model_for(seven, reward).parameters == seven.parameters - 32_000 * 4096 + 4096
    tied = plan.shape_from_config(__import__("transformers").LlamaConfig(**MEASURED_SHAPE), "tied", "test")
    assert tied.head_parameters == 0  # the tied head shares the embeddings, which the reward model keeps


def test_grpo_holds_the_kv_cache_of_its_generation_batch(shape: plan.ModelShape):
    m = grpo(num_generations=4, max_completion_length=64)
    one = memory(shape, m, batch=2, seq=192)
    kv = 2 * shape.layers * shape.kv_dim * (2 * 4) * 192 * 2  # layers × (k, v) × sequences × tokens × bf16
    assert one.generation == kv + 2 * 4 * shape.vocab * 8
    accumulated = memory(shape, m, batch=2, seq=192, grad_accum=3)  # one generate call for the optimizer step
    assert accumulated.generation == 3 * one.generation
    assert accumulated.activations == one.activations  # each micro-batch still trains batch × K sequences
    assert memory(shape, grpo(num_generations=8, max_completion_length=64), batch=2, seq=192).generation > kv
    assert memory(shape, grpo(adapter="full")).reference == 4 * shape.parameters
    assert memory(shape, grpo(adapter="full", beta=0.0)).reference == 0  # beta 0: TRL loads no reference


# --------------------------------------------------------------------------- FLOPs


def test_flops_per_token_count_the_reference_forward(shape: plan.ModelShape):
    n = shape.parameters

    def per_token(method: MethodConfig) -> float:
        return methods.training_flops(shape, methods.recipe(method), False) / n

    assert per_token(dpo("lora")) == 6 and per_token(dpo("full")) == 8  # policy fwd+bwd + reference fwd
    assert per_token(dpo("lora", "ipo")) == 6
    assert per_token(dpo("lora", "simpo")) == 4 and per_token(dpo("full", "orpo")) == 6  # no reference
    assert per_token(grpo()) == 6 and per_token(grpo(beta=0.0)) == 4
    # kto: policy fwd+bwd on the answer; without gradients the policy on a mismatched answer, the reference on both
    assert per_token(dpo("lora", "kto")) == 10 and per_token(dpo("full", "kto")) == 12
    assert methods.training_flops(shape, methods.recipe(dpo("lora")), True) == 8 * n  # checkpointing recomputes


# --------------------------------------------------------------------------- plans of real projects


@pytest.fixture(scope="module")
def pair_project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tuneloop.tiny import make_tiny_llama

    root = tmp_path_factory.mktemp("plan-pairs")
    ranked = [{"prompt": f"rank {i}", "responses": ["a b", "c d e", "f"], "ranking": [1, 0, 2]} for i in range(10)]
    return make_preference_project(root / "project", make_tiny_llama(root / "model"), rows=pair_rows(30), ranked=ranked)


@pytest.fixture(scope="module")
def chat_project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tuneloop.tiny import make_tiny_llama

    root = tmp_path_factory.mktemp("plan-chat")
    return make_train_project(root / "project", make_tiny_llama(root / "model"), rows=chat_rows(40, max_words=8))


def test_pairs_count_twice_and_a_ranking_counts_its_pairs(pair_project: Path):
    report = json.loads((pair_project.parent / "data/prepared/report.json").read_text())
    cfg = config.load(pair_project, ["train.max_steps=null", "train.epochs=2"])
    data = plan.read_data_stats(cfg)
    rows = report["splits"]["train"]["rows"]
    ranked = sum(1 for line in (data.folder / "train.jsonl").read_text().splitlines() if '"ranking"' in line)
    assert data.pairs == (rows - ranked) + 3 * ranked  # a ranking of 3 answers trains 3 pairs
    p = plan.make_plan(cfg, gpus=["H100"])
    assert p.tokens == round(report["tokens_per_epoch"] * 2 * 2 * data.pairs / rows)  # epochs × sequences × pairs
    assert "pairs per record" in p.tokens_source and "2 sequences per pair" in p.tokens_source
    kto = plan.make_plan(config.load(pair_project, ["train.max_steps=null", "method.name=kto"]), gpus=["H100"])
    assert data.answers == 2 * data.pairs  # kto trains both answers of every pair, one sequence each
    assert kto.tokens == round(report["tokens_per_epoch"] * 3 * data.answers / rows)  # train.epochs is 3
    assert kto.recipe.sequences == 1 and kto.gpu_memory.reference == 0  # the adapter-off policy is its reference


def test_grpo_time_grows_with_the_answers_sampled(chat_project: Path):
    def hours(*extra: str) -> tuple[float, plan.Plan]:
        p = plan.make_plan(config.load(chat_project, [*GRPO, *extra]), gpus=["H100"])
        return p.rows[0].hours, p

    base, p = hours("method.grpo.num_generations=2", "method.grpo.max_completion_length=32")
    more, _ = hours("method.grpo.num_generations=4", "method.grpo.max_completion_length=32")
    longer, q = hours("method.grpo.num_generations=2", "method.grpo.max_completion_length=128")
    assert base < more and base < longer
    decoding = {w.what: w for w in q.sampling}["decoding"]
    prompts = 10 * 4  # train.max_steps × train.batch_size prompts
    assert decoding.tokens == prompts * 2 * 128 and decoding.mfu == plan.GENERATION_MFU
    assert q.setting.seq_len == p.setting.seq_len + 96  # the longest answer is part of every sequence
    assert any("vLLM" in note and "decoding the answers is" in note for note in q.notes)
    t4 = plan.make_plan(config.load(chat_project, [*GRPO, "train.precision=auto"]), gpus=["T4", "H100"])
    assert [r.precision for r in t4.rows] == ["fp32", "bf16"]  # GRPO's auto precision: fp32 without bf16
    assert t4.rows[0].peak > t4.rows[1].peak
    assert any("GRPO trains in fp32 on T4" in w for w in t4.warnings)


def test_the_cli_prints_the_method_and_what_a_step_runs(cli, pair_project: Path, chat_project: Path):
    result = cli("plan", "-c", pair_project, "--gpu", "H100")
    assert result.code == 0, result.err
    assert "method    dpo (method.preference.adapter lora)" in result.out
    assert "2 sequences per pair" in result.out and "adapter off" in result.out
    full = cli("plan", "-c", pair_project, "--json", "--set", "method.preference.adapter=full")
    out = json.loads(full.out)
    assert out["method"] == "dpo" and out["step"]["reference"] == "copy"
    assert out["memory_bytes"]["gpu"]["reference"] == 4 * out["model"]["parameters"]
    reward = json.loads(cli("plan", "-c", pair_project, "--json", "--method", "reward").out)
    assert reward["step"]["lm_head"] == "none" and reward["memory_bytes"]["gpu"]["logits"] == 0
    grpo_run = cli("plan", "-c", chat_project, "--gpu", "H100", *[a for s in GRPO for a in ("--set", s)])
    assert grpo_run.code == 0, grpo_run.err
    assert "method    grpo (method.grpo.adapter lora)" in grpo_run.out and "decoding" in grpo_run.out
    assert "generation (KV cache)" in grpo_run.out


def test_methods_that_do_not_suit_the_data_are_refused(pair_project: Path, chat_project: Path):
    with pytest.raises(UserError, match="a preference task trains with dpo"):
        plan.make_plan(config.load(pair_project), method="lora")
    with pytest.raises(UserError, match="trains on preference pairs"):
        plan.make_plan(config.load(chat_project), method="dpo")
    with pytest.raises(UserError, match="not classifiers"):
        plan.make_plan(config.load(chat_project), method="features")
