"""`tuneloop monitor export`: corrected traffic becomes training records, thumbs-down without a correction
goes to review, and the whole Iterate loop on the tiny model: serve → feedback → export → prepare → train →
`runs compare` shows the rows as added."""

from __future__ import annotations

import json
import re
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
import yaml

from tests.serve_helpers import running
from tests.train_helpers import chat_rows, make_train_project
from tuneloop import config, registry, traffic
from tuneloop.errors import UserError
from tuneloop.monitor import export as monitor_export
from tuneloop.traffic import TrafficLog, TrafficRow

NOW = datetime.now(timezone.utc)


def logged(i: int, messages=None, prompt: str | None = None, output: str = "wrong answer", **params) -> TrafficRow:
    chat = prompt is None
    return TrafficRow(
        id=f"{'chatcmpl' if chat else 'cmpl'}-{i}",
        time=traffic.now(),
        route="/v1/chat/completions" if chat else "/v1/completions",
        model="m",
        adapter=None,
        messages=(messages or [{"role": "user", "content": f"question {i}"}]) if chat else None,
        prompt=prompt,
        output=output,
        outputs=[output],
        finish_reason="stop",
        prompt_tokens=5,
        completion_tokens=2,
        latency_s=0.1,
        params=params,
    )


@pytest.fixture
def chat_project(project: Path) -> config.ProjectConfig:
    (project / "tuneloop.yaml").write_text("task: {objective: answer tickets, type: chat}\n")
    return config.load(project / "tuneloop.yaml")


def _read(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_corrections_become_training_records_and_uncorrected_thumbs_down_goes_to_review(chat_project) -> None:
    cfg = chat_project
    log = TrafficLog.open(traffic.default_path(cfg))
    history = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "an earlier answer"},
        {"role": "user", "content": "how do I reset my password?"},
    ]
    log.write(logged(1, history))
    log.write(logged(2))
    log.write(logged(3))
    log.write(logged(4))
    log.write(logged(5))
    log.add_feedback("chatcmpl-1", "down", correction="  Use the reset link on the login page.  ")
    log.add_feedback("chatcmpl-2", "down", comment="made up a policy")  # no correction: review
    log.add_feedback("chatcmpl-3", "up")  # praise: nothing to learn here
    log.add_feedback("chatcmpl-4", "down", correction="first try")
    log.add_feedback("chatcmpl-4", "up")  # the latest feedback counts: no longer corrected
    log.add_feedback("chatcmpl-5", "up", correction="A better answer.")  # corrected though rated up
    log.add_feedback("chatcmpl-gone", "down", correction="x")  # its request is not in this log
    log.close()

    result = monitor_export.export(cfg)
    (path,) = result.written
    records = _read(Path(path))
    assert Path(path).parent == cfg.root / "data" / "traffic"
    assert records[0] == {
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "hi"},
            {"role": "assistant", "content": "an earlier answer", "weight": 0},  # not endorsed: not trained
            {"role": "user", "content": "how do I reset my password?"},
            {"role": "assistant", "content": "Use the reset link on the login page."},
        ],
        "traffic_id": "chatcmpl-1",
    }
    assert [r["traffic_id"] for r in records] == ["chatcmpl-1", "chatcmpl-5"]
    assert all("wrong answer" not in json.dumps(r) for r in records)  # the model's answer is never trained
    (review,) = _read(result.review_path)
    assert review["traffic_id"] == "chatcmpl-2" and review["answer"] == "wrong answer"
    assert review["comment"] == "made up a policy" and "write the right one" in review["todo"]
    assert result.review_path.parent == cfg.root / "monitor"
    assert (result.with_feedback, result.corrected, result.down_uncorrected, result.not_logged) == (6, 2, 1, 1)

    only_down = monitor_export.export(cfg, only="down", out=cfg.root / "down.jsonl")
    assert [r["traffic_id"] for r in _read(cfg.root / "down.jsonl")] == ["chatcmpl-1"]  # 5 was not a thumbs down
    assert only_down.review_rows == 1
    only_corrected = monitor_export.export(cfg, only="corrected", out=cfg.root / "c.jsonl")
    assert len(_read(cfg.root / "c.jsonl")) == 2 and only_corrected.review_path is None


