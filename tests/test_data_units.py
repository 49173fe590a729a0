"""Cleaning steps, the split assignment and the deduper in isolation."""

from collections import Counter

from tuneloop.data.clean import fold_whitespace, make_cleaner, normalize_unicode, remove_control, strip_html
from tuneloop.data.dedup import Deduper
from tuneloop.data.split import assign_splits


def test_strip_html_keeps_non_markup_angles():
    assert strip_html("<p>Hello <b>there</b> &amp; welcome</p><script>x()</script>").strip() == "Hello there & welcome"
    for text in ("if a < b and c > d", "Vec<T> and <|im_end|>", "plain text"):
        assert strip_html(text) == text


def test_unicode_control_and_whitespace():
    assert normalize_unicode("cafe\u0301") == "café"
    assert remove_control("a\x00b\u200bc\r\nd\te") == "abc\nd\te"
    assert fold_whitespace("  a   b \n\n\n\n c  ") == "a b\n\nc"
    assert make_cleaner({"html": False, "unicode": False, "control": False, "whitespace": False}) is None
    only_ws = make_cleaner({"whitespace": True})
    assert only_ws("<b>a   b</b>") == "<b>a b</b>"


def test_split_is_stratified_grouped_and_seeded():
    labels = ["a"] * 50 + ["b"] * 30
    groups = [f"g{i // 2}" for i in range(80)]  # pairs share a group
    fractions = {"train": 0.8, "val": 0.1, "test": 0.1}
    splits = assign_splits(groups, labels, fractions, seed=1)
    assert splits == assign_splits(groups, labels, fractions, seed=1)
    assert splits != assign_splits(groups, labels, fractions, seed=2)
    for g in set(groups):
        assert len({s for s, gg in zip(splits, groups, strict=True) if gg == g}) == 1
    for label, n in (("a", 50), ("b", 30)):
        counts = Counter(s for s, lab in zip(splits, labels, strict=True) if lab == label)
        assert abs(counts["train"] - 0.8 * n) <= 2 and abs(counts["test"] - 0.1 * n) <= 2


def test_deduper_exact_near_and_distinct():
    d = Deduper(threshold=0.8)
    base = "the quarterly invoice for the enterprise plan shows a duplicate charge for storage add ons this month"
    assert d.add("1", base) is None
    exact = d.add("2", base.upper() + "!!")
    assert (exact.kind, exact.of) == ("exact", "1")
    near = d.add("3", base + " please")
    assert near.kind == "near" and near.of == "1" and near.similarity >= 0.8
    assert d.add("4", "how do i share a folder with read only access for a contractor") is None
