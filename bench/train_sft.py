"""Benchmark `tuneloop train` against plain TRL SFTTrainer on the same model, data and steps.

    .venv/bin/python bench/train_sft.py [--quick] [--models smollm2,tiny] [--shapes similar,varied]
                                        [--steps 12] [--batch-size 8] [--ours auto,auto@fp32,packed@fp32]

For each model (SmolLM2-135M-Instruct and a tiny config-built Llama) and each length shape
(`similar`: ~120-token chats; `varied`: 30 to ~700 tokens; `quickstart`: the quickstart's tickets, whose
89-token instruction every example repeats), both systems train LoRA r=16 on all
linear layers for the same number of optimizer steps over the same examples, with the same batch
size and completion-only loss (TRL gets the data as conversational prompt/completion, which is
how its defaults train on the completion only). Each system runs in its own subprocess, so peak
RSS belongs to it alone. Printed per run:

- trained tokens/s (the tokens the loss is computed on) and all-tokens/s, and ours ÷ TRL;
- peak RSS;
- padding waste (computed positions that are padding);
- achieved model FLOP/s against a matmul peak measured here, in the same process (MFU).

TRL runs twice (`--trl default,fastest`). `default` is its defaults, except `bf16=False`: its default
bf16 refuses to start on a CPU without bf16 support ("Your setup doesn't support bf16/gpu"), and its
default gradient checkpointing stays on. `fastest` is TRL as fast as it goes on a CPU: `use_cpu=True`,
gradient checkpointing off, bf16 only where the CPU has it natively. The ratio column compares with
the last TRL configuration, so by default with TRL at its fastest.
Ours runs twice by default: with `train.precision: auto` (bf16 autocast where the CPU has native
bf16 and the loss matches fp32) and forced to fp32, the same precision as TRL. MFU is measured
against a matmul peak in each run's own precision. A `:lastN` variant (LoRA on the last N blocks only,
`method.lora.last_layers`) does less work per token, since backpropagation stops below those blocks;
its GFLOP/s and MFU still count the work of LoRA on every block, so they read as the rate a run
adapting every block would need to match it. Likewise a shared-prefix run (`auto` picks it on the
quickstart's tickets) counts the prefix once per example, as an unshared run computes it.
Absolute times on shared machines are noise: read the ratios, which come from one run.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

WORDS = (
    "account invoice upload folder share sync desktop mobile browser password login refund charge plan "
    "storage team admin device error crash slow backup restore trash link permission export import file "
    "photo video document contract policy renewal discount quota limit network proxy firewall update "
    "version calendar email notification setting profile security token support ticket agent manager "
    "customer billing payment card bank transfer receipt tax region language"
).split()
SYSTEM = "You are a support agent. Answer briefly."


def words(rng: random.Random, n: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n))


def make_rows(shape: str, n: int, seed: int = 0) -> list[dict]:
    """Single-turn support chats. `similar` keeps lengths within ~15%; `varied` spans ~20x; `quickstart`:
    the quickstart's first n tickets, each with the same 75-word instruction as its system prompt."""
    rng = random.Random(seed)
    if shape == "quickstart":
        from importlib.resources import files

        lines = (files("tuneloop") / "templates" / "quickstart" / "tickets.jsonl").read_text().splitlines()
        return [json.loads(line) for line in lines[:n]]
    rows = []
    for i in range(n):
        if shape == "similar":
            user, answer = rng.randint(44, 52), rng.randint(30, 36)
        else:  # log-uniform lengths: many short chats, a few long ones, as real support logs have
            user, answer = int(2 ** rng.uniform(2, 8.3)), int(2 ** rng.uniform(2, 7.3))
        rows.append(
            {
                "messages": [
                    {"role": "system", "content": SYSTEM},
                    {"role": "user", "content": f"Ticket {i}: {words(rng, user)}"},
                    {"role": "assistant", "content": words(rng, answer)},
                ]
            }
        )
    return rows


# --------------------------------------------------------------------------- child processes

COMMON = """
import json, resource, statistics, sys, time
import torch
torch.manual_seed(0)
spec = json.loads(sys.argv[1])

def matmul_peak(precision):
    # Median of 5 matmuls sized like a big batch through a linear layer, in the precision the run
    # trained in (bf16 via autocast, as training does): the machine's practical peak, this process.
    a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
    times = []
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
        torch.mm(a, b)
        for _ in range(5):
            t = time.perf_counter(); torch.mm(a, b); times.append(time.perf_counter() - t)
    return 2 * 2048 ** 3 / statistics.median(times)

def finish(seconds, counts, extra):
    out = {"seconds": seconds, **counts, **extra, "peak_flops": matmul_peak(extra["precision"]),
           "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    print("RESULT " + json.dumps(out))
"""