def test_flagged_answers_go_to_review_unless_a_person_vouched_for_them(chat_project) -> None:
    from tuneloop.monitor.signals import OutputChecks

    cfg = chat_project
    checks = OutputChecks(refusal=lambda t: t.startswith("I cannot"), repetition=lambda t: "again again" in t)
    log = TrafficLog.open(traffic.default_path(cfg))
    log.write(logged(1, output="I cannot help with that."))  # refusal, no feedback: review
    log.write(logged(2, output="I cannot do it."))  # refusal, but rated up: a person vouched
    log.write(logged(3, output="I cannot say."))  # refusal, corrected: training
    log.write(logged(4, output="fine answer"))  # nothing to flag
    log.write(dict(logged(5, output="cut"), finish_reason="length"))  # type: ignore[arg-type]
    log.write(dict(logged(6, output=""), finish_reason="error"))  # type: ignore[arg-type]  # a failure, not an answer
    log.write(logged(7, output="again again again"))  # repetition, thumbs down: review with its flag
    log.add_feedback("chatcmpl-2", "up")
    log.add_feedback("chatcmpl-3", "down", correction="Here is how.")
    log.add_feedback("chatcmpl-7", "down")
    log.close()

    result = monitor_export.export(cfg, only="flagged", out=cfg.root / "f.jsonl", checks=checks)
    review = {r["traffic_id"]: r for r in _read(result.review_path)}
    assert {k: v["flags"] for k, v in review.items()} == {
        "chatcmpl-1": ["refusal"],
        "chatcmpl-5": ["truncated"],
        "chatcmpl-7": ["repetition"],  # a thumbs down too, but what --only flagged asks for is the flag
    }
    assert "flagged (refusal)" in review["chatcmpl-1"]["todo"] and review["chatcmpl-1"]["rating"] is None
    assert result.written == {} and (result.flagged, result.down_uncorrected) == (2, 1)

    everything = monitor_export.export(cfg, out=cfg.root / "all.jsonl", checks=checks)
    assert [r["traffic_id"] for r in _read(cfg.root / "all.jsonl")] == ["chatcmpl-3"]
    review = {r["traffic_id"]: r for r in _read(everything.review_path)}
    assert set(review) == {"chatcmpl-7", "chatcmpl-1", "chatcmpl-5"}
    assert review["chatcmpl-7"]["flags"] == ["repetition"] and review["chatcmpl-7"]["rating"] == "down"
    assert (everything.corrected, everything.down_uncorrected, everything.flagged) == (1, 1, 2)
    with pytest.raises(UserError, match="output checks"):
        monitor_export.export(cfg, only="flagged")


def test_cli_flags_with_the_evaluations_own_checks(chat_project, cli) -> None:
    cfg = chat_project
    log = TrafficLog.open(traffic.default_path(cfg))
    log.write(logged(1, output="I'm sorry, but I can't help with that request."))
    log.write(logged(2, output="Your refund was sent on Monday."))
    log.close()
    result = cli("monitor", "export", "--only", "flagged", "-c", cfg.root / "tuneloop.yaml")
    assert result.code == 0, result.err
    assert "1 more answers flagged by the output signals" in result.err + result.out
    (review_file,) = (cfg.root / "monitor").glob("review-*.jsonl")
    assert [(r["traffic_id"], r["flags"]) for r in _read(review_file)] == [("chatcmpl-1", ["refusal"])]


def test_since_counts_from_when_the_feedback_was_given(chat_project) -> None:
    cfg = chat_project
    log = TrafficLog.open(traffic.default_path(cfg))
    log.write(logged(1))
    log.write(logged(2))
    old = (NOW - timedelta(days=10)).isoformat(timespec="milliseconds")
    log.add_feedback("chatcmpl-1", "down", correction="old fix", at=old)
    log.add_feedback("chatcmpl-2", "down", correction="new fix")
    log.close()
    result = monitor_export.export(cfg, since=traffic.parse_since("7d"), out=cfg.root / "x.jsonl")
    assert [r["messages"][-1]["content"] for r in _read(cfg.root / "x.jsonl")] == ["new fix"]
    assert result.with_feedback == 1


