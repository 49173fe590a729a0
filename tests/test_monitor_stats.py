"""The statistics of `tuneloop monitor`: drift tests, new terms, output signals, feedback, latency, alerts."""

from __future__ import annotations

import numpy as np
import pytest

from tuneloop.config_monitor import MonitorConfig
from tuneloop.monitor import analyze, drift, signals

ALPHA = 0.05


def test_mmd_false_positive_rate_is_at_most_alpha_over_200_seeded_trials_on_one_distribution():
    rng = np.random.default_rng(0)
    fired = 0
    for trial in range(200):
        traffic, train = rng.normal(size=(40, 8)), rng.normal(size=(150, 8))
        fired += drift.mmd_test(traffic, train, permutations=200, seed=trial).p_value <= ALPHA
    assert fired / 200 <= ALPHA


def test_mmd_power_is_at_least_90_percent_on_a_shifted_distribution():
    rng = np.random.default_rng(1)
    fired = 0
    for trial in range(100):
        traffic, train = rng.normal(size=(40, 8)) + 0.6, rng.normal(size=(150, 8))
        fired += drift.mmd_test(traffic, train, permutations=200, seed=trial).p_value <= ALPHA
    assert fired / 100 >= 0.9


def test_mmd_p_value_is_a_permutation_p_value_and_the_witness_ranks_the_outliers_first():
    rng = np.random.default_rng(2)
    train = rng.normal(size=(100, 4))
    traffic = rng.normal(size=(30, 4))
    traffic[[3, 17]] += 8.0  # two prompts far from anything in training
    result = drift.mmd_test(traffic, train, permutations=99, seed=0)
    assert 1 / 100 <= result.p_value <= 1
    assert set(np.argsort(-result.witness)[:2]) == {3, 17}
    same = drift.mmd_test(train[:30], train[30:], permutations=99, seed=0)
    assert same.p_value > 0.05
    again = drift.mmd_test(train[:30], train[30:], permutations=99, seed=0)
    assert again.p_value == same.p_value and again.mmd2 == same.mmd2  # seeded


def test_mmd_needs_two_points_a_side():
    with pytest.raises(ValueError, match="two points"):
        drift.mmd_test(np.zeros((1, 3)), np.zeros((5, 3)))


def test_length_shift_reports_medians_and_p95_and_detects_longer_inputs():
    rng = np.random.default_rng(3)
    train = rng.integers(20, 60, size=300)
    same = drift.length_shift(rng.integers(20, 60, size=100), train, "tokens")
    longer = drift.length_shift(rng.integers(60, 180, size=100), train, "tokens")
    assert same.p_value > 0.05 and longer.p_value < 1e-6
    assert longer.traffic_median > 100 and 20 <= longer.train_median <= 60
    assert longer.traffic_p95 > longer.traffic_median and longer.unit == "tokens"


def test_new_terms_counts_unseen_words_only_ignoring_case_and_numbers():
    train = ["My invoice is wrong", "Reset my password please"]
    traffic = ["INVOICE 12345 is wrong", "the blender is broken, the blender!", "reset password"]
    terms = drift.new_terms(traffic, train, top=2)
    # words: invoice is wrong | the blender is broken the blender | reset password → 11 words, 5 new
    assert terms.traffic_words == 11 and terms.new_words == 5
    assert terms.rate == pytest.approx(5 / 11)
    assert terms.top == [("blender", 2), ("the", 2)]
    assert terms.distinct_new == 3
    assert drift.words("Don't e-mail ORD-12345!") == ["don't", "e-mail", "ord"]


def test_sample_indices_are_seeded_and_bounded():
    a, b = drift.sample_indices(1000, 10, seed=4), drift.sample_indices(1000, 10, seed=4)
    assert list(a) == list(b) and len(set(a)) == 10
    assert list(drift.sample_indices(5, 10, seed=4)) == [0, 1, 2, 3, 4]


