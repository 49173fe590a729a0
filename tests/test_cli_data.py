"""`tuneloop data prepare` and `tuneloop data inspect` through the real CLI entry point."""

import json
from pathlib import Path


def new_project(cli, tmp_path: Path, tiny_llama: Path) -> Path:
    target = tmp_path / "proj"
    assert cli("init", target, "--task", "chat", "--model", tiny_llama).code == 0
    return target / "tuneloop.yaml"


def test_prepare_then_inspect(cli, tmp_path: Path, tiny_llama: Path):
    cfg = new_project(cli, tmp_path, tiny_llama)
    result = cli("data", "prepare", "-c", cfg)
    assert result.code == 0, result.err
    assert "train split" in result.out and "training tokens per epoch" in result.out
    assert "only 10 training examples" in result.err  # the small-data warning, with the fix
    shown = cli("data", "inspect", "-c", cfg, "-n", "2")
    assert shown.code == 0, shown.err
    assert shown.out.count("── data/sample.jsonl:") == 2
    assert "<|im_start|>assistant\n[[" in shown.out and "<|im_end|>]]" in shown.out
    one = json.loads((cfg.parent / "data/prepared/val.jsonl").read_text().splitlines()[0])["id"]
    by_id = cli("data", "inspect", "-c", cfg, "--split", "val", "--id", one)
    assert by_id.out.count("── ") == 1 and one in by_id.out


def test_inspect_before_prepare_says_what_to_do(cli, tmp_path: Path, tiny_llama: Path):
    cfg = new_project(cli, tmp_path, tiny_llama)
    result = cli("data", "inspect", "-c", cfg)
    assert result.code == 1 and "run `tuneloop data prepare` first, or pass --raw" in result.err
    raw = cli("data", "inspect", "-c", cfg, "--raw", "-n", "1")
    assert raw.code == 0 and "[[" in raw.out


def test_prepare_strict_and_bad_options(cli, tmp_path: Path, tiny_llama: Path):
    cfg = new_project(cli, tmp_path, tiny_llama)
    with (cfg.parent / "data/sample.jsonl").open("a") as f:
        f.write('{"messages": [{"role": "user", "content": "hi"}]}\n')
    strict = cli("data", "prepare", "-c", cfg, "--strict")
    assert strict.code == 1 and "--strict: 1 records were rejected" in strict.err
    reject = json.loads((cfg.parent / "data/prepared/rejects.jsonl").read_text())
    assert reject["line"] == 13 and reject["reason"] == "no assistant turn: nothing to train on"
    bad = cli("data", "prepare", "-c", cfg, "--pii", "hide")
    assert bad.code == 1 and "data.pii.mode" in bad.err


def test_no_tokenize_says_tokens_were_not_measured(cli, tmp_path: Path, tiny_llama: Path):
    cfg = new_project(cli, tmp_path, tiny_llama)
    result = cli("data", "prepare", "-c", cfg, "--no-tokenize")
    assert result.code == 0, result.err
    assert "training tokens per epoch: not measured (--no-tokenize)" in result.out
    report = json.loads((cfg.parent / "data/prepared/report.json").read_text())
    assert report["tokens_per_epoch"] is None and report["splits"]["train"]["tokens"] is None
    assert "Not tokenized" in (cfg.parent / "data/prepared/report.md").read_text()


def test_workers_option_reaches_the_stage(cli, tmp_path: Path, tiny_llama: Path, monkeypatch):
    from tuneloop.data import prepare as prepare_module

    seen = []
    real = prepare_module.prepare

    def spy(*args, **kwargs):
        seen.append(kwargs["workers"])
        return real(*args, **kwargs)

    monkeypatch.setattr(prepare_module, "prepare", spy)
    cfg = new_project(cli, tmp_path, tiny_llama)
    assert cli("data", "prepare", "-c", cfg, "--workers", "1").code == 0
    assert cli("data", "prepare", "-c", cfg).code == 0
    assert seen == [1, None]
    assert cli("data", "prepare", "-c", cfg, "--workers", "0").code == 2  # not a process count
