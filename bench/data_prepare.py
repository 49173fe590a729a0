"""Benchmark the data stage on synthetic support chats with planted duplicates and PII.

    .venv/bin/python bench/data_prepare.py [--rows 200000] [--model smollm2-135m-instruct]

Generates the data (seeded), then runs `prepare()` in a fresh subprocess per mode — without and
with tokenization — and prints rows/s, peak RSS, and near-duplicate recall and precision on the
planted pairs. The `datasketch` mode is the obvious alternative for the dedup step alone: one
process, datasketch's MinHash (default hash) and MinHashLSH index over the same word 3-grams, at
the same threshold. The `pii` mode scores the PII step (the default `data.pii` settings) per type on a
generated multi-country fixture: phone numbers of 15 countries in national and international format,
emails, cards, IBANs, SSNs, IPs and keys, each in a sentence, plus look-alikes that must be kept
(order numbers, dates, times, amounts, tracking codes, Luhn-invalid card numbers, bad IBANs and
SSNs). Absolute times are noise on shared machines; compare modes within one run.
"""

from __future__ import annotations

import argparse
import json
import random
import re
import subprocess
import sys
import tempfile
import time
from collections import Counter
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
    from tuneloop.data.chat_templates import project_tokenizer
    tok = project_tokenizer(cfg)
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


# --------------------------------------------------------------------------- the PII fixture

PHONE_COUNTRIES = ("US", "CA", "GB", "IE", "DE", "FR", "ES", "IT", "NL", "CH", "AU", "IN", "BR", "MX", "JP")
PHONE_SENTENCES = (
    "Please call me on {} tomorrow morning.",
    "My number: {}",
    "You can reach the office at {} or by mail.",
    "Tel. {} (ask for the billing team)",
    "{} is my mobile, text me.",
    "Rückruf bitte unter {}.",
    "Appelez-moi au {}, merci.",
)
KEPT_SENTENCES = ("Your reference is {}.", "See {} for details.", "We noted {} in the ticket.", "Status: {}")


def _luhn_complete(rng: random.Random, prefix: str, length: int) -> str:
    """A card number with the given prefix and length whose Luhn check digit is right."""
    body = prefix + "".join(str(rng.randrange(10)) for _ in range(length - len(prefix) - 1))
    total = 0
    for i, ch in enumerate(reversed(body + "0")):
        d = int(ch)
        total += (d * 2 - 9 if d > 4 else d * 2) if i % 2 else d
    return body + str((10 - total % 10) % 10)


def _iban(rng: random.Random, country: str, bban_length: int, letters: int = 0) -> str:
    bban = "".join(rng.choice("ABCDEFGHIJKLMNOPQRSTUVWXYZ") for _ in range(letters))
    bban += "".join(str(rng.randrange(10)) for _ in range(bban_length - letters))
    check = 98 - int("".join(str(int(ch, 36)) for ch in bban + country + "00")) % 97
    return f"{country}{check:02d}{bban}"


def _grouped(value: str, size: int = 4, sep: str = " ") -> str:
    return sep.join(value[i : i + size] for i in range(0, len(value), size))


def _phones(rng: random.Random, region: str, n: int) -> list[str]:
    """Valid numbers of `region` (fixed line and mobile), written the ways people write them."""
    import phonenumbers
    from phonenumbers import PhoneNumberFormat, PhoneNumberType

    kinds = (PhoneNumberType.FIXED_LINE, PhoneNumberType.MOBILE)
    examples = [e for e in (phonenumbers.example_number_for_type(region, t) for t in kinds) if e is not None]
    out: list[str] = []
    while len(out) < n:
        example = rng.choice(examples)
        digits = str(example.national_number)
        keep = max(len(digits) - 6, 2)  # the area code or mobile prefix; the rest drawn at random
        digits = digits[:keep] + "".join(str(rng.randrange(10)) for _ in range(len(digits) - keep))
        candidate = phonenumbers.PhoneNumber(country_code=example.country_code, national_number=int(digits))
        if not phonenumbers.is_valid_number_for_region(candidate, region):
            continue
        national = phonenumbers.format_number(candidate, PhoneNumberFormat.NATIONAL)
        international = phonenumbers.format_number(candidate, PhoneNumberFormat.INTERNATIONAL)
        separated = national if "(" in national else national.replace(" ", rng.choice("-."))  # 020-7946-0958
        written = (
            national,  # as the country writes it: 020 7946 0958, (11) 91234-5678, 06 12 34 56 78
            separated,
            re.sub(r"[ .-]", "", national),  # 02079460958
            international,  # +44 20 7946 0958
            international.replace(" ", "-"),
            phonenumbers.format_number(candidate, PhoneNumberFormat.E164),  # +442079460958
        )
        out.append(rng.choice(written))
    return out