def test_nothing_to_export_writes_no_file(chat_project) -> None:
    """An empty JSONL in data/traffic would stop the next `data prepare`, so none is written."""
    cfg = chat_project
    log = TrafficLog.open(traffic.default_path(cfg))
    log.write(logged(1))
    log.add_feedback("chatcmpl-1", "up")
    log.close()
    result = monitor_export.export(cfg)
    assert result.written == {} and result.review_path is None
    assert not (cfg.root / "data" / "traffic").exists()


def test_record_formats_follow_the_task_type(project: Path) -> None:
    def cfg_for(kind: str) -> config.ProjectConfig:
        extra = "\ndata: {labels: [billing, login]}" if kind == "classification" else ""
        (project / "tuneloop.yaml").write_text(f"task: {{objective: x, type: {kind}}}{extra}\n")
        return config.load(project / "tuneloop.yaml")

    log = TrafficLog.open(project / "monitor" / "traffic.sqlite")
    log.write(logged(1, [{"role": "user", "content": "I was charged twice"}], output="login"))
    log.write(logged(2, prompt="Once upon a time", output="the end"))
    log.write(logged(3, prompt="a", output="b", prompts=["a", "c"]))
    for rid, fix in (("chatcmpl-1", "billing"), ("cmpl-2", "there was a fox"), ("cmpl-3", "z")):
        log.add_feedback(rid, "down", correction=fix)
    log.close()

    out = project / "out.jsonl"
    result = monitor_export.export(cfg_for("chat"), out=out)
    assert _read(out)[0]["messages"][-1] == {"role": "assistant", "content": "billing"}
    completions = project / "out-completions.jsonl"
    assert _read(completions) == [
        {"prompt": "Once upon a time", "completion": "there was a fox", "traffic_id": "cmpl-2"}
    ]
    assert result.skipped == [
        {"id": "cmpl-3", "reason": "a request with several prompts has one correction for several answers"}
    ]

    monitor_export.export(cfg_for("preference"), out=out)
    chosen = _read(out)[0]
    assert (chosen["chosen"], chosen["rejected"]) == ("billing", "login")
    assert chosen["prompt"] == [{"role": "user", "content": "I was charged twice"}]

    monitor_export.export(cfg_for("classification"), out=out)
    assert _read(out)[0] == {"text": "I was charged twice", "label": "billing", "traffic_id": "chatcmpl-1"}


def test_a_review_file_fed_to_prepare_by_mistake_trains_nothing(tmp_path: Path, tiny_llama: Path) -> None:
    from tuneloop.data.prepare import prepare

    root = tmp_path / "p"
    cfg_path = make_train_project(root, tiny_llama, chat_rows(20))
    cfg = config.load(cfg_path)
    log = TrafficLog.open(traffic.default_path(cfg))
    log.write(logged(1, output="a wrong answer"))
    log.write(logged(2, prompt="continue this", output="a wrong completion"))
    log.add_feedback("chatcmpl-1", "down")
    log.add_feedback("cmpl-2", "down")
    log.close()
    review = monitor_export.export(cfg, review_out=root / "data" / "review.jsonl").review_path
    doc = yaml.safe_load(cfg_path.read_text())
    doc["data"]["train"] = ["data/train.jsonl", "data/review.jsonl"]
    cfg_path.write_text(yaml.safe_dump(doc))
    prepare(config.load(cfg_path), workers=0)
    prepared = "".join((root / "data" / "prepared" / f"{s}.jsonl").read_text() for s in ("train", "val", "test"))
    assert "wrong" not in prepared
    rejects = (root / "data" / "prepared" / "rejects.jsonl").read_text()
    assert rejects.count("review.jsonl") == 2 and review is not None


