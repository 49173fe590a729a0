"""The benchmark scripts run (on tiny sizes) and report what they promise."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

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