OURS = (
    COMMON
    + """
from tuneloop import config
from tuneloop.train.sft import train
variant, _, last = spec["variant"].partition(":last")
layout, _, precision = variant.partition("@")
overrides = [f"train.batching={layout}", f"train.precision={precision or 'auto'}"]
cfg = config.load(spec["config"], overrides=overrides + ([f"method.lora.last_layers={last}"] if last else []))
result = train(cfg)
s = result.summary["this_session"]
finish(s["seconds"], {"trained": s["trained_tokens"], "real": s["tokens"], "computed": s["computed_tokens"]},
       {"layout": result.summary["batching"]["layout"], "precision": result.summary["precision"]["chosen"]})
"""
)

TRL = (
    COMMON
    + """
import warnings
warnings.filterwarnings("ignore")
from datasets import Dataset
from peft import LoraConfig
from transformers import AutoModelForCausalLM, AutoTokenizer
from transformers.utils import logging
from trl import SFTConfig, SFTTrainer
logging.set_verbosity_error()

rows = [json.loads(line) for line in open(spec["data"])]
# Conversational prompt/completion: TRL's default then trains on the completion only, like ours.
data = Dataset.from_list([{"prompt": r["messages"][:-1], "completion": r["messages"][-1:]} for r in rows])
tokenizer = AutoTokenizer.from_pretrained(spec["model"])
model = AutoModelForCausalLM.from_pretrained(spec["model"], dtype=torch.float32)
# "default": TRL's defaults (gradient checkpointing on) but bf16=False, which a CPU without bf16 refuses.
# "fastest": TRL at its fastest on a CPU: use_cpu, gradient checkpointing off, bf16 only where it is native.
fastest = spec["trl"] == "fastest"
native_bf16 = bool(getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: False)())
bf16 = fastest and native_bf16
args = SFTConfig(output_dir=spec["out"], per_device_train_batch_size=spec["batch_size"], max_steps=spec["steps"],
                 learning_rate=2e-4, bf16=bf16, save_strategy="no", report_to=[], seed=0,
                 logging_steps=1000, disable_tqdm=True, use_cpu=fastest,
                 gradient_checkpointing=not fastest)
lora = LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, target_modules="all-linear", task_type="CAUSAL_LM")
trainer = SFTTrainer(model=model, args=args, train_dataset=data, processing_class=tokenizer, peft_config=lora)
counts = {"trained": 0, "real": 0, "computed": 0}
collate = trainer.data_collator
def counting(features):
    batch = collate(features)
    counts["trained"] += int((batch["labels"][:, 1:] != -100).sum())  # the model shifts labels by one
    counts["real"] += int(batch["attention_mask"].sum())
    counts["computed"] += batch["input_ids"].numel()
    return batch
trainer.data_collator = counting  # the dataloader is built inside train(), so it picks this up
start = time.perf_counter()
trainer.train()
finish(time.perf_counter() - start, counts, {"layout": "padded", "precision": "bf16" if bf16 else "fp32"})
"""
)


def run_child(code: str, spec: dict) -> dict:
    proc = subprocess.run([sys.executable, "-c", code, json.dumps(spec)], capture_output=True, text=True)
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT ") :])
    raise SystemExit(f"benchmark child failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")


# --------------------------------------------------------------------------- FLOPs


def model_flops(model_dir: Path, items: list[dict], lora: bool) -> float:
    """Useful FLOPs for one pass over `items` (rendered examples): 2·N per token forward, plus
    backward (2·N for LoRA's input gradients, 4·N for full training), plus causal attention, and
    the LM head only where the loss needs it. Padding and recomputation are not useful work."""
    from transformers import AutoConfig

    c = AutoConfig.from_pretrained(model_dir)
    d, layers, vocab = c.hidden_size, c.num_hidden_layers, c.vocab_size
    kv = d * c.num_key_value_heads // c.num_attention_heads
    per_layer = 2 * d * d + 2 * d * kv + 3 * d * c.intermediate_size  # q,o + k,v + gate,up,down
    factor = 2 if lora else 3  # (forward + backward) / forward
    total = 0.0
    for item in items:
        n, trained = len(item["input_ids"]), sum(w > 0 for w in item["weights"][1:])
        body = 2 * layers * per_layer * n + 2 * layers * d * n * n  # linear + causal QK^T and AV
        total += factor * (body + 2 * d * vocab * trained)
    return total


# --------------------------------------------------------------------------- driver


def write_project(folder: Path, model_dir: Path, rows: list[dict], steps: int, batch_size: int) -> Path:
    import yaml

    (folder / "data").mkdir(parents=True)
    (folder / "data/train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    doc = {
        "task": {"objective": "benchmark", "type": "chat"},
        "model": {"name": str(model_dir)},
        "data": {
            "train": ["data/train.jsonl"],
            "max_length": 1024,
            "split": {"train": 0.98, "val": 0.01, "test": 0.01},
            "dedup": {"near": "off"},
            "pii": {"mode": "off"},
        },
        "method": {"name": "lora", "lora": {"r": 16, "alpha": 32, "dropout": 0.0, "target_modules": "all-linear"}},
        "train": {
            "max_steps": steps,
            "batch_size": batch_size,
            "learning_rate": 2e-4,
            "eval_every": 10_000,
            "save_every": 10_000,
            "log_every": 10_000,
            "report_to": [],
        },
    }
    path = folder / "tuneloop.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def prepared_items(cfg_path: Path) -> tuple[Path, list[dict]]:
    """Prepare the data once; both systems read the same prepared train split."""
    from tuneloop import config
    from tuneloop.data.chat_templates import project_tokenizer
    from tuneloop.data.prepare import prepare
    from tuneloop.data.prepared import load_split
    from tuneloop.train.sft import render_split

    cfg = config.load(cfg_path)
    tokenizer = project_tokenizer(cfg)
    prepare(cfg, tokenizer=tokenizer, workers=0)
    examples, _ = load_split(cfg, "train")
    items = render_split(examples, tokenizer, cfg, "train")
    path = cfg.path(cfg.data.prepared_dir) / "train.jsonl"
    return path, items


