"""The data stage end to end on small files, with the tiny model's tokenizer."""

import json
from pathlib import Path

import pytest
import yaml

from tuneloop import config
from tuneloop.data.prepare import prepare
from tuneloop.errors import UserError


def qa(i: int, q: str | None = None, a: str | None = None) -> dict:
    return {
        "messages": [
            {"role": "user", "content": q or f"Question number {i}: how do I configure feature {i} on plan {i % 7}?"},
            {
                "role": "assistant",
                "content": a or f"Open settings, choose feature {i}, and save. Plan {i % 7} includes it.",
            },
        ]
    }


def make_project(root: Path, tiny_llama: Path, rows: list, data: dict | None = None, name="train.jsonl") -> Path:
    (root / "data").mkdir(parents=True, exist_ok=True)
    with (root / "data" / name).open("w") as f:
        for r in rows:
            f.write(r if isinstance(r, str) else json.dumps(r))
            f.write("\n")
    cfg = {
        "task": {"objective": "answer", "type": "chat"},
        "model": {"name": str(tiny_llama)},
        "data": {"train": [f"data/{name}"], **(data or {})},
    }
    (root / "tuneloop.yaml").write_text(yaml.safe_dump(cfg))
    return root / "tuneloop.yaml"


def run(path: Path, *overrides: str, **kwargs):
    return prepare(config.load(path, list(overrides)), **kwargs)


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_every_input_row_is_accounted_for(tmp_path: Path, tiny_llama: Path):
    rows = [qa(i) for i in range(40)]
    rows[3] = "{not json"
    rows[7] = {"messages": [{"role": "user", "content": "only a question"}]}
    rows[9] = qa(9, a="   ")
    rows[12] = qa(1)  # exact duplicate of row 2 (line 2)
    rows[15] = {"messages": [{"role": "user", "content": "x" * 5}, {"role": "assistant", "content": "word " * 400}]}
    path = make_project(tmp_path, tiny_llama, rows, {"max_length": 256})
    result = run(path)
    out = result.out_dir
    kept_ids = {r["id"] for split in ("train", "val", "test") for r in read_jsonl(out / f"{split}.jsonl")}
    rejects = read_jsonl(out / "rejects.jsonl")
    reject_lines = {r["line"] for r in rejects}
    assert {int(i.split(":")[1]) for i in kept_ids} | reject_lines == set(range(1, 41))
    assert not {int(i.split(":")[1]) for i in kept_ids} & reject_lines
    by_line = {r["line"]: r for r in rejects}
    assert by_line[4]["stage"] == "validate" and by_line[4]["raw"] == "{not json"
    assert "no assistant turn" in by_line[8]["reason"]
    assert "empty" in by_line[10]["reason"]
    assert by_line[13]["stage"] == "dedup" and "exact duplicate of data/train.jsonl:2" in by_line[13]["reason"]
    assert by_line[16]["stage"] == "length" and "> data.max_length 256" in by_line[16]["reason"]
    report = result.report
    assert report["rows_in"] == 40 and report["rows_out"] == 35
    assert [s["remaining"] for s in report["flow"]][-1] == 35
    assert json.loads((out / "report.json").read_text())["rows_out"] == 35
    assert (out / "lengths.png").stat().st_size > 1000
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["splits"]["train"]["rows"] == report["splits"]["train"]["rows"]
    assert len(manifest["splits"]["train"]["sha256"]) == 64


def test_splits_are_seeded_and_sized(tmp_path: Path, tiny_llama: Path):
    path = make_project(tmp_path, tiny_llama, [qa(i) for i in range(100)], {"dedup": {"near": "off"}})
    first = run(path).report["splits"]
    sizes = first["train"]["rows"], first["val"]["rows"], first["test"]["rows"]
    # Each row's split comes from its own hash, so sizes follow the shares up to sampling noise (σ = 3 rows here).
    assert sum(sizes) == 100 and abs(sizes[0] - 80) <= 12 and abs(sizes[1] - 10) <= 9 and abs(sizes[2] - 10) <= 9
    assert min(sizes) > 0
    a = read_jsonl(tmp_path / "data/prepared/test.jsonl")
    run(path)
    assert read_jsonl(tmp_path / "data/prepared/test.jsonl") == a
    run(path, "data.seed=7")
    assert read_jsonl(tmp_path / "data/prepared/test.jsonl") != a


