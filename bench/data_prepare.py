"""Benchmark the data stage on synthetic support chats with planted duplicates and PII.

    .venv/bin/python bench/data_prepare.py [--rows 200000] [--model smollm2-135m-instruct]

Generates the data (seeded), then runs `prepare()` in a fresh subprocess per mode — without and
with tokenization — and prints rows/s, peak RSS, and near-duplicate recall and precision on the
planted pairs. The `datasketch` mode is the obvious alternative for the dedup step alone: one
process, datasketch's MinHash (default hash) and MinHashLSH index over the same word 3-grams, at
the same threshold. Absolute times are noise on shared machines; compare modes within one run.
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

WORDS = (
    "account invoice upload folder share sync desktop mobile browser password login refund charge plan "
    "storage team admin device error crash slow backup restore trash link permission export import file "
    "photo video document contract policy renewal discount quota limit network proxy firewall update "
    "version windows macos linux android iphone tablet calendar email notification setting profile "
    "security token support ticket agent manager customer billing payment card bank transfer receipt tax "
    "region language"
).split()
NAMES = "alice bob carol dan erin frank grace heidi ivan judy mallory nina oscar peggy rupert sybil trent".split()


def sentence(rng: random.Random, n: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n)).capitalize() + "."


def make_row(rng: random.Random, i: int) -> dict:
    user = f"Ticket {i}: " + " ".join(sentence(rng, rng.randint(8, 14)) for _ in range(3))
    if rng.random() < 0.1:
        name = rng.choice(NAMES)
        user += f" Contact me at {name}.{i}@example.com or +1-202-555-{rng.randint(1000, 9999)}."
    answer = " ".join(sentence(rng, rng.randint(8, 14)) for _ in range(3))
    return {
        "messages": [
            {"role": "system", "content": "You are a support agent."},
            {"role": "user", "content": user},
            {"role": "assistant", "content": answer},
        ]
    }


def near_copy(rng: random.Random, row: dict) -> dict:
    """One word replaced in a ~90-word conversation: Jaccard of 3-gram shingles stays around 0.93."""
    copy = json.loads(json.dumps(row))
    words = copy["messages"][2]["content"].split()
    words[rng.randrange(len(words))] = rng.choice(WORDS)
    copy["messages"][2]["content"] = " ".join(words)
    return copy


def generate(path: Path, rows: int, seed: int = 0) -> dict[int, int]:
    """Write `rows` rows; return {line of a planted duplicate: line of its original}."""
    rng = random.Random(seed)
    originals: list[tuple[int, dict]] = []
    planted: dict[int, int] = {}
    with path.open("w") as f:
        for line in range(1, rows + 1):
            r = rng.random()
            if originals and r < 0.10:
                source_line, source = rng.choice(originals)
                if r < 0.05:  # exact once case is normalised away
                    row = json.loads(json.dumps(source))
                    row["messages"][1]["content"] = row["messages"][1]["content"].upper()
                else:
                    row = near_copy(rng, source)
                planted[line] = source_line
            else:
                row = make_row(rng, line)
                originals.append((line, row))
            f.write(json.dumps(row) + "\n")
    return planted


# The child's own peak. Not getrusage: Linux carries ru_maxrss across exec, so a child started by
# this (large, data-generating) parent would report the parent's peak when that is higher.
PEAK_RSS = """
def peak_rss_mb():
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:")) / 1024
"""


def run_mode(folder: Path, tokenize: bool, model: str) -> dict:
    """Run prepare() in a child process so peak RSS belongs to that mode alone."""
    code = (
        PEAK_RSS
        + f"""
import json, resource, sys, time
from tuneloop import config
from tuneloop.data.prepare import prepare
cfg = config.load({str(folder / "tuneloop.yaml")!r})
if {tokenize!r}:
    from tuneloop.models import load_tokenizer, resolve
    tok = load_tokenizer(resolve(cfg.model.name))
else:
    tok = None
start = time.perf_counter()
result = prepare(cfg, tokenizer=tok, tokenize={tokenize!r})
elapsed = time.perf_counter() - start
print(json.dumps({{"seconds": elapsed, "rss_mb": peak_rss_mb(),
                  "worker_rss_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024,
                  "report": result.report}}))
