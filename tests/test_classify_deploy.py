"""A classifier run exported for `transformers.pipeline("text-classification")`, and served on /v1/classify."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import numpy as np
import pytest

from tests.classify_helpers import ALL_WORDS, make_classify_project
from tests.serve_helpers import running
from tuneloop import config
from tuneloop.classifier import probabilities
from tuneloop.errors import UserError
from tuneloop.export import classify as export_classify
from tuneloop.models import load_sequence_classifier
from tuneloop.serve.classify import ClassifierServed, create_classifier_app
from tuneloop.serve.completions import Limits
from tuneloop.tiny import make_tiny_bert
from tuneloop.train import classify

LABELS = ["travel", "billing", "tech"]  # not sorted: data.labels fixes the map's order


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("cls-deploy")
    model = make_tiny_bert(root / "bert", ALL_WORDS)
    cfg_path = make_classify_project(root / "project", model, method="lora", max_steps=10, learning_rate=0.02)
    cfg = config.load(cfg_path, [f"data.labels={json.dumps(LABELS)}"])
    return cfg, classify.train(cfg)


def test_the_label_map_round_trips_through_export(trained, tmp_path):
    from transformers import pipeline

    cfg, run = trained
    result = export_classify.export_classifier(cfg, run.run_dir, tmp_path / "export")
    assert result.labels == LABELS and result.check.passed and result.check.labels_identical
    classify_texts = pipeline("text-classification", model=str(tmp_path / "export"), top_k=None)
    texts = ["invoice refund card", "flight hotel beach", "crash login error"]
    scores = classify_texts(texts)
    assert all({s["label"] for s in row} == set(LABELS) for row in scores)
    model, tokenizer = load_sequence_classifier(str(run.final_dir))
    reference = probabilities(model, tokenizer, texts)
    for row, expected in zip(scores, reference, strict=True):
        got = {s["label"]: s["score"] for s in row}
        assert [got[label] for label in LABELS] == pytest.approx(expected.tolist(), abs=1e-5)
    assert json.loads((tmp_path / "export" / "labels.json").read_text())["labels"] == LABELS
    card = (tmp_path / "export" / "README.md").read_text()
    assert "pipeline_tag: text-classification" in card and "travel, billing, tech" in card
    assert json.loads((tmp_path / "export" / "verification.json").read_text())["pipeline"]["passed"]


def test_a_failed_export_check_leaves_nothing_behind(trained, tmp_path, monkeypatch):
    cfg, run = trained
    real = export_classify.pipeline_probabilities
    monkeypatch.setattr(export_classify, "pipeline_probabilities", lambda *a: real(*a)[:, ::-1])
    with pytest.raises(UserError, match="does not match the run"):
        export_classify.export_classifier(cfg, run.run_dir, tmp_path / "export")
    assert list(tmp_path.iterdir()) == []


@pytest.fixture(scope="module")
def server(trained):
    _, run = trained
    model, tokenizer = load_sequence_classifier(str(run.final_dir))
    limits = Limits(api_key="secret", max_input_tokens=12, max_concurrent=4)
    served = ClassifierServed("topics", model, tokenizer, str(run.final_dir), limits)
    with running(create_classifier_app(served)) as url:
        yield url, model, tokenizer


def _post(url: str, body: dict, key: str = "secret") -> httpx.Response:
    return httpx.post(f"{url}/v1/classify", json=body, headers={"Authorization": f"Bearer {key}"}, timeout=60)


def test_v1_classify_returns_every_labels_probability(server):
    url, model, tokenizer = server
    texts = ["invoice refund card", "flight hotel beach"]
    reply = _post(url, {"input": texts, "model": "topics"})
    assert reply.status_code == 200, reply.text
    body = reply.json()
    expected = probabilities(model, tokenizer, texts)
    for row, want in zip(body["data"], expected, strict=True):
        assert set(row["probabilities"]) == set(LABELS)
        assert [row["probabilities"][label] for label in LABELS] == pytest.approx(want.tolist(), abs=1e-9)
        assert row["label"] == LABELS[int(np.argmax(want))]
    one = _post(url, {"input": "crash login error", "top_k": 1}).json()["data"][0]
    assert list(one["probabilities"]) == [one["label"]]
    listed = httpx.get(f"{url}/v1/models", headers={"Authorization": "Bearer secret"}).json()
    assert listed["data"][0]["labels"] == LABELS


@pytest.mark.parametrize(
    ("body", "status", "param"),
    [
        ({"input": []}, 400, "input"),
        ({"input": "a", "temperature": 1}, 400, "temperature"),
        ({"input": 3}, 400, "input"),
        ({"input": ["ok", "invoice " * 20]}, 400, "input[1]"),
        ({"input": "ok", "model": "other"}, 404, "model"),
        ({"input": "ok", "top_k": 0}, 400, "top_k"),
    ],
)
def test_a_bad_classify_request_gets_a_4xx_naming_the_field(server, body, status, param):
    url, _, _ = server
    reply = _post(url, body)
    assert reply.status_code == status, reply.text
    assert reply.json()["error"]["param"] == param
    assert _post(url, {"input": "ok"}).status_code == 200  # the server is still fine


def test_classify_needs_the_api_key_and_health_does_not(server):
    url, _, _ = server
    assert _post(url, {"input": "ok"}, key="wrong").status_code == 401
    assert httpx.get(f"{url}/health").json() == {"status": "ok", "models": ["topics"]}


def test_serve_recognises_a_classifier_run_and_an_exported_classifier(trained, tmp_path):
    from tuneloop.cli.serve import _classifier_folder

    cfg, run = trained
    assert _classifier_folder(str(run.run_dir), None, lambda ref: Path(ref)) == (run.final_dir, run.run_dir.name)
    export_classify.export_classifier(cfg, run.run_dir, tmp_path / "exported")
    assert _classifier_folder(None, str(tmp_path / "exported"), None) == ((tmp_path / "exported").resolve(), "exported")
    assert _classifier_folder(None, "smollm2-135m-instruct", None) is None


def test_tuneloop_run_prepares_trains_evaluates_and_exports_a_classifier_then_reuses_them(tmp_path, cli):
    model = make_tiny_bert(tmp_path / "bert", ALL_WORDS)
    cfg_path = make_classify_project(tmp_path / "p", model, method="features", max_steps=6)
    args = ("run", "--config", cfg_path, "--set", "export.enabled=true", "--set", "eval.bootstrap=100")
    first = cli(*args)
    assert first.code == 0, first.err
    assert "vs base" in first.out and "lowest F1" in first.out
    (run_dir,) = [p for p in (tmp_path / "p" / "runs").iterdir() if (p / "labels.json").is_file()]
    assert (run_dir / "eval" / "metrics.json").is_file() and (run_dir / "export" / "model.safetensors").is_file()
    second = cli(*args)
    assert second.code == 0, second.err
    rows = [line.replace("│", " ").split() for line in second.out.splitlines()]
    actions = {row[0]: row[1] for row in rows if len(row) > 1 and row[0] in ("prepare", "train", "eval", "export")}
    assert actions == {"prepare": "reused", "train": "reused", "eval": "reused", "export": "reused"}, second.out


def test_classified_texts_are_logged_redacted_and_monitor_reads_them(trained, tmp_path):
    """With a traffic log, each classified text is one row (text, label, every probability, latency), PII
    redacted as chat traffic is; feedback takes a label as the correction, and `monitor export` turns it into
    a {text, label} training record; `monitor` reads the rows' texts as the prompts it tests for drift."""
    from tuneloop import traffic
    from tuneloop.monitor import analyze
    from tuneloop.monitor.export import export as export_traffic
    from tuneloop.serve.reqlog import RequestLog

    cfg, run = trained
    model, tokenizer = load_sequence_classifier(str(run.final_dir))
    path = tmp_path / "monitor" / "traffic.sqlite"
    log = RequestLog(path, traffic.redactor_for(config.PiiConfig()))
    served = ClassifierServed("topics", model, tokenizer, str(run.final_dir), Limits(api_key="secret"), log)
    texts = ["refund jane.doe@example.com card", "flight hotel beach"]
    with running(create_classifier_app(served)) as url:
        reply = _post(url, {"input": texts, "top_k": 1})
        assert reply.status_code == 200, reply.text
        data = reply.json()["data"]
        wrong = next(label for label in LABELS if label != data[1]["label"])

        def feedback(body: dict) -> httpx.Response:
            return httpx.post(f"{url}/v1/feedback", json=body, headers={"Authorization": "Bearer secret"})

        assert feedback({"id": data[1]["id"], "rating": "down", "correction": wrong}).status_code == 200
        refused = feedback({"id": data[0]["id"], "correction": "weather"})
        assert refused.status_code == 400 and refused.json()["error"]["param"] == "correction"
        assert feedback({"id": "clf-unknown-0", "rating": "up"}).status_code == 404
    assert b"jane.doe" not in b"".join(p.read_bytes() for p in path.parent.iterdir())
    rows = {row["id"]: row for row in traffic.read_requests(path)}
    assert list(rows) == [item["id"] for item in data]
    expected = probabilities(model, tokenizer, texts)
    for item, text, want in zip(data, ["refund [EMAIL] card", "flight hotel beach"], expected, strict=True):
        row = rows[item["id"]]
        assert (row["route"], row["prompt"], row["output"], row["redacted"]) == (
            "/v1/classify",
            text,
            item["label"],
            True,
        )
        got = row["params"]["probabilities"]
        assert [got[label] for label in LABELS] == pytest.approx(want.tolist(), abs=1e-9)  # all, not the top 1
        assert row["latency_s"] > 0 and row["finish_reason"] == "stop"
    assert [analyze.user_text(r["messages"], r["prompt"]) for r in rows.values()] == ["refund [EMAIL] card", texts[1]]
    exported = export_traffic(cfg, log_path=path, out=tmp_path / "export.jsonl")
    assert exported.corrected == 1 and not exported.skipped
    (record,) = [json.loads(line) for line in (tmp_path / "export.jsonl").read_text().splitlines()]
    assert (record["text"], record["label"]) == (texts[1], wrong)