def test_near_duplicate_groups_never_straddle_splits(tmp_path: Path, tiny_llama: Path):
    rows = []
    for i in range(30):
        base = f"My upload of the quarterly report number {i} keeps failing at ninety nine percent on the desktop app"
        rows += [qa(i, q=base), qa(i, q=base + " today"), qa(i, q=base + " again today")]
    path = make_project(tmp_path, tiny_llama, rows, {"dedup": {"near": "group", "threshold": 0.7}})
    report = run(path).report
    assert report["dedup"]["near_grouped"] >= 50
    where = {}
    for split in ("train", "val", "test"):
        for r in read_jsonl(tmp_path / f"data/prepared/{split}.jsonl"):
            where[r["id"]] = split
    for cluster in report["dedup"]["largest_clusters"]:
        assert {where[m["id"]] for m in cluster["members"]} == {where[cluster["kept"]]}


def test_near_duplicates_are_dropped_with_their_cluster(tmp_path: Path, tiny_llama: Path):
    text = "the desktop application crashes immediately after the latest update on windows eleven laptops"
    answer = "Reinstall the app from the downloads page; your files are safe in the cloud."
    rows = [
        qa(0, q=text, a=answer),
        qa(1, q=text + " please", a=answer),
        qa(2, q="a different question about invoices"),
    ]
    path = make_project(tmp_path, tiny_llama, rows, {"dedup": {"threshold": 0.8}})  # true Jaccard is 0.83
    report = run(path).report
    assert report["dedup"]["near_removed"] == 1
    assert report["dedup"]["largest_clusters"][0]["kept"] == "data/train.jsonl:1"


def test_leakage_into_user_test_split_is_found_and_fixed(tmp_path: Path, tiny_llama: Path):
    train = [qa(i) for i in range(20)]
    test = [qa(100 + i) for i in range(5)]
    train.append(qa(100))  # exact copy of test line 1
    leaked_q = test[1]["messages"][0]["content"] + " thanks"
    train.append(qa(101, q=leaked_q))  # near copy of test line 2
    path = make_project(tmp_path, tiny_llama, train, {"test": ["data/test.jsonl"], "dedup": {"threshold": 0.7}})
    with (tmp_path / "data/test.jsonl").open("w") as f:
        f.writelines(json.dumps(r) + "\n" for r in test)
    report = run(path).report
    assert (report["leakage"]["exact"], report["leakage"]["near"]) == (1, 1)
    assert any("--fix" in w for w in report["warnings"])
    assert report["splits"]["test"]["rows"] == 5
    fixed = run(path, fix_leakage=True).report
    assert fixed["splits"]["train"]["rows"] + fixed["splits"]["val"]["rows"] == 20
    rejects = read_jsonl(tmp_path / "data/prepared/rejects.jsonl")
    assert {r["stage"] for r in rejects} == {"leakage"} and len(rejects) == 2


def test_classification_is_stratified_and_labels_checked(tmp_path: Path, tiny_llama: Path):
    # 3:1 labels: each label is split in the configured shares (up to sampling noise), none ends up all in train.
    labels = ["billing"] * 3 + ["technical"]
    rows = [{"text": f"message {i}: {topic(i)}", "label": labels[i % 4]} for i in range(2000)]
    rows.append({"text": "something odd", "label": "sales"})
    path = make_project(tmp_path, tiny_llama, rows, {"labels": ["billing", "technical"], "dedup": {"near": "off"}})
    path.write_text(path.read_text().replace("type: chat", "type: classification"))
    run(path, tokenize=False)
    for label, n in (("billing", 1500), ("technical", 500)):
        for split, share in (("train", 0.8), ("val", 0.1), ("test", 0.1)):
            got = sum(r["label"] == label for r in read_jsonl(tmp_path / f"data/prepared/{split}.jsonl"))
            assert abs(got - share * n) <= 4 * (n * share * (1 - share)) ** 0.5, (label, split, got)
    rejects = read_jsonl(tmp_path / "data/prepared/rejects.jsonl")
    assert rejects[0]["line"] == 2001 and "unknown label 'sales'" in rejects[0]["reason"]