def _look_alikes(rng: random.Random, iban: str) -> list[str]:
    """Identifiers and quantities with the digits of PII but not its structure: they must be kept."""
    year, month, day = rng.randint(2000, 2030), rng.randint(1, 12), rng.randint(1, 28)
    hour, minute, second = rng.randint(0, 23), rng.randint(0, 59), rng.randint(0, 59)
    card = _luhn_complete(rng, "4", 16)
    bad_card = card[:-1] + str((int(card[-1]) + rng.randint(1, 9)) % 10)
    return [
        f"order {rng.randint(1_000_000, 99_999_999)}",
        f"order #{rng.randint(100_000, 99_999_999)}",
        f"INV-{year}-{rng.randint(0, 999_999):06d}",
        f"PO {rng.randint(4_500_000_000, 4_599_999_999)}",
        f"ticket {rng.randint(1000, 9999)}-{rng.randint(1000, 9999)}-{rng.randint(10, 99)}",
        f"{year}-{month:02d}-{day:02d}",
        f"{day:02d}/{month:02d}/{year}",
        f"{day:02d}.{month:02d}.{year} at {hour}:{minute:02d}",
        f"{month:02d}/{day:02d}/{year % 100:02d} {hour:02d}:{minute:02d}:{second:02d}",
        f"${rng.randint(1, 9_999):,}.{rng.randint(0, 99):02d}",
        f"{rng.randint(1_000, 9_999_999):,}".replace(",", ".") + f",{rng.randint(0, 99):02d} €",
        f"EUR {rng.randint(10_000, 9_999_999):,}.00",
        f"{rng.randint(1_000_000, 99_999_999) / 100:.2f}",
        "1Z" + "".join(rng.choice("0123456789ABCDEFGHJKLMNPRSTUVWXYZ") for _ in range(16)),  # UPS tracking
        _grouped("9400" + "".join(str(rng.randrange(10)) for _ in range(18))),  # USPS tracking
        _grouped(str(rng.randint(10**11, 10**12 - 1))),  # FedEx-style tracking
        rng.choice([bad_card, _grouped(bad_card), _grouped(bad_card, sep="-")]),  # fails Luhn
        f"{rng.randint(900, 999)}-{rng.randint(10, 99)}-{rng.randint(1000, 9999)}",  # not a valid SSN
        f"{rng.randint(10_000, 99_999)}-{rng.randint(1000, 9999)}",  # ZIP+4
        iban[:2] + f"{(int(iban[2:4]) + 1) % 100:02d}" + iban[4:],  # fails mod-97
        f"v{rng.randint(1, 20)}.{rng.randint(0, 9)}.{rng.randint(0, 99)}.{rng.randint(1000, 99999)}",
        f"ISBN 978-{rng.randint(0, 9)}-{rng.randint(10, 99)}-{rng.randint(100_000, 999_999)}-{rng.randint(0, 9)}",
    ]


