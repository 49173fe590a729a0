"""The run registry: indexing hand-made run folders, references, test-set usage, row-level data
diffs, config/metric comparisons with paired rescoring, the `tuneloop runs` CLI and the MLflow mirror."""

from __future__ import annotations

import gzip
import json
import math
import os
import re
import shutil
import sqlite3
import sys
import time
from pathlib import Path

import pytest
import sacrebleu

from tuneloop import config, registry
from tuneloop.errors import UserError
from tuneloop.evaluate import compare_runs, runner
from tuneloop.registry.rows import row_hash

TEST_SHA = "a" * 64


# --------------------------------------------------------------------------- building run folders by hand


@pytest.fixture
def proj(tmp_path: Path) -> Path:
    """A chat project scored by exact_match and BLEU; returns the config path."""
    path = tmp_path / "proj" / "tuneloop.yaml"
    path.parent.mkdir()
    path.write_text("task:\n  objective: answer tickets\n  type: chat\n  metrics: [exact_match, bleu]\n")
    return path


def load(proj: Path, *overrides: str) -> config.ProjectConfig:
    return config.load(proj, overrides=list(overrides))


def make_run(
    proj: Path,
    name: str,
    *overrides: str,
    steps: int = 10,
    status: str | None = "completed",
    started: str = "2025-01-01T10:00:00+00:00",
    splits: dict | None = None,
) -> Path:
    """A run folder as `tuneloop train` leaves it, minus the weights."""
    cfg = load(proj, *overrides)
    run_dir = cfg.path(cfg.output.dir) / name
    cfg.save_resolved(run_dir)
    splits = splits or {"train": {"rows": 80, "sha256": "1" * 64}, "test": {"rows": 20, "sha256": TEST_SHA}}
    (run_dir / "data-manifest.json").write_text(json.dumps({"splits": splits}))
    (run_dir / "environment.json").write_text(json.dumps({"python": "3.11.9", "torch": "2.10", "started": started}))
    rows = [{"step": s, "epoch": s / 10, "time": 1.7e9 + s, "loss": 2.0 - s / 10} for s in range(1, steps + 1)]
    rows += [{"step": 5, "time": 1.7e9 + 5.5, "eval_loss": 1.5}, {"step": 10, "time": 1.7e9 + 10.5, "eval_loss": 1.25}]
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    if status is not None:
        summary = {
            "status": status,
            "steps": steps,
            "max_steps": 10,
            "method": "lora",
            "best": {"metric": "eval_loss", "value": 1.25, "step": 10},
            "this_session": {"seconds": 4.0, "trained_tokens_per_second": 321.5},
        }
        (run_dir / "summary.json").write_text(json.dumps(summary))
    return run_dir


def write_eval(
    run_dir: Path,
    correct: set[int],
    *,
    n: int = 20,
    test_sha: str = TEST_SHA,
    stored: dict[str, list[float]] | None = None,
) -> None:
    """eval/metrics.json and eval/outputs.jsonl for one run: it answers example i right when i is in `correct`."""
    system = run_dir.name
    out = run_dir / "eval"
    out.mkdir(parents=True, exist_ok=True)
    references = [f"answer number {i} is here" for i in range(n)]
    with (out / "outputs.jsonl").open("w") as f:
        for i, ref in enumerate(references):
            answer = ref if i in correct else f"something else {i}"
            scores = {"exact_match": float(i in correct), **{m: v[i] for m, v in (stored or {}).items()}}
            row = {
                "id": f"t{i}",
                "prompt": f"question {i}",
                "reference": ref,
                "base": {"output": "no idea", "scores": {"exact_match": 0.0}},
                system: {"output": answer, "scores": scores},
            }
            f.write(json.dumps(row) + "\n")
    value = len(correct) / n
    comparison = {
        "exact_match": {
            "metric": "exact_match",
            "baseline": 0.0,
            "candidate": value,
            "delta": value,
            "relative": None,
            "ci_low": value / 2,
            "ci_high": value * 1.5,
            "significant": True,
            "verdict": "better",
            "higher_is_better": True,
        }
    }
    report = {
        "created": "2025-01-02T00:00:00+00:00",
        "test": {"sha256": test_sha, "examples": n},
        "systems": ["base", system],
        "comparisons": {system: comparison},
    }
    (out / "metrics.json").write_text(json.dumps(report))