def test_length_policies(tmp_path: Path, tiny_llama: Path):
    rows = [qa(i) for i in range(10)] + [qa(99, a="long answer " * 200)]
    path = make_project(tmp_path, tiny_llama, rows, {"max_length": 200})
    with pytest.raises(UserError, match=r"data.max_length 200 truncates 1 of 11 examples \(9.1%\)"):
        run(path, "data.long=error")
    report = run(path, "data.long=truncate").report
    assert report["lengths"]["truncated"] == 1 and report["rows_out"] == 11
    assert any("will be truncated" in w for w in report["warnings"])


def test_strict_fails_on_any_reject_but_still_writes_the_report(tmp_path: Path, tiny_llama: Path):
    path = make_project(tmp_path, tiny_llama, [qa(1), "{bad", qa(2)])
    with pytest.raises(UserError, match="--strict: 1 records were rejected"):
        run(path, strict=True)
    assert (tmp_path / "data/prepared/report.md").is_file()


def test_cleaning_and_counts(tmp_path: Path, tiny_llama: Path):
    rows = [qa(1, q="<p>How do I <b>reset</b>   my password?</p>\u200b"), qa(2), qa(3, q="<div>  </div>")]
    path = make_project(tmp_path, tiny_llama, rows, {"dedup": {"near": "off"}})
    report = run(path).report
    kept = {r["id"]: r for s in ("train", "val", "test") for r in read_jsonl(tmp_path / f"data/prepared/{s}.jsonl")}
    assert kept["data/train.jsonl:1"]["messages"][0]["content"] == "How do I reset my password?"
    rejects = read_jsonl(tmp_path / "data/prepared/rejects.jsonl")
    assert rejects[0]["stage"] == "clean" and rejects[0]["line"] == 3
    assert report["cleaned_rows"] == 2


def test_pii_is_redacted_or_only_detected(tmp_path: Path, tiny_llama: Path):
    rows = [qa(1, q="Email me at jane.doe@example.com or call +1-202-555-0143"), qa(2)]
    path = make_project(tmp_path, tiny_llama, rows)
    report = run(path).report
    assert report["pii"]["by_type"] == {"EMAIL": 1, "PHONE": 1}
    text = (tmp_path / "data/prepared/train.jsonl").read_text() + (tmp_path / "data/prepared/val.jsonl").read_text()
    text += (tmp_path / "data/prepared/test.jsonl").read_text()
    assert "[EMAIL]" in text and "jane.doe" not in text
    detect = run(path, "data.pii.mode=detect").report
    assert detect["pii"]["by_type"] == {"EMAIL": 1, "PHONE": 1}
    assert any("NOT redacted" in w for w in detect["warnings"])


def test_replay_mix_joins_train_only(tmp_path: Path, tiny_llama: Path):
    path = make_project(
        tmp_path, tiny_llama, [qa(i) for i in range(50)], {"mix": [{"path": "data/general.jsonl", "fraction": 0.25}]}
    )
    general = [qa(1000 + i, q=f"General knowledge question {i} about the history of topic {i * 13}") for i in range(30)]
    with (tmp_path / "data/general.jsonl").open("w") as f:
        f.writelines(json.dumps(r) + "\n" for r in general)
    report = run(path).report
    train = report["splits"]["train"]
    assert train["mixed_in"] == round(0.25 * (train["rows"] - train["mixed_in"])) > 0
    for split in ("val", "test"):
        assert not any("general" in r["id"] for r in read_jsonl(tmp_path / f"data/prepared/{split}.jsonl"))


def test_worker_processes_give_identical_output(tmp_path: Path, tiny_llama: Path):
    rows = [qa(i) for i in range(2500)] + [qa(7)] * 3
    rows[100] = qa(100, q="reach me at jane@example.com")
    path = make_project(tmp_path, tiny_llama, rows)
    outputs = []
    for workers in (1, 2):
        report = run(path, workers=workers).report
        files = {
            n: (tmp_path / f"data/prepared/{n}").read_text() for n in ("train.jsonl", "test.jsonl", "rejects.jsonl")
        }
        outputs.append((report["rows_out"], report["pii"], report["dedup"]["exact_removed"], files))
    assert outputs[0] == outputs[1]
    assert outputs[0][2] == 3 and outputs[0][1]["by_type"] == {"EMAIL": 1}