"""
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def run_datasketch(path: Path, threshold: float = 0.85) -> dict:
    """Near-dedup only, the way datasketch's documentation does it; in a child for its own peak RSS."""
    code = (
        PEAK_RSS
        + f"""
import json, re, time
from datasketch import MinHash, MinHashLSH
start = time.perf_counter()
lsh, flagged, word = MinHashLSH(threshold={threshold}, num_perm=128), [], re.compile(r"\\w+")
with open({str(path)!r}, encoding="utf-8") as f:
    for line_number, line in enumerate(f, 1):
        row = json.loads(line)
        words = word.findall(" ".join(m["content"] for m in row["messages"]).lower())
        m = MinHash(num_perm=128)
        m.update_batch([" ".join(words[i : i + 3]).encode() for i in range(max(len(words) - 2, 1))])
        if lsh.query(m):
            flagged.append(line_number)
        else:
            lsh.insert(line_number, m)
print(json.dumps({{"seconds": time.perf_counter() - start, "flagged": flagged, "rss_mb": peak_rss_mb()}}))
"""
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def dedup_quality(folder: Path, planted: dict[int, int]) -> tuple[float, float]:
    """Recall and precision of the dedup stage on the planted duplicates."""
    dup_lines = set(planted)
    flagged = set()
    with (folder / "data/prepared/rejects.jsonl").open() as f:
        for line in f:
            r = json.loads(line)
            if r["stage"] == "dedup":
                flagged.add(r["line"])
    true_pos = len(flagged & dup_lines)
    return true_pos / max(len(dup_lines), 1), true_pos / max(len(flagged), 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument(
        "--modes",
        default="plain,tokenized,datasketch",
        help="Which runs: plain (no tokenizer), tokenized, datasketch (its LSH dedup alone, one process).",
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        (folder / "data").mkdir()
        t0 = time.perf_counter()
        planted = generate(folder / "data/train.jsonl", args.rows)
        n_dups = len(planted)
        print(f"generated {args.rows:,} rows ({n_dups:,} planted duplicates) in {time.perf_counter() - t0:.1f}s")
        (folder / "tuneloop.yaml").write_text(
            "task: {objective: bench, type: chat}\n"
            f"model: {{name: {args.model}}}\n"
            "data: {train: [data/train.jsonl], max_length: 512}\n"
        )
        results = {}
        modes = args.modes.split(",")
        for tokenize in [m == "tokenized" for m in ("plain", "tokenized") if m in modes]:
            name = "with tokenization" if tokenize else "without tokenization"
            r = run_mode(folder, tokenize, args.model)
            recall, precision = dedup_quality(folder, planted)
            rate = args.rows / r["seconds"]
            results[name] = rate
            print(
                f"{name:>22}: {rate:,.0f} rows/s, peak RSS {r['rss_mb']:,.0f} MB (largest worker "
                f"{r['worker_rss_mb']:,.0f} MB), "
                f"near-dup recall {recall:.3f}, precision {precision:.3f}, "
                f"PII rows {r['report']['pii']['rows']:,}, out {r['report']['rows_out']:,}"
            )
        if "datasketch" in modes:
            r = run_datasketch(folder / "data/train.jsonl")
            flagged = set(r["flagged"])
            true_pos = len(flagged & set(planted))
            rate = args.rows / r["seconds"]
            results["datasketch"] = rate
            print(
                f"{'datasketch dedup alone':>22}: {rate:,.0f} rows/s, peak RSS {r['rss_mb']:,.0f} MB, "
                f"near-dup recall {true_pos / max(len(planted), 1):.3f}, "
                f"precision {true_pos / max(len(flagged), 1):.3f}"
            )
        if "with tokenization" in results and "without tokenization" in results:
            ratio = results["with tokenization"] / results["without tokenization"]
            print(f"tokenization keeps {ratio:.2f}x of the untokenized throughput")
        for name in ("without tokenization", "with tokenization"):
            if name in results and "datasketch" in results:
                ratio = results[name] / results["datasketch"]
                print(f"the whole pipeline {name} runs at {ratio:.2f}x the rows/s of datasketch's dedup alone")


if __name__ == "__main__":
    sys.exit(main())
