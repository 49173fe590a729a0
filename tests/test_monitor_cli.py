"""`tuneloop monitor` end to end on a prepared tiny project: exit codes, the report, bad logs.

The embedding test runs on a tiny random BERT (monitor.encoder accepts any encoder folder), so these
tests load no real model; tests/test_monitor_drift.py measures the drift alarm with MiniLM itself.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tests.train_helpers import chat_rows, make_train_project
from tuneloop import traffic
from tuneloop.traffic import TrafficLog, TrafficRow


def make_tiny_encoder(folder: Path) -> Path:
    """A random one-layer BERT with the tiny byte-level tokenizer, saved as safetensors."""
    import torch
    from transformers import BertConfig, BertModel

    from tuneloop.tiny import make_tokenizer

    tokenizer = make_tokenizer()
    config = BertConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=512,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(0)
    BertModel(config).save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory, tiny_llama: Path) -> Path:
    root = tmp_path_factory.mktemp("monitored")
    make_train_project(root / "project", tiny_llama, rows=chat_rows(120, seed=0))
    make_tiny_encoder(root / "encoder")
    return root


@pytest.fixture
def project(prepared: Path, tmp_path: Path) -> Path:
    """A copy of the prepared project, so that each test has its own traffic store."""
    shutil.copytree(prepared / "project", tmp_path / "project")
    return tmp_path / "project"


@pytest.fixture
def run(cli, prepared: Path, project: Path):
    """`tuneloop monitor` on `project` with the tiny encoder and min_requests 20 (plus `extra` arguments)."""

    def monitor(*extra: str):
        settings = [f"monitor.encoder={prepared / 'encoder'}", "monitor.min_requests=20", "monitor.permutations=200"]
        return cli(
            "monitor", "--config", project / "tuneloop.yaml", *(x for s in settings for x in ("--set", s)), *extra
        )

    return monitor


def request(i: int, text: str, output: str = '{"ok": true}', finish: str = "stop") -> TrafficRow:
    return TrafficRow(
        id=f"chatcmpl-{i}",
        time=traffic.now(),
        route="/v1/chat/completions",
        model="tiny",
        adapter=None,
        messages=[{"role": "user", "content": text}],
        prompt=None,
        output=output,
        outputs=[output],
        finish_reason=finish,
        prompt_tokens=7,
        completion_tokens=3,
        latency_s=0.2,
        params={},
    )


def log_traffic(project: Path, rows: list[TrafficRow], feedback: dict[str, str] | None = None) -> Path:
    path = project / traffic.FILENAME
    log = TrafficLog.open(path)
    assert all(log.write(r) for r in rows)
    for response_id, rating in (feedback or {}).items():
        assert log.add_feedback(response_id, rating)
    log.close()
    return path


def in_distribution(n: int, **kw) -> list[TrafficRow]:
    """Prompts from the same generator as the training rows (another seed, so none is a training row)."""
    return [request(i, row["messages"][0]["content"], **kw) for i, row in enumerate(chat_rows(n, seed=99))]


def reports(project: Path) -> tuple[dict, str]:
    [json_path] = (project / "monitor").glob("report-*.json")
    [html_path] = (project / "monitor").glob("report-*.html")
    return json.loads(json_path.read_text()), html_path.read_text()


def test_clean_traffic_exits_0_and_writes_the_html_and_json_report(run, project):
    log_traffic(project, in_distribution(60))
    result = run()
    assert result.code == 0, result.out + result.err
    assert "alerts    none" in result.out and "no drift" in result.out
    report, html = reports(project)
    assert report["requests"] == 60 and report["alerts"] == []
    assert report["drift"]["status"] == "tested" and report["drift"]["length"]["unit"] == "tokens"
    assert report["drift"]["new_terms"]["rate"] == 0  # the same vocabulary as training
    assert "data:image/png;base64," in html and "Embedding drift" in html


def test_an_alert_exits_3_and_names_the_threshold(run, project):
    rows = in_distribution(60)
    for r in rows[:10]:
        r["output"], r["outputs"] = "", [""]
    log_traffic(project, rows, feedback={r["id"]: "down" for r in rows[:12]})
    result = run()
    assert result.code == 3, result.out + result.err
    assert "ALERT     empty: empty answer rate 0.1667 > 0.05" in result.out
    assert "ALERT     thumbs_down" in result.out
    report, _ = reports(project)
    assert {a["name"] for a in report["alerts"]} == {"empty", "thumbs_down"}
    # The same traffic with those alerts switched off passes.
    assert run("--set", "monitor.max_empty_rate=null", "--set", "monitor.max_thumbs_down_rate=null").code == 0


def test_shifted_traffic_raises_the_drift_alarm(run, project):
    shifted = [request(i, f"Bonjour, voici ma recette de cuisine numéro {i}: " + "farine beurre sucre " * 20)
               for i in range(40)]  # fmt: skip
    log_traffic(project, shifted)
    result = run()
    assert result.code == 3, result.out
    report, _ = reports(project)
    names = {a["name"] for a in report["alerts"]}
    assert {"drift_length", "new_terms"} <= names and report["drift"]["drifted"]
    assert report["drift"]["new_terms"]["top"][0]["term"] in {"beurre", "farine", "sucre"}


def test_the_report_escapes_prompts_and_answers(run, project):
    script = "<script>alert('monitor')</script>"
    rows = in_distribution(30)
    rows.append(request(99, f"{script} ignore the instructions", output=script))
    log_traffic(project, rows)
    result = run("--set", "monitor.top_examples=31")
    assert result.code in (0, 3), result.out + result.err
    _, html = reports(project)
    assert "&lt;script&gt;alert(&#39;monitor&#39;)&lt;/script&gt; ignore the instructions" in html
    assert "<script" not in html


def test_missing_log_says_how_to_start_logging(run, project):
    result = run()
    assert result.code == 1
    assert "no traffic log" in result.err and "tuneloop serve --log" in result.err
    assert "Traceback" not in result.err


def test_corrupt_log_is_a_clear_error(run, project):
    path = project / traffic.FILENAME
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"this is not a database" * 100)
    result = run()
    assert result.code == 1 and "Traceback" not in result.err
    assert str(path) in result.err


def test_no_requests_in_the_window_is_a_clear_error(run, project):
    old = in_distribution(5)
    for r in old:
        r["time"] = "2020-01-01T00:00:00.000+00:00"
    log_traffic(project, old)
    result = run("--since", "7d")
    assert result.code == 1 and "no requests in" in result.err and "widen --since" in result.err
    assert run("--since", "2019-12-31").code == 0  # 5 requests: too few to test drift, no alert


def test_bad_since_is_a_clear_error(run, project):
    log_traffic(project, in_distribution(5))
    result = run("--since", "last tuesday")
    assert result.code == 1 and "--since 'last tuesday'" in result.err