def write_prepared(folder: Path, splits: dict[str, list[dict]]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, rows in splits.items():
        (folder / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return folder


def chat(i: int) -> dict:
    return {"kind": "chat", "messages": [{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": "a"}]}


# --------------------------------------------------------------------------- indexing


def test_sync_indexes_hand_made_folders_and_only_changed_ones(proj: Path) -> None:
    cfg = load(proj)
    make_run(proj, "chat-a")
    b = make_run(proj, "chat-b", "method.name=dora", status="early_stopped", steps=7)
    assert registry.sync(cfg) == 2
    assert registry.registry_path(cfg).is_file()
    runs = {r["id"]: r for r in registry.list_runs(cfg, refresh=False)}
    a = runs["chat-a"]
    assert (a["status"], a["kind"], a["group"], a["method"]) == ("completed", "train", None, "lora")
    assert a["training"]["steps"] == 10 and a["training"]["best"] == {"metric": "eval_loss", "value": 1.25, "step": 10}
    assert a["training"]["final_eval_loss"] == 1.25 and a["training"]["tokens_per_second"] == 321.5
    assert a["data"]["test"] == {"sha256": TEST_SHA, "rows": 20} and len(a["data_sha256"]) == 64
    assert a["environment"]["python"] == "3.11.9" and a["created"] == "2025-01-01T10:00:00+00:00"
    assert "config" not in a and runs["chat-b"]["status"] == "early_stopped" and runs["chat-b"]["method"] == "dora"

    assert registry.sync(cfg) == 0  # nothing changed
    summary = json.loads((b / "summary.json").read_text())
    (b / "summary.json").write_text(json.dumps({**summary, "status": "completed", "steps": 10}))
    assert registry.sync(cfg) == 1
    assert registry.get_run(cfg, "chat-b")["training"]["steps"] == 10
    # A run folder as the project names it (relative to the config's folder, wherever the command runs).
    in_project = b.relative_to(proj.parent)
    assert not in_project.is_dir() and registry.get_run(cfg, in_project)["id"] == "chat-b"


def test_folder_without_summary_is_running_then_incomplete(proj: Path) -> None:
    cfg = load(proj)
    run_dir = make_run(proj, "chat-live", status=None)
    assert registry.get_run(cfg, "chat-live")["status"] == "running"
    old = time.time() - 2 * registry.RUNNING_WINDOW_SECONDS
    for path in [*run_dir.iterdir(), run_dir]:
        os.utime(path, (old, old))
    assert registry.get_run(cfg, "chat-live")["status"] == "incomplete"


def test_deleted_folder_is_missing_and_found_again(proj: Path, tmp_path: Path) -> None:
    cfg = load(proj)
    run_dir = make_run(proj, "chat-gone")
    registry.sync(cfg)
    parked = tmp_path / "parked"
    shutil.move(run_dir, parked)
    registry.sync(cfg)
    run = registry.get_run(cfg, "chat-gone")
    assert run["missing"] and run["status"] == "completed"  # what it was is still known
    shutil.move(parked, run_dir)
    assert not registry.get_run(cfg, "chat-gone")["missing"]


def test_kind_and_group_from_loop_json_and_record(proj: Path) -> None:
    cfg = load(proj)
    trial = make_run(proj, "chat-trial")
    (trial / "loop.json").write_text(json.dumps({"kind": "sweep-trial", "group": "sweep-1", "history": []}))
    bare = make_run(proj, "chat-bare")
    (bare / "loop.json").write_text(json.dumps({"history": []}))  # another writer's keys, none of ours
    runs = {r["id"]: r for r in registry.list_runs(cfg)}
    assert (runs["chat-trial"]["kind"], runs["chat-trial"]["group"]) == ("sweep-trial", "sweep-1")
    assert (runs["chat-bare"]["kind"], runs["chat-bare"]["group"]) == ("train", None)

    entry = registry.record(cfg, bare, kind="curve-point", group="curve-7", fraction=0.5)
    assert (entry["kind"], entry["group"], entry["extra"]["fraction"]) == ("curve-point", "curve-7", 0.5)
    (bare / "metrics.jsonl").write_text((bare / "metrics.jsonl").read_text() + '{"step": 11, "eval_loss": 1.0}\n')
    again = registry.get_run(cfg, "chat-bare")  # re-indexed from the changed files, extra kept
    assert again["training"]["final_eval_loss"] == 1.0 and again["kind"] == "curve-point"


def test_record_refuses_a_folder_that_is_not_a_run(proj: Path, tmp_path: Path) -> None:
    with pytest.raises(UserError, match="is not a run folder"):
        registry.record(load(proj), tmp_path)


def test_run_references(proj: Path, tmp_path: Path) -> None:
    cfg = load(proj)
    make_run(proj, "chat-20250101-a", started="2025-01-01T10:00:00+00:00")
    make_run(proj, "chat-20250101-b", started="2025-01-01T11:00:00+00:00")
    make_run(proj, "chat-20250102-a", started="2025-01-02T09:00:00+00:00")
    assert registry.get_run(cfg, "chat-20250101-b")["id"] == "chat-20250101-b"
    assert registry.get_run(cfg, "chat-20250102")["id"] == "chat-20250102-a"  # unique prefix
    assert registry.get_run(cfg, "latest")["id"] == "chat-20250102-a"
    with pytest.raises(UserError, match=r"'chat-20250101' matches 2 runs \(chat-20250101-a, chat-20250101-b\)"):
        registry.get_run(cfg, "chat-20250101")
    with pytest.raises(UserError, match=r"no run 'nope'.*tuneloop runs list"):
        registry.get_run(cfg, "nope")

    elsewhere = tmp_path / "elsewhere" / "chat-moved"
    make_run(proj, "chat-moved")
    shutil.move(cfg.path(cfg.output.dir) / "chat-moved", elsewhere)
    assert registry.get_run(cfg, str(elsewhere))["path"] == str(elsewhere.resolve())
    # recorded from outside output.dir, it stays indexed (not missing) on the next sync
    assert not registry.get_run(cfg, "chat-moved")["missing"]


def test_latest_with_no_runs_says_what_to_do(proj: Path) -> None:
    with pytest.raises(UserError, match=r"no runs in .* start one with `tuneloop train`"):
        registry.get_run(load(proj), "latest")


def test_newer_schema_is_refused(proj: Path) -> None:
    cfg = load(proj)
    registry.sync(cfg)
    with sqlite3.connect(registry.registry_path(cfg)) as conn:
        conn.execute("UPDATE schema_version SET version = 99")
    with pytest.raises(UserError, match="newer tuneloop") as caught:
        registry.sync(cfg)
    assert "delete" not in str(caught.value)  # it holds the index of test-set use: never advise deleting it


# --------------------------------------------------------------------------- test-set usage


def test_test_usage_is_an_append_only_log_the_registry_indexes(proj: Path) -> None:
    cfg = load(proj)
    runs_dir = cfg.path(cfg.output.dir)
    runs_dir.mkdir()
    old = [
        {"time": "2024-01-01T00:00:00+00:00", "test_sha256": "t1", "runs": ["r1"], "private": False},
        {"time": "2024-01-02T00:00:00+00:00", "test_sha256": "p1", "runs": ["r1"], "private": True},
    ]
    log = runs_dir / registry.LEGACY_USAGE_LOG  # the log an older tuneloop wrote is the log
    log.write_text("".join(json.dumps(e) + "\n" for e in old))

    assert runner.test_uses(cfg, "t1") == [old[0]]
    assert runner.record_test_use(cfg, "t1", ["r2", "r3"], private=False) == 2
    uses = runner.test_uses(cfg, "t1")
    assert [u["runs"] for u in uses] == [["r1"], ["r2", "r3"]] and uses[1]["private"] is False
    assert runner.test_uses(cfg, "never") == []
    with pytest.raises(UserError, match=r"already evaluated on 2024-01-02.*evaluated once only"):
        runner.record_test_use(cfg, "p1", ["r2"], private=True)
    assert len(runner.test_uses(cfg, "p1")) == 1  # the refused look is not recorded
    assert runner.record_test_use(cfg, "p2", ["r2"], private=True) == 1
    lines = [json.loads(line) for line in log.read_text().splitlines()]
    assert lines[:2] == old and [(e["test_sha256"], e["runs"]) for e in lines[2:]] == [
        ("t1", ["r2", "r3"]),
        ("p2", ["r2"]),
    ]


def test_test_usage_and_the_private_guard_survive_a_deleted_registry(proj: Path) -> None:
    cfg = load(proj)
    assert runner.record_test_use(cfg, "t1", ["r1"], private=False) == 1
    assert runner.record_test_use(cfg, "p1", ["r1"], private=True) == 1
    for path in registry.registry_path(cfg).parent.glob(registry.REGISTRY_FILE + "*"):
        path.unlink()  # registry.sqlite and its -wal / -shm files
    assert runner.record_test_use(cfg, "t1", ["r2"], private=False) == 2
    with pytest.raises(UserError, match="evaluated once only"):
        runner.record_test_use(cfg, "p1", ["r2"], private=True)
    assert [u["runs"] for u in runner.test_uses(cfg, "t1")] == [["r1"], ["r2"]]


def test_uses_only_the_registry_knew_are_copied_into_the_log(proj: Path) -> None:
    """A project from the tuneloop that kept usage in registry.sqlite alone (and renamed the log to .imported)."""
    cfg = load(proj)
    runs_dir = cfg.path(cfg.output.dir)
    registry.test_uses(cfg, "x")  # creates the registry
    with sqlite3.connect(registry.registry_path(cfg)) as conn:
        conn.execute("INSERT INTO test_uses (time, sha256, runs, private) VALUES ('2024-03-01', 'p9', '[\"a\"]', 1)")
    imported = {"time": "2024-02-01", "test_sha256": "t9", "runs": ["b"], "private": False}
    (runs_dir / (registry.LEGACY_USAGE_LOG + ".imported")).write_text(json.dumps(imported) + "\n")
    assert [u["test_sha256"] for u in runner.test_uses(cfg, "p9")] == ["p9"]
    logged = [json.loads(line) for line in (runs_dir / registry.LEGACY_USAGE_LOG).read_text().splitlines()]
    assert logged == [{"time": "2024-03-01", "test_sha256": "p9", "runs": ["a"], "private": True}]
    assert runner.test_uses(cfg, "t9") == [imported]
    registry.registry_path(cfg).unlink()
    with pytest.raises(UserError, match="evaluated once only"):
        runner.record_test_use(cfg, "p9", ["c"], private=True)


def test_usage_entries_are_fsynced_and_a_torn_last_line_is_ignored(proj: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = load(proj)
    synced = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(fd), real_fsync(fd)))
    runner.record_test_use(cfg, "t1", ["r1"], private=False)
    assert synced  # the entry reached the disk before the evaluation it records
    log = registry.registry_path(cfg).parent / registry.LEGACY_USAGE_LOG
    log.write_text(log.read_text() + '{"time": "2024-01-0')  # a crash in the middle of a write
    assert runner.record_test_use(cfg, "t1", ["r2"], private=False) == 2
    assert [u["runs"] for u in runner.test_uses(cfg, "t1")] == [["r1"], ["r2"]]


# --------------------------------------------------------------------------- data: row hashes


def test_row_hashes_count_rows_added_removed_and_kept(proj: Path, tmp_path: Path) -> None:
    cfg = load(proj)
    a, b = make_run(proj, "chat-a"), make_run(proj, "chat-b")
    test_rows = [chat(100), chat(101)]
    prepared_a = write_prepared(
        tmp_path / "pa", {"train": [{"id": f"d.jsonl:{i}", **chat(i)} for i in range(5)], "test": test_rows}
    )
    # B: row 0 gone, rows 1-4 moved to other lines (their ids change), rows 5 and 6 new.
    b_train = [{"id": f"d.jsonl:{i + 10}", **chat(i)} for i in range(1, 7)]
    prepared_b = write_prepared(tmp_path / "pb", {"train": b_train, "test": test_rows})
    path = registry.write_row_hashes(a, prepared_a)
    registry.write_row_hashes(b, prepared_b)

    lines = gzip.decompress(path.read_bytes()).decode().splitlines()
    assert len(lines) == 7 and all(re.fullmatch(r"(train|test)\t[0-9a-f]{16}", line) for line in lines)
    assert lines[0].split("\t")[1] == row_hash(json.dumps(chat(0)))  # id-free content hash

    data = compare_runs.compare(cfg, "chat-a", "chat-b")["data"]
    assert data["by"] == "rows" and data["same"] is False
    assert data["splits"]["train"] == {"rows_a": 5, "rows_b": 6, "kept": 4, "added": 2, "removed": 1}
    assert data["splits"]["test"] == {"rows_a": 2, "rows_b": 2, "kept": 2, "added": 0, "removed": 0}


def test_row_hashes_of_a_subset_run_list_only_the_rows_it_trained_on(proj: Path, tmp_path: Path) -> None:
    cfg = load(proj)
    small, large = make_run(proj, "chat-a"), make_run(proj, "chat-b")
    train = [{"id": f"d.jsonl:{i}", **chat(i)} for i in range(6)]
    prepared = write_prepared(tmp_path / "p", {"train": train, "test": [chat(100)]})
    registry.write_row_hashes(small, prepared, {"d.jsonl:1", "d.jsonl:4"})  # train.examples=2
    registry.write_row_hashes(large, prepared, None)  # the whole split
    data = compare_runs.compare(cfg, "chat-a", "chat-b")["data"]
    assert data["same"] is False
    assert data["splits"]["train"] == {"rows_a": 2, "rows_b": 6, "kept": 2, "added": 4, "removed": 0}
    assert data["splits"]["test"]["kept"] == 1


def test_data_diff_falls_back_to_manifest_hashes(proj: Path) -> None:
    cfg = load(proj)
    make_run(proj, "chat-a")
    other = {"train": {"rows": 90, "sha256": "2" * 64}, "test": {"rows": 20, "sha256": TEST_SHA}}
    make_run(proj, "chat-b", splits=other)
    data = compare_runs.compare(cfg, "chat-a", "chat-b")["data"]
    assert data["by"] == "manifest" and data["same"] is False
    assert data["splits"]["train"]["same"] is False and (data["splits"]["train"]["rows_b"]) == 90
    assert data["splits"]["test"]["same"] is True


def test_write_row_hashes_needs_prepared_data(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="tuneloop data prepare"):
        registry.write_row_hashes(tmp_path, tmp_path / "nowhere")


# --------------------------------------------------------------------------- compare: config and metrics


def test_config_diff_lists_exactly_the_changed_keys(proj: Path) -> None:
    cfg = load(proj)
    make_run(proj, "chat-a", "train.learning_rate=0.0001")
    make_run(proj, "chat-b", "train.learning_rate=0.001", "method.lora.r=32")
    diff = {d["key"]: (d["a"], d["b"]) for d in compare_runs.compare(cfg, "chat-a", "chat-b")["config"]}
    assert diff == {"train.learning_rate": (0.0001, 0.001), "method.lora.r": (16, 32)}
    assert registry.config_diff("a: {b: 1}\n", "a: {b: 1, c: [1, 2]}\n") == [{"key": "a.c", "a": None, "b": [1, 2]}]


def test_paired_comparison_rescores_both_runs_from_their_outputs(proj: Path) -> None:
    cfg = load(proj)
    a, b = make_run(proj, "chat-a"), make_run(proj, "chat-b")
    write_eval(a, set(range(10)))
    write_eval(b, set(range(15)))  # B also gets examples 10-14 right: exact match 0.50 → 0.75
    result = compare_runs.compare(cfg, "chat-a", "chat-b")["metrics"]

    assert result["a"]["exact_match"]["value"] == 0.5 and result["b"]["exact_match"]["delta"] == 0.75
    paired = result["paired"]
    assert paired["examples"] == 20
    em = paired["metrics"]["exact_match"]
    assert (em["baseline"], em["candidate"]) == (0.5, 0.75) and em["delta"] == pytest.approx(0.25)
    assert 0 < em["ci_low"] <= 0.25 <= em["ci_high"] and em["verdict"] == "better"
    # BLEU is a corpus statistic: rescored from the text, it matches sacrebleu on the same answers.
    rows = [json.loads(line) for line in (a / "eval/outputs.jsonl").read_text().splitlines()]
    expected = sacrebleu.corpus_bleu([r["chat-a"]["output"] for r in rows], [[r["reference"] for r in rows]])
    assert paired["metrics"]["bleu"]["baseline"] == pytest.approx(expected.score)
    assert result["notes"] == []


def test_rescore_outputs_uses_stored_scores_for_model_based_metrics(proj: Path) -> None:
    cfg = load(proj, "task.metrics=[exact_match,perplexity]")
    a, b, c = make_run(proj, "chat-a"), make_run(proj, "chat-b"), make_run(proj, "chat-c")
    write_eval(a, set(range(10)), stored={"perplexity": [1.0] * 20})
    write_eval(b, set(range(10)), stored={"perplexity": [0.5] * 10 + [1.5] * 10})
    write_eval(c, set(range(10)))  # no per-example perplexity kept

    scored = compare_runs.rescore_outputs(cfg, b / "eval/outputs.jsonl", "chat-b", ids=["t0", "t19"])
    assert scored.ids == ["t0", "t19"] and scored.scores["perplexity"].value == pytest.approx(math.exp(1.0))
    assert scored.scores["exact_match"].value == 0.5

    paired = compare_runs.compare(cfg, "chat-a", "chat-b")["metrics"]
    ppl = paired["paired"]["metrics"]["perplexity"]
    assert ppl["baseline"] == pytest.approx(math.e) and ppl["candidate"] == pytest.approx(math.e)
    assert any(n.startswith("perplexity: compared as exp(mean per-example NLL)") for n in paired["notes"])
    skipped = compare_runs.compare(cfg, "chat-a", "chat-c")["metrics"]
    assert set(skipped["paired"]["metrics"]) == {"exact_match"}
    assert any("perplexity: not compared" in n for n in skipped["notes"])
    with pytest.raises(UserError, match="no answers from 'chat-z'; it has base, chat-b"):
        compare_runs.rescore_outputs(cfg, b / "eval/outputs.jsonl", "chat-z")


def test_no_paired_comparison_across_test_sets_or_without_eval(proj: Path) -> None:
    cfg = load(proj)
    a, b = make_run(proj, "chat-a"), make_run(proj, "chat-b")
    make_run(proj, "chat-c")
    write_eval(a, set(range(10)))
    write_eval(b, set(range(15)), test_sha="b" * 64)
    different = compare_runs.compare(cfg, "chat-a", "chat-b")["metrics"]
    assert different["paired"] is None and different["b"]["exact_match"]["value"] == 0.75
    assert "different test sets" in different["notes"][0]
    unevaluated = compare_runs.compare(cfg, "chat-a", "chat-c")["metrics"]
    assert unevaluated["b"] is None and "chat-c has not been evaluated" in unevaluated["notes"][0]


# --------------------------------------------------------------------------- the CLI


def test_cli_list_show_compare_sync(cli, proj: Path) -> None:
    a = make_run(proj, "chat-a", "train.learning_rate=0.0001")
    b = make_run(proj, "chat-b", "train.learning_rate=0.001")
    write_eval(a, set(range(10)))
    write_eval(b, set(range(15)))

    synced = cli("runs", "sync", "-c", proj)
    assert synced.code == 0, synced.err
    assert "2 runs (0 missing), 2 (re)indexed" in synced.out

    listed = cli("runs", "list", "-c", proj)
    assert listed.code == 0, listed.err
    line = next(x for x in listed.out.splitlines() if "chat-b" in x)
    for cell in ("train", "completed", "lora", "loss 1.25 @10", "exact_match +0.75 better"):
        assert cell in line
    rows = json.loads(cli("runs", "list", "-c", proj, "--json").out)
    assert [r["id"] for r in rows] == ["chat-a", "chat-b"]

    shown = cli("runs", "show", "chat-a", "-c", proj)
    assert shown.code == 0, shown.err
    assert "status       completed" in shown.out and "python 3.11.9" in shown.out
    assert re.search(r"exact_match\s+0 → 0.5\s+\+0.5", shown.out)
    assert json.loads(cli("runs", "show", "chat-a", "-c", proj, "--json").out)["config"].startswith("task:")

    compared = cli("runs", "compare", "chat-a", "chat-b", "-c", proj)
    assert compared.code == 0, compared.err
    assert "config: 1 key differs (A → B)" in compared.out
    assert re.search(r"train\.learning_rate\s+0.0001 → 0.001", compared.out)
    assert "data: same data (manifest hashes" in compared.out
    assert "metrics: B vs A directly (20 shared test examples, 95% paired-bootstrap intervals)" in compared.out
    assert re.search(r"exact_match\s+0.5 → 0.75\s+\+0.25 .* better", compared.out)
    as_json = json.loads(cli("runs", "compare", "chat-a", "chat-b", "-c", proj, "--json").out)
    assert as_json["metrics"]["paired"]["metrics"]["exact_match"]["delta"] == pytest.approx(0.25)


def test_cli_errors_are_one_clear_line(cli, proj: Path) -> None:
    make_run(proj, "chat-a")
    make_run(proj, "chat-b")
    result = cli("runs", "show", "chat", "-c", proj)
    assert result.code == 1 and "matches 2 runs" in result.err and "Traceback" not in result.err
    empty = proj.parent / "empty.yaml"
    empty.write_text(proj.read_text() + "output: {dir: nothing-here}\n")
    assert "no runs in" in cli("runs", "list", "-c", empty).out


# --------------------------------------------------------------------------- MLflow


def test_mlflow_missing_says_how_to_install(proj: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [m for m in sys.modules if m == "mlflow" or m.startswith("mlflow.")] + ["mlflow"]:
        monkeypatch.setitem(sys.modules, name, None)
    with pytest.raises(UserError, match="pip install mlflow-skinny"):
        registry.mirror_mlflow(load(proj), "file:///nowhere")


def test_mlflow_mirror_is_idempotent(cli, proj: Path, tmp_path: Path) -> None:
    pytest.importorskip("mlflow")
    pytest.importorskip("alembic")  # mlflow's SQLite store: a tracking database without a server
    from mlflow.tracking import MlflowClient

    cfg = load(proj)
    a = make_run(proj, "chat-a")
    make_run(proj, "chat-b", "train.learning_rate=0.001", status="stopped")
    write_eval(a, set(range(10)))
    (a / "loop.json").write_text(json.dumps({"kind": "sweep-trial", "group": "sweep-1"}))
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"

    first = registry.mirror_mlflow(cfg, uri)
    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name("proj")
    mirrored = {r.data.tags["tuneloop.run_id"]: r for r in client.search_runs([experiment.experiment_id])}
    assert set(mirrored) == {"chat-a", "chat-b"} and mirrored["chat-a"].info.run_id == first["chat-a"]
    run_a = mirrored["chat-a"]
    assert run_a.data.params["train.learning_rate"] == json.dumps(cfg.train.learning_rate)
    assert run_a.data.params["task.metrics"] == '["exact_match", "bleu"]'
    assert run_a.data.tags["tuneloop.kind"] == "sweep-trial" and run_a.data.tags["tuneloop.group"] == "sweep-1"
    assert run_a.info.status == "FINISHED" and mirrored["chat-b"].info.status == "KILLED"
    assert run_a.data.metrics["eval.exact_match.delta"] == 0.5
    assert [m.step for m in client.get_metric_history(first["chat-a"], "loss")] == list(range(1, 11))

    (a / "metrics.jsonl").write_text((a / "metrics.jsonl").read_text() + '{"step": 11, "time": 1.8e9, "loss": 0.5}\n')
    result = cli("runs", "sync", "-c", proj, "--mlflow", uri)
    assert result.code == 0, result.err
    assert "mirrored 2 runs" in result.out
    again = client.search_runs([experiment.experiment_id])
    assert len(again) == 2  # updated, not duplicated
    assert [m.step for m in client.get_metric_history(first["chat-a"], "loss")] == list(range(1, 12))
    assert len(client.get_metric_history(first["chat-a"], "eval.exact_match.delta")) == 1


# --------------------------------------------------------------------------- a real run folder


def test_sync_reads_a_real_training_run(tmp_path: Path, tiny_llama: Path) -> None:
    from tests.train_helpers import make_train_project
    from tuneloop.train.sft import train

    path = make_train_project(tmp_path / "real", tiny_llama, max_steps=4, eval_every=2, save_every=4)
    cfg = config.load(path)
    result = train(cfg)
    registry.write_row_hashes(result.run_dir, cfg.path(cfg.data.prepared_dir))
    assert registry.sync(cfg) == 1
    run = registry.get_run(cfg, "latest")
    manifest = json.loads((cfg.path(cfg.data.prepared_dir) / "manifest.json").read_text())
    assert run["id"] == result.run_dir.name and run["status"] == "completed" and run["training"]["steps"] == 4
    train_split = manifest["splits"]["train"]
    assert run["data"]["train"] == {"sha256": train_split["sha256"], "rows": train_split["rows"]}
    evals = [json.loads(x) for x in (result.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert run["training"]["final_eval_loss"] == [r["eval_loss"] for r in evals if "eval_loss" in r][-1]
    assert run["environment"]["python"] == sys.version.split()[0] and run["row_hashes"]
    hashes = registry.read_row_hashes(result.run_dir)
    counted = {split: sum(c.values()) for split, c in hashes.items()}
    assert counted == {split: v["rows"] for split, v in run["data"].items() if v["rows"]}