def test_a_ten_percent_val_split_is_not_called_under_ten_percent(tmp_path: Path, tiny_llama: Path):
    path = make_project(tmp_path, tiny_llama, [qa(i) for i in range(1001)], {"dedup": {"near": "off"}})
    report = run(path, tokenize=False).report
    assert abs(report["splits"]["val"]["rows"] - 100) <= 40
    assert not any("validation split" in w for w in report["warnings"])
    report = run(path, "data.split.val=0.05", "data.split.train=0.85", tokenize=False).report
    assert any("validation split is 5.0% of the rows being split" in w for w in report["warnings"])


def test_a_test_file_is_not_counted_in_the_val_share(tmp_path: Path, tiny_llama: Path):
    rows = [qa(i, q=topic(i)) for i in range(200)]
    path = make_project(tmp_path, tiny_llama, rows, {"test": ["data/test.jsonl"], "dedup": {"near": "off"}})
    _write_rows(tmp_path / "data/test.jsonl", [qa(i, q=topic(i)) for i in range(1000, 1100)])
    report = run(path, tokenize=False).report
    assert report["splits"]["test"]["rows"] == 100
    assert report["splits"]["val"]["rows"] > 0
    assert not any("validation" in w for w in report["warnings"]), report["warnings"]


def _split_by_content(root: Path) -> dict[str, str]:
    """Each kept row's split, keyed by its first message (ids are `file:line` and shift when lines move)."""
    where = {}
    for split in ("train", "val", "test"):
        for r in read_jsonl(root / f"data/prepared/{split}.jsonl"):
            where[r["messages"][0]["content"] if "messages" in r else r["text"]] = split
    return where


def _write_rows(path: Path, rows: list) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


WORDS = "refund invoice storage plan folder share sync login password device backup export printer".split()


