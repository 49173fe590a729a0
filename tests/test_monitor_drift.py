"""The drift alarm's promise, measured with the real MiniLM encoder on seeded synthetic traffic.

On traffic from the training distribution it fires in at most 5% of 100 trials (drift_alpha 0.05);
on traffic about another topic, or with another length profile, in at least 90% of 100 trials at the
sample size the README recommends. The pools come from bench/monitor_drift.py (which measures the
same rates at more sizes and trials for the README); each pool is embedded once, and each trial
compares with its own seeded sample of 400 of the 800 training prompts.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
RECOMMENDED = 50  # the README's recommended traffic sample (and monitor.min_requests' default)
TRIALS = 100

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def measured():
    spec = importlib.util.spec_from_file_location("monitor_drift_bench", ROOT / "bench" / "monitor_drift.py")
    bench = importlib.util.module_from_spec(spec)
    sys.modules["monitor_drift_bench"] = bench
    spec.loader.exec_module(bench)
    return bench, bench.Measured(bench.make_pools(train_size=800, pool_size=300, shift_size=150, seed=11))


def test_drift_alarm_fires_in_at_most_5_percent_of_100_in_distribution_trials(measured):
    bench, pools = measured
    assert bench.alarm_rate(pools, "same", RECOMMENDED, TRIALS, train_sample=400) <= 0.05


@pytest.mark.parametrize("shift", ["topic", "length"])
def test_drift_alarm_fires_in_at_least_90_percent_of_100_shifted_trials(measured, shift):
    bench, pools = measured
    assert bench.alarm_rate(pools, shift, RECOMMENDED, TRIALS, train_sample=400) >= 0.9
