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


def test_band_index_gives_the_same_matches_after_moving_entries_to_its_arrays():
    """The band index moves old entries from a dict into sorted arrays; lookups must not change."""
    import random

    rng = random.Random(3)
    words = "refund invoice storage plan folder share sync login password device backup export".split()
    texts = [" ".join(rng.choice(words) for _ in range(60)) for _ in range(60)]
    texts += [t.replace(t.split()[5], "zebra", 1) for t in texts[:20]]  # near copies of the first 20
    texts += [t.upper() for t in texts[20:30]]  # exact copies once normalised
    in_dict, flushed = Deduper(), Deduper()
    flushed._index.flush_at = 16  # about every two records
    flushed._exact_index.flush_at = 4
    got_dict = [in_dict.add(str(i), t) for i, t in enumerate(texts)]
    got_flushed = [flushed.add(str(i), t) for i, t in enumerate(texts)]
    assert flushed._index.keys.size > 0 and len(flushed._index.recent) < 16
    assert got_dict == got_flushed
    assert sum(m is not None and m.kind == "near" for m in got_flushed) >= 14
    assert [m.of for m in got_flushed[-10:]] == [str(i) for i in range(20, 30)]  # all exact, of the right record


def test_band_index_keeps_every_record_of_a_shared_band_across_flushes():
    from tuneloop.data.dedup import _KeyIndex

    index = _KeyIndex(flush_at=3)
    bands_of = {0: [5, 9], 1: [5, 2**64 - 1], 2: [7, 9], 3: [5, 8], 4: [1, 2]}
    for i, bands in bands_of.items():
        index.add(bands, i)
    assert index.keys.size and index.recent  # some entries in arrays, some still in the dict
    assert list(index.keys) == sorted(index.keys)
    assert index.get([5]) == {0, 1, 3}
    assert index.get([9, 2**64 - 1]) == {0, 1, 2}
    assert index.get([3, 4]) == set()