def topic(i: int) -> str:
    """A question no other topic(j) is a near duplicate of."""
    a, b, c = WORDS[i % 13], WORDS[(i // 13) % 13], WORDS[(i // 169) % 13]
    return f"Ticket {i}: my {a} and {b} stopped working after the {c} change, code {i * 7919 % 100003}"


def test_adding_and_inserting_rows_never_moves_an_existing_row_to_another_split(tmp_path: Path, tiny_llama: Path):
    rows = [qa(i, q=topic(i)) for i in range(300)]
    path = make_project(tmp_path, tiny_llama, rows, {"dedup": {"near": "off"}})
    run(path, tokenize=False)
    before = _split_by_content(tmp_path)
    assert len(before) == 300 and set(before.values()) == {"train", "val", "test"}
    # The Iterate step: new rows at the top (every later line renumbers), some at the end, some removed.
    top, end = [qa(i, q=topic(i)) for i in range(300, 340)], [qa(i, q=topic(i)) for i in range(340, 400)]
    grown = top + rows[:150] + rows[160:] + end
    _write_rows(tmp_path / "data/train.jsonl", grown)
    run(path, tokenize=False)
    after = _split_by_content(tmp_path)
    assert len(after) == 390
    moved = {q: (before[q], after[q]) for q in before.keys() & after.keys() if before[q] != after[q]}
    assert not moved, f"{len(moved)} rows changed split, e.g. {next(iter(moved.items()))}"
    # The same rows in another order land where they were too.
    _write_rows(tmp_path / "data/train.jsonl", list(reversed(grown)))
    run(path, tokenize=False)
    assert _split_by_content(tmp_path) == after
    # The seed is part of the hash: another seed is another split.
    run(path, "data.seed=7", tokenize=False)
    reseeded = _split_by_content(tmp_path)
    assert sum(reseeded[q] != after[q] for q in after) > 30


def test_near_duplicate_groups_keep_their_split_when_unrelated_rows_are_added(tmp_path: Path, tiny_llama: Path):
    rows = []
    for i in range(40):
        base = f"My upload of the quarterly report number {i} keeps failing at ninety nine percent on the desktop app"
        rows += [qa(i, q=base), qa(i, q=base + " today"), qa(i, q=base + " again today")]
    path = make_project(tmp_path, tiny_llama, rows, {"dedup": {"near": "group", "threshold": 0.7}})
    first = run(path, tokenize=False).report
    assert first["dedup"]["near_grouped"] >= 60
    before = _split_by_content(tmp_path)
    unrelated = [qa(i, q=topic(i)) for i in range(60)]
    _write_rows(tmp_path / "data/train.jsonl", unrelated + rows + [qa(1000, q=topic(1000))])
    report = run(path, tokenize=False).report
    after = _split_by_content(tmp_path)
    assert all(after[q] == split for q, split in before.items())
    where = {}
    for split in ("train", "val", "test"):
        for r in read_jsonl(tmp_path / f"data/prepared/{split}.jsonl"):
            where[r["id"]] = split
    for cluster in report["dedup"]["largest_clusters"]:
        assert {where[m["id"]] for m in cluster["members"]} == {where[cluster["kept"]]}


def test_identical_rows_share_a_split_when_exact_dedup_is_off(tmp_path: Path, tiny_llama: Path):
    rows = [qa(i, q=topic(i)) for i in range(100)]
    rows += [qa(i, q=topic(i)) for i in range(100)]  # every row twice
    path = make_project(tmp_path, tiny_llama, rows, {"dedup": {"exact": False, "near": "off"}})
    run(path, tokenize=False)
    seen: dict[str, set[str]] = {}
    for split in ("train", "val", "test"):
        for r in read_jsonl(tmp_path / f"data/prepared/{split}.jsonl"):
            seen.setdefault(r["messages"][0]["content"], set()).add(split)
    assert len(seen) == 100 and all(len(s) == 1 for s in seen.values())


def test_manifest_records_the_split_scheme_and_it_keys_the_prepare_cache(tmp_path: Path, tiny_llama: Path, monkeypatch):
    from tuneloop.data import split
    from tuneloop.data.prepare import settings_sha256

    path = make_project(tmp_path, tiny_llama, [qa(i, q=topic(i)) for i in range(20)])
    run(path, tokenize=False)
    manifest = json.loads((tmp_path / "data/prepared/manifest.json").read_text())
    assert manifest["split_scheme"] == {"name": "content-hash", "version": 1}
    cfg = config.load(path)
    assert manifest["settings_sha256"] == settings_sha256(cfg)
    monkeypatch.setattr(split, "SCHEME", {"name": "content-hash", "version": 2})
    assert settings_sha256(cfg) != manifest["settings_sha256"]  # a new scheme is never served from the cache


def _no_template(tiny_llama: Path):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_llama)
    tokenizer.chat_template = None
    return tokenizer


def test_a_systemic_reject_stops_once_after_the_first_records(tmp_path: Path, tiny_llama: Path):
    path = make_project(tmp_path, tiny_llama, [qa(i, q=topic(i)) for i in range(300)])
    with pytest.raises(UserError) as info:
        run(path, tokenizer=_no_template(tiny_llama))
    message = str(info.value)
    assert message.count("has no chat template") == 1 and "The first 50 records" in message
    out = tmp_path / "data/prepared"
    assert len(read_jsonl(out / "rejects.jsonl")) == 50  # it stopped there, and kept what it had read
    assert not (out / "manifest.json").exists() and not (out / ".work").exists()


def test_a_systemic_reject_on_every_record_of_a_small_file_stops_too(tmp_path: Path, tiny_llama: Path):
    path = make_project(tmp_path, tiny_llama, ["{bad", *[qa(i, q=topic(i)) for i in range(7)]])
    with pytest.raises(UserError, match=r"has no chat template.*The first 7 records"):
        run(path, tokenizer=_no_template(tiny_llama))


def test_a_tokenizer_without_eos_is_an_error_not_a_traceback(tmp_path: Path, tiny_llama: Path):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_llama)
    tokenizer.eos_token = None
    path = make_project(tmp_path, tiny_llama, [qa(1)])
    with pytest.raises(UserError, match="has no EOS token"):
        run(path, tokenizer=tokenizer)


def test_an_empty_train_split_is_an_error(tmp_path: Path, tiny_llama: Path):
    rows = [{"messages": [{"role": "user", "content": f"question {i}"}]} for i in range(20)]  # no answers
    path = make_project(tmp_path, tiny_llama, rows)
    with pytest.raises(UserError, match=r"the train split is empty: 20 records read.*20 × validate"):
        run(path)
    out = tmp_path / "data/prepared"
    assert len(read_jsonl(out / "rejects.jsonl")) == 20 and (out / "report.md").is_file()
    assert not (out / "manifest.json").exists()
