"""The benchmark scripts run (on tiny sizes) and report what they promise."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_data_prepare_bench_reports_rates_quality_and_the_ratio():
    out = subprocess.run(
        [sys.executable, str(ROOT / "bench/data_prepare.py"), "--rows", "3000", "--modes", "plain,datasketch"],
        capture_output=True,
        text=True,
        check=True,
        timeout=300,
    ).stdout
    ours = re.search(r"without tokenization: ([\d,]+) rows/s.*recall ([\d.]+), precision ([\d.]+)", out)
    theirs = re.search(r"datasketch dedup alone: ([\d,]+) rows/s.*recall ([\d.]+), precision ([\d.]+)", out)
    assert ours and theirs, out
    assert float(ours[2]) >= 0.9 and float(ours[3]) >= 0.99  # planted near-duplicates are found
    assert float(theirs[3]) >= 0.9
    assert re.search(r"without tokenization runs at [\d.]+x the rows/s of datasketch", out), out


def test_serve_load_bench_reports_each_level_and_the_batching_ratio():
    """A couple of seconds per level on the tiny model: it starts and stops its own servers, and reports."""
    out = subprocess.run(
        [sys.executable, str(ROOT / "bench/serve_load.py"), "--model", "tiny", "--duration", "1.5",
         "--clients", "1,4", "--max-tokens", "8"],
        capture_output=True,
        text=True,
        check=True,
        timeout=580,
    ).stdout  # fmt: skip
    levels = re.findall(r"(\d+) clients: +([\d.]+) requests/s, +([\d.]+) output tokens/s, p50 +([\d.]+) s, "
                        r"p95 +([\d.]+) s, (\d+) requests, (\d+) failed", out)  # fmt: skip
    assert [int(c) for c, *_ in levels] == [1, 4, 1, 4], out  # batched, then one at a time
    assert all(int(n) > 0 and int(failed) == 0 for *_, n, failed in levels), out
    assert re.search(r"batching ratio at 4 clients: [\d.]+x", out), out


def test_serve_load_bench_compares_the_traffic_log_and_checks_it_wrote():
    out = subprocess.run(
        [sys.executable, str(ROOT / "bench/serve_load.py"), "--model", "tiny", "--duration", "1.5",
         "--clients", "2", "--max-tokens", "4", "--compare-log", "--rounds", "2", "--control"],
        capture_output=True,
        text=True,
        check=True,
        timeout=580,
    ).stdout  # fmt: skip
    assert "without a traffic log" in out and "with --log-file" in out, out
    stored, dropped, sent = map(float, re.search(r"(\d+) requests stored, (\d+) dropped, of (\d+) sent", out).groups())
    assert stored >= sent > 0 and dropped == 0, out  # the warm-up's requests are stored too
    assert re.search(r"log overhead at 2 clients: p50 [\d.]+x without the log \([+-][\d.]+%, 95% interval "
                     r"[+-][\d.]+% to [+-][\d.]+%\); two servers without it differ by [+-][\d.]+% "
                     r"\([+-][\d.]+% to [+-][\d.]+%\)", out), out  # fmt: skip
    assert "without a traffic log (control)" in out, out


def test_data_prepare_bench_scores_pii_per_type_on_the_multi_country_fixture():
    out = subprocess.run(
        [sys.executable, str(ROOT / "bench/data_prepare.py"), "--modes", "pii", "--pii-items", "150"],
        capture_output=True,
        text=True,
        check=True,
        timeout=600,
    ).stdout
    scores = {
        kind: (float(recall), float(precision))
        for kind, recall, precision in re.findall(r"PII (\w+): recall ([\d.]+) .*precision ([\d.]+)", out)
    }
    assert set(scores) == {"EMAIL", "PHONE", "CREDIT_CARD", "IBAN", "SSN", "IP_ADDRESS", "SECRET"}, out
    for kind, (recall, precision) in scores.items():
        assert recall >= 0.95 and precision >= 0.99, (kind, out)
    assert re.search(r"PII fixture: [\d,]+ planted values, [\d,]+ look-alikes", out), out


def test_pii_fixture_plants_phones_of_every_country_in_national_and_international_format():
    sys.path.insert(0, str(ROOT / "bench"))
    try:
        from data_prepare import PHONE_COUNTRIES, pii_fixture
    finally:
        sys.path.remove(str(ROOT / "bench"))
    import phonenumbers

    phones = [value for _, kind, value in pii_fixture(300) if kind == "PHONE"]
    international = [p for p in phones if p.startswith("+")]
    # +1 numbers read as US; every other country shows up with its own country code.
    regions = {phonenumbers.region_code_for_number(phonenumbers.parse(p, None)) for p in international}
    assert len(PHONE_COUNTRIES) >= 10 and regions >= set(PHONE_COUNTRIES) - {"CA"}
    national = [p for p in phones if not p.startswith("+")]
    assert len(international) > 0.2 * len(phones) and len(national) > 0.2 * len(phones)


@pytest.mark.slow
def test_monitor_drift_bench_reports_false_positives_and_power_per_size():
    """Tiny sizes (MiniLM embeds every pool once): the figures in the README come from a full run."""
    out = subprocess.run(
        [sys.executable, str(ROOT / "bench/monitor_drift.py"), "--sizes", "20", "--trials", "5",
         "--power-trials", "5", "--train", "100", "--pool", "40", "--shift-pool", "20"],
        capture_output=True,
        text=True,
        check=True,
        timeout=580,
    ).stdout  # fmt: skip
    found = re.search(r"n=20: false positives ([\d.]+)% \(in-distribution\), power ([\d.]+)% \(another topic\), "
                      r"([\d.]+)% \(another length profile\)", out)  # fmt: skip
    assert found, out
    assert float(found[1]) <= 40 and float(found[2]) >= 60 and float(found[3]) >= 60, out


def test_train_sft_bench_compares_with_trl_default_and_fastest_on_the_quickstart_tickets():
    out = subprocess.run(
        [sys.executable, str(ROOT / "bench/train_sft.py"), "--quick", "--shapes", "quickstart", "--ours", "auto@fp32"],
        capture_output=True,
        text=True,
        check=True,
        timeout=900,
    ).stdout
    rows = {
        m.group(1): float(m.group(2)) for m in re.finditer(r"quickstart (TRL \w+|tuneloop \S+ \w+) +([\d.]+) ", out)
    }
    assert set(rows) == {"TRL default", "TRL fastest", "tuneloop auto:shared_prefix fp32"}, out
    assert all(rate > 0 for rate in rows.values()), out
    assert re.search(r"tuneloop auto@fp32 ÷ TRL fastest: [\d.]+x", out), out


def test_expense_claims_are_reproducible_and_every_field_is_in_the_claim(tmp_path: Path):
    """The transfer task is fair: same seed, same bytes; each answer is schema-valid and readable off the text."""
    import json

    import jsonschema

    sys.path.insert(0, str(ROOT / "bench"))
    import expense_claims

    expense_claims.write(tmp_path / "a.jsonl", 300, 7, tmp_path / "schema.json")
    expense_claims.write(tmp_path / "b.jsonl", 300, 7)
    assert (tmp_path / "a.jsonl").read_bytes() == (tmp_path / "b.jsonl").read_bytes()
    schema = json.loads((tmp_path / "schema.json").read_text())
    kinds, projects = set(), 0
    for line in (tmp_path / "a.jsonl").read_text().splitlines():
        _, claim, answer = json.loads(line)["messages"]
        record = json.loads(answer["content"])
        jsonschema.validate(record, schema)
        kinds.add(record["type"])
        if record["project"]:
            projects += 1
            assert record["project"] in claim["content"]
        digits = f"{record['amount']:.2f}".replace(".00", "")
        assert digits in claim["content"].replace(",", ""), (record, claim["content"])
    assert kinds == set(expense_claims.TYPES) and 120 < projects < 240


def test_quickstart_transfer_bench_runs_the_quickstart_recipe_on_the_claims():
    """Plumbing on a tiny model: the shipped recipe with only the data swapped, evaluated base vs tuned."""
    out = subprocess.run(
        [sys.executable, str(ROOT / "bench/quickstart_transfer.py"), "--model", "tiny", "--count", "60",
         "--set", "train.max_steps=2", "--set", "eval.forgetting.enabled=false", "--set", "eval.redteam.enabled=false"],
        capture_output=True,
        text=True,
        check=True,
        timeout=580,
    ).stdout  # fmt: skip
    assert re.search(r"\(13 test examples, 95% intervals\)", out), out
    for name in ("exact_match", "json_match", "json_schema", "field amount", "field project"):
        assert re.search(rf"{name} +[\d.]+ → +[\d.]+", out), (name, out)