def _row(i: int, day: str, output: str, finish: str = "stop", latency: float = 0.1, **kw) -> dict:
    return {
        "id": f"r{i}",
        "time": f"{day}T10:00:00.000+00:00",
        "messages": kw.get("messages", [{"role": "user", "content": f"question {i}"}]),
        "prompt": kw.get("prompt"),
        "output": output,
        "finish_reason": finish,
        "latency_s": latency,
    }


CHECKS = signals.OutputChecks(
    refusal=lambda text: text.startswith("I can't"),
    repetition=lambda text: text == "loop loop",
    json_valid=lambda texts: [float(t.startswith("{")) for t in texts],
)


def test_output_signals_per_day_count_answers_only_and_rates_share_them():
    rows = [
        _row(0, "2026-11-01", "{}"),
        _row(1, "2026-11-01", "  "),
        _row(2, "2026-11-01", "I can't help"),
        _row(3, "2026-11-02", "loop loop", "length"),
        _row(4, "2026-11-02", "", "error"),
        _row(5, "2026-11-02", "", "cancelled"),
    ]
    out = signals.output_signals(rows, CHECKS)
    assert list(out["per_day"]) == ["2026-11-01", "2026-11-02"]
    day1, day2 = out["per_day"]["2026-11-01"], out["per_day"]["2026-11-02"]
    assert (day1["requests"], day1["answers"], day1["empty"], day1["refusal"], day1["json_valid"]) == (3, 3, 1, 1, 1)
    assert (day2["requests"], day2["answers"], day2["errors"], day2["cancelled"]) == (3, 1, 1, 1)
    assert (day2["truncated"], day2["repetition"], day2["empty"]) == (1, 1, 0)  # the error is no empty answer
    rates = out["rates"]
    assert rates["errors"] == pytest.approx(1 / 6)
    assert rates["empty"] == pytest.approx(1 / 4) and rates["truncated"] == pytest.approx(1 / 4)
    assert rates["json_valid"] == pytest.approx(1 / 4)
    assert "json_schema" not in rates  # no schema, no schema counts


def test_feedback_rates_use_the_responses_in_the_window():
    feedback = {
        "r1": {"rating": "up", "correction": None},
        "r2": {"rating": "down", "correction": "the right answer"},
        "r3": {"rating": None, "correction": "better"},
        "old": {"rating": "down", "correction": None},  # not in the window
    }
    out = signals.feedback_rates(["r1", "r2", "r3", "r4"], feedback)
    assert (out["with_feedback"], out["rated"], out["up"], out["down"], out["corrected"]) == (3, 2, 1, 1, 2)
    assert out["down_rate"] == 0.5 and out["corrected_rate"] == pytest.approx(2 / 3)


def test_latency_percentiles():
    lat = signals.latency([float(i) for i in range(1, 101)])
    assert lat["n"] == 100 and lat["p50"] == pytest.approx(50.5) and lat["p95"] == pytest.approx(95.05)
    assert signals.latency([])["p95"] is None


def _report(rows, feedback=None, **settings):
    mcfg = MonitorConfig(**{"min_requests": 5, "permutations": 99, **settings})
    rng = np.random.default_rng(0)
    vectors: dict[str, np.ndarray] = {}

    def embed(texts):
        return np.stack([vectors.setdefault(t, rng.normal(size=4)) for t in texts])

    train = [f"question {i}" for i in range(40)]
    report = analyze.analyze(
        mcfg, rows, feedback or {}, train, checks=CHECKS, embed=embed, length_of=len, unit="characters"
    )
    return report, analyze.find_alerts(report, mcfg)


