"""Cleaning steps, the split assignment and the deduper in isolation."""

from collections import Counter

import xxhash

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


def test_split_is_stable_grouped_and_seeded():
    keys = [xxhash.xxh64_intdigest(f"row {i}".encode()) for i in range(3000)]
    groups = [f"g{i // 2}" for i in range(3000)]  # pairs share a group
    fractions = {"train": 0.8, "val": 0.1, "test": 0.1}
    splits = assign_splits(groups, keys, fractions, seed=1)
    assert splits == assign_splits(groups, keys, fractions, seed=1)
    assert splits != assign_splits(groups, keys, fractions, seed=2)
    for i in range(0, 3000, 2):
        assert splits[i] == splits[i + 1]
    counts = Counter(splits)
    for name, share in fractions.items():
        assert abs(counts[name] - share * 3000) <= 4 * (3000 * share * (1 - share)) ** 0.5
    # Rows added anywhere, and rows removed, never move the others.
    more = [xxhash.xxh64_intdigest(f"new {i}".encode()) for i in range(500)]
    grown = assign_splits([f"n{i}" for i in range(500)] + groups[100:], more + keys[100:], fractions, seed=1)
    assert grown[500:] == splits[100:]


def test_a_group_is_keyed_by_its_smallest_member_key():
    fractions = {"train": 0.5, "test": 0.5}
    alone = {k: assign_splits(["g"], [k], fractions, seed=3)[0] for k in range(1, 600)}
    a = 300
    b = next(k for k in alone if k > a and alone[k] != alone[a])
    low = next(k for k in alone if k < a and alone[k] != alone[a])
    # Whichever member comes first, the group goes where its smallest key would go alone.
    assert assign_splits(["g", "g"], [b, a], fractions, seed=3) == [alone[a]] * 2
    assert assign_splits(["g", "g"], [a, b], fractions, seed=3) == [alone[a]] * 2
    # The documented edge case: a new member with a smaller key moves the whole group.
    assert assign_splits(["g", "g", "g"], [a, b, low], fractions, seed=3) == [alone[low]] * 3


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


def test_a_systemic_row_error_stays_systemic_across_processes():
    import pickle

    from tuneloop.data.formats import RowError

    again = pickle.loads(pickle.dumps(RowError("no chat template", systemic=True)))
    assert str(again) == "no chat template" and again.systemic
    assert not pickle.loads(pickle.dumps(RowError("bad row"))).systemic


def test_a_tiny_data_set_still_gets_a_row_in_every_split():
    fractions = {"train": 0.8, "val": 0.1, "test": 0.1}
    # Twelve rows whose hashes alone put none in val (found by search, fixed by the seed).
    keys = next(
        ks
        for start in range(0, 12_000, 12)
        if not _hash_only_has(ks := list(range(start, start + 12)), "val", fractions, 5)
    )
    splits = assign_splits([str(k) for k in keys], keys, fractions, seed=5)
    assert Counter(splits)["val"] == 1 and Counter(splits)["test"] >= 1
    # Larger data never needs it: every row is where its own hash puts it.
    many = list(range(500))
    assert assign_splits([str(k) for k in many], many, fractions, seed=5) == [
        assign_splits(["x"], [k], fractions, seed=5)[0] for k in many
    ]


def _hash_only_has(keys: list[int], name: str, fractions: dict[str, float], seed: int) -> bool:
    return any(assign_splits(["x"], [k], fractions, seed)[0] == name for k in keys)