def model_folder(name: str, root: Path) -> Path:
    if name == "tiny":
        from tuneloop.tiny import make_tiny_llama

        return make_tiny_llama(root / "tiny-llama", hidden_size=256, layers=4)
    from tuneloop.models import resolve

    return resolve("smollm2-135m-instruct")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="smollm2,tiny")
    parser.add_argument("--shapes", default="similar,varied", help="similar, varied, quickstart")
    parser.add_argument(
        "--trl",
        default="default,fastest",
        help="TRL configurations: default (its defaults, gradient checkpointing on) and fastest (use_cpu, no "
        "gradient checkpointing, bf16 where native). The ratio column is against the last one",
    )
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument(
        "--ours",
        default="auto,auto@fp32",
        help="Our variants, comma-separated: a batch layout (auto, padded, packed, length_grouped), optionally "
        "@precision (fp32, bf16), optionally :lastN (method.lora.last_layers=N); without @, train.precision=auto "
        "picks. The first one is the ratio's numerator",
    )
    parser.add_argument("--quick", action="store_true", help="Tiny model only, 4 steps: checks the script runs")
    args = parser.parse_args()
    if args.quick:
        args.models, args.steps = "tiny", 4

    import torch

    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads; {args.steps} steps of batch {args.batch_size}"
    )
    header = (
        f"{'model':8} {'shape':8} {'system':24} {'trained tok/s':>13} {'all tok/s':>9} {'ratio':>6} "
        f"{'peak RSS':>9} {'padding':>8} {'GFLOP/s':>8} {'MFU':>6}"
    )
    print(header)
    ratios: list[float] = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for model_name in args.models.split(","):
            model_dir = model_folder(model_name, root)
            for shape in args.shapes.split(","):
                folder = root / f"{model_name}-{shape}"
                rows = make_rows(shape, int(args.steps * args.batch_size / 0.98) + 2)
                cfg_path = write_project(folder, model_dir, rows, args.steps, args.batch_size)
                data_path, items = prepared_items(cfg_path)
                flops_per_epoch = model_flops(model_dir, items, lora=True)
                results = []
                for setting in args.trl.split(","):
                    spec = {"model": str(model_dir), "data": str(data_path), "out": str(folder / f"trl-{setting}")}
                    results.append((f"TRL {setting}", run_child(TRL, {**spec, **vars(args), "trl": setting})))
                trl = results[-1][1]
                n_trl = len(results)
                for variant in args.ours.split(","):
                    ours = run_child(OURS, {"config": str(cfg_path), "variant": variant})
                    layout, _, last = variant.partition(":last")
                    layout = layout.partition("@")[0]
                    shown = f"auto:{ours['layout']}" if layout == "auto" else layout
                    results.append((f"tuneloop {shown} {ours['precision']}" + (f" last{last}" if last else ""), ours))
                base = trl["trained"] / trl["seconds"]
                for name, r in results:
                    rate = r["trained"] / r["seconds"]
                    ratio = rate / base
                    # Both systems see every example once when steps × batch = the train split.
                    achieved = flops_per_epoch * (r["real"] / sum(len(i["input_ids"]) for i in items)) / r["seconds"]
                    # A shared-prefix run computes fewer positions than its examples hold: no padding, and the
                    # achieved GFLOP/s and MFU count the work an unshared run would do (the prefix per example).
                    padding = f"{max(1 - r['real'] / r['computed'], 0):8.1%}"
                    print(
                        f"{model_name:8} {shape:8} {name:24} {rate:13.1f} {r['real'] / r['seconds']:9.1f} "
                        f"{ratio:5.2f}x {r['rss_mb']:7.0f}MB {padding} "
                        f"{achieved / 1e9:8.2f} {achieved / r['peak_flops']:6.1%}",
                        flush=True,
                    )
                ratios.append(results[n_trl][1]["trained"] / results[n_trl][1]["seconds"] / base)
    print(
        f"median trained-tokens/s ratio, tuneloop {args.ours.split(',')[0]} ÷ TRL {args.trl.split(',')[-1]}: "
        f"{statistics.median(ratios):.2f}x"
    )


if __name__ == "__main__":
    sys.exit(main())