def test_no_alert_on_clean_traffic_and_each_threshold_raises_its_own_alert():
    clean = [_row(i, "2026-11-01", "{}") for i in range(20)]
    report, alerts = _report(clean)
    assert report["drift"]["status"] == "tested" and alerts == []

    _, alerts = _report(clean, max_p95_latency_s=0.05)
    assert [a["name"] for a in alerts] == ["latency_p95"]
    empty = [*clean[:17], *(_row(i, "2026-11-01", "") for i in range(17, 20))]
    _, alerts = _report(empty)
    assert {a["name"] for a in alerts} == {"empty", "json_valid"}  # 3/20 empty > 5%; 17/20 JSON < 95%
    _, alerts = _report(empty, max_empty_rate=None, min_json_valid_rate=None)
    assert alerts == []
    truncated = [_row(i, "2026-11-01", "{}", "length" if i < 4 else "stop") for i in range(20)]
    assert [a["name"] for a in _report(truncated)[1]] == ["truncated"]


def test_thumbs_down_alert_needs_min_feedback_ratings():
    rows = [_row(i, "2026-11-01", "{}") for i in range(20)]
    downs = {f"r{i}": {"rating": "down", "correction": None} for i in range(5)}
    assert _report(rows, downs)[1] == []  # 5 ratings < min_feedback 10
    assert [a["name"] for a in _report(rows, downs, min_feedback=5)[1]] == ["thumbs_down"]


def test_drift_is_not_tested_below_min_requests_and_fires_on_new_prompts():
    rows = [_row(i, "2026-11-01", "{}") for i in range(4)]
    report, alerts = _report(rows)
    assert report["drift"] == {"status": analyze.NOT_ENOUGH, "prompts": 4, "min_requests": 5}
    assert alerts == []
    novel = [
        _row(i, "2026-11-01", "{}", messages=[{"role": "user", "content": f"quantum blender recipe number {i} " * 3}])
        for i in range(30)
    ]
    report, alerts = _report(novel)
    names = {a["name"] for a in alerts}
    assert {"drift_length", "new_terms"} <= names
    assert report["drift"]["new_terms"]["top"][0] == {"term": "blender", "count": 90}
    assert report["drift"]["most_drifted"][0]["prompt"].startswith("quantum blender")


def test_user_text_joins_user_turns_or_takes_the_prompt():
    messages = [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "hello"},
        {"role": "user", "content": "refund?"},
    ]
    assert analyze.user_text(messages) == "hi\nrefund?"
    assert analyze.user_text(None, "complete this") == "complete this"


def test_monitor_config_section_defaults_overrides_and_errors(tmp_path):
    from tuneloop import config
    from tuneloop.errors import UserError

    path = tmp_path / "tuneloop.yaml"
    path.write_text("task:\n  objective: route tickets\n  type: chat\n")
    cfg = config.load(path, ["monitor.max_empty_rate=0.2", "monitor.max_p95_latency_s=2.5"])
    assert cfg.monitor.drift_alpha == 0.05 and cfg.monitor.encoder == "minilm-l6"
    assert cfg.monitor.max_empty_rate == 0.2 and cfg.monitor.max_p95_latency_s == 2.5

    path.write_text("task:\n  objective: route tickets\n  type: chat\nmonitor:\n  max_empty_rat: 0.1\n")
    with pytest.raises(UserError, match=r"tuneloop.yaml:5: unknown key 'monitor.max_empty_rat'; did you mean "
                       r"'monitor.max_empty_rate'"):  # fmt: skip
        config.load(path)
    path.write_text("task:\n  objective: route tickets\n  type: chat\nmonitor:\n  max_refusal_rate: 1.5\n")
    with pytest.raises(UserError, match=r"monitor\.max_refusal_rate"):
        config.load(path)
    # A test whose smallest p-value is above drift_alpha/2 could never alarm: refused, with the fix.
    path.write_text(
        "task:\n  objective: route tickets\n  type: chat\nmonitor:\n  drift_alpha: 0.01\n  permutations: 150\n"
    )
    with pytest.raises(UserError, match="use at least 200 permutations"):
        config.load(path)
    assert config.load(path, ["monitor.permutations=200"]).monitor.permutations == 200