def pii_fixture(n: int, seed: int = 0) -> list[tuple[str, str | None, str]]:
    """(sentence, PII type or None for a look-alike that must be kept, the planted value); n per type."""
    rng = random.Random(seed)
    items: list[tuple[str, str | None, str]] = []

    def put(kind: str | None, value: str, sentences: tuple[str, ...] = KEPT_SENTENCES) -> None:
        items.append((rng.choice(sentences).format(value), kind, value))

    for region in PHONE_COUNTRIES:
        for number in _phones(rng, region, max(n // len(PHONE_COUNTRIES), 1)):
            put("PHONE", number, PHONE_SENTENCES)
    alphanumeric = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
    for i in range(n):
        user = f"{rng.choice(NAMES)}{rng.choice(['.', '_', ''])}{rng.choice(NAMES)}{i}"
        put("EMAIL", f"{user}@{rng.choice(['example.com', 'mail.co.uk', 'firma.de', 'corp.example.io'])}")
        prefix, length = rng.choice([("4", 16), ("51", 16), ("55", 16), ("6011", 16), ("34", 15), ("37", 15)])
        number = _luhn_complete(rng, prefix, length)
        if length == 15:
            put("CREDIT_CARD", f"{number[:4]} {number[4:10]} {number[10:]}")
        else:
            put("CREDIT_CARD", rng.choice([number, _grouped(number), _grouped(number, sep="-")]))
        iban = _iban(rng, *rng.choice([("DE", 18, 0), ("GB", 18, 4), ("FR", 23, 0), ("NL", 14, 4), ("ES", 20, 0)]))
        put("IBAN", rng.choice([iban, _grouped(iban)]))
        area = rng.choice([a for a in range(1, 900) if a != 666])
        put("SSN", f"{area:03d}-{rng.randint(1, 99):02d}-{rng.randint(1, 9999):04d}")
        if rng.random() < 0.7:
            put("IP_ADDRESS", ".".join(str(rng.randint(1, 254)) for _ in range(4)))
        else:
            put("IP_ADDRESS", "2001:db8:" + ":".join(f"{rng.randrange(65536):x}" for _ in range(4)) + "::1")
        token = "".join(rng.choice(alphanumeric) for _ in range(40))
        keys = [f"sk-proj-{token[:32]}", f"AKIA{token[:16].upper()}", f"ghp_{token[:36]}", f"hf_{token[:34]}"]
        put("SECRET", rng.choice(keys))
        for value in _look_alikes(rng, iban):
            put(None, value)
    return items


def pii_quality(items: list[tuple[str, str | None, str]]) -> tuple[dict[str, dict[str, float]], float]:
    """Per type: recall (planted values replaced whole by their placeholder) and precision; and texts/s."""
    from tuneloop.config import PiiConfig
    from tuneloop.data.pii import PiiScanner

    scanner = PiiScanner.from_config(PiiConfig())
    planted: Counter[str] = Counter()
    found: Counter[str] = Counter()
    right: Counter[str] = Counter()
    start = time.perf_counter()
    results = [scanner.redact(text) for text, _, _ in items]
    seconds = time.perf_counter() - start
    for (text, kind, value), (redacted, counts) in zip(items, results, strict=True):
        found.update(counts)
        if kind is None:
            continue
        planted[kind] += 1
        if redacted == text.replace(value, f"[{kind}]") and counts == {kind: 1}:
            right[kind] += 1
    table = {
        kind: {
            "planted": planted[kind],
            "recall": right[kind] / planted[kind],
            "found": found[kind],
            "precision": right[kind] / found[kind] if found[kind] else 1.0,
        }
        for kind in sorted(planted)
    }
    return table, len(items) / seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument(
        "--modes",
        default="plain,tokenized,datasketch,pii",
        help="Which runs: plain (no tokenizer), tokenized, datasketch (its LSH dedup alone, one process), "
        "pii (per-type recall and precision on the PII fixture).",
    )
    parser.add_argument("--pii-items", type=int, default=600, help="PII fixture size: items per type.")
    args = parser.parse_args()
    if "pii" in args.modes.split(","):
        items = pii_fixture(args.pii_items)
        table, rate = pii_quality(items)
        kept = sum(kind is None for _, kind, _ in items)
        print(f"PII fixture: {len(items) - kept:,} planted values, {kept:,} look-alikes; {rate:,.0f} texts/s")
        for kind, q in table.items():
            print(
                f"{'PII ' + kind:>22}: recall {q['recall']:.3f} ({q['planted']:,} planted), "
                f"precision {q['precision']:.3f} ({q['found']:,} found)"
            )
    if not set(args.modes.split(",")) - {"pii"}:
        return
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