def test_without_a_traffic_log_the_error_says_how_to_get_one(chat_project, cli) -> None:
    with pytest.raises(UserError, match="serve --log"):
        monitor_export.export(chat_project)
    result = cli("monitor", "export", "-c", chat_project.root / "tuneloop.yaml")
    assert result.code == 1 and "serve --log" in result.err and "Traceback" not in result.err
    bad = cli("monitor", "export", "--since", "yesterday", "-c", chat_project.root / "tuneloop.yaml")
    assert bad.code == 1 and "7d" in bad.err


def test_the_iterate_loop_end_to_end(cli, tmp_path: Path, tiny_llama: Path) -> None:
    """Traffic with corrections → `monitor export` → data.train → `data prepare` → the next run's train split
    gains those rows, and `runs compare` shows them as added."""
    import httpx

    from tuneloop.serve import adapters
    from tuneloop.serve.app import Limits, create_app
    from tuneloop.serve.reqlog import RequestLog

    root = tmp_path / "project"
    cfg_path = make_train_project(root, tiny_llama, chat_rows(40), max_steps=2, eval_every=2, save_every=2)
    (root / "data" / "val.jsonl").write_text("".join(json.dumps(r) + "\n" for r in chat_rows(6, seed=7)))
    (root / "data" / "test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in chat_rows(6, seed=8)))
    doc = yaml.safe_load(cfg_path.read_text())
    doc["data"].update(val=["data/val.jsonl"], test=["data/test.jsonl"])  # so all of data.train is train
    cfg_path.write_text(yaml.safe_dump(doc, sort_keys=False))
    assert cli("data", "prepare", "-c", cfg_path).code == 0
    first = cli("train", "-c", cfg_path)
    assert first.code == 0, first.err
    cfg = config.load(cfg_path)
    run_a = registry.get_run(cfg, "latest")["id"]

    # production: the project's traffic log, PII redacted as the project's data.pii says
    models = adapters.load(adapters.plan(str(tiny_llama), name="m"))
    log = RequestLog(traffic.default_path(cfg), traffic.redactor_for(cfg.data.pii, cfg.root))
    with running(create_app(models, Limits(), log)) as url:

        def ask(text: str) -> str:
            body = {"model": "m", "messages": [{"role": "user", "content": text}], "max_tokens": 4}
            return httpx.post(url + "/v1/chat/completions", json=body, timeout=60).json()["id"]

        def feedback(**body) -> None:
            assert httpx.post(url + "/v1/feedback", json=body, timeout=60).status_code == 200

        ids = [ask(q) for q in ("refund for order 7", "reset my password, mail me at a@b.example", "cancel plan")]
        feedback(id=ids[0], rating="down", correction="Refunds take 5 days; I have started yours.")
        feedback(id=ids[1], rating="down", correction="I sent a reset link to a@b.example.")
        feedback(id=ids[2], rating="down", comment="rude")

    exported = cli("monitor", "export", "-c", cfg_path)
    assert exported.code == 0, exported.err
    assert "2 corrected, 1 thumbs-down without a correction" in exported.err + exported.out
    (export_file,) = (root / "data" / "traffic").iterdir()
    (review_file,) = (root / "monitor").glob("review-*.jsonl")
    assert [r["comment"] for r in _read(review_file)] == ["rude"]
    assert "a@b.example" not in export_file.read_text() and "[EMAIL]" in export_file.read_text()

    doc["data"]["train"] = ["data/train.jsonl", "data/traffic"]
    cfg_path.write_text(yaml.safe_dump(doc, sort_keys=False))
    prepared = cli("data", "prepare", "-c", cfg_path)
    assert prepared.code == 0, prepared.err
    train_rows = (root / "data" / "prepared" / "train.jsonl").read_text()
    assert "Refunds take 5 days" in train_rows and "rude" not in train_rows
    second = cli("train", "-c", cfg_path)
    assert second.code == 0, second.err
    run_b = registry.get_run(config.load(cfg_path), "latest")["id"]
    assert run_b != run_a

    compared = cli("runs", "compare", run_a, run_b, "-c", cfg_path)
    assert compared.code == 0, compared.err
    assert re.search(r"train\s+(\d+) → (\d+) rows: \1 kept, 2 added, 0 removed", compared.out), compared.out
    assert re.search(r"test\s+6 → 6 rows: 6 kept, 0 added", compared.out), compared.out
