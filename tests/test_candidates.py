"""`tuneloop data candidates`: sampled answers ranked into preference data, and a teacher's answers as SFT data."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from fastapi import FastAPI, Request  # at module level: the routes' annotations are resolved here
from fastapi.responses import JSONResponse

from tests.serve_helpers import make_lively_llama, running

PROMPTS = [
    {"prompt": "How do I reset my password?"},
    {"messages": [{"role": "user", "content": "Where is my refund?"}, {"role": "assistant", "content": "In Billing."}]},
    {"prompt": "Cancel my plan please", "completion": "Done."},
    {"completion": "a row without a prompt"},
    {"prompt": [{"role": "user", "content": "Track my order"}]},
]


@pytest.fixture(scope="module")
def lively(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_lively_llama(tmp_path_factory.mktemp("lively"))


def write_prompts(folder: Path, rows: list[dict] = PROMPTS) -> Path:
    path = folder / "prompts.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_ranked_rows_follow_the_scores_and_data_prepare_reads_them(tmp_path, lively, cli, monkeypatch):
    prompts = write_prompts(tmp_path)
    (tmp_path / "myreward.py").write_text("def score(prompt, response):\n    return float(len(response))\n")
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "ranked.jsonl"
    args = ["data", "candidates", "--model", lively, "--input", prompts, "--out", out, "--k", "4"]
    result = cli(*args, "--temperature", "1.0", "--max-new-tokens", "12", "--score", "myreward:score")
    assert result.code == 0, result.err

    rows = read_jsonl(out)
    rejects = read_jsonl(tmp_path / "ranked.rejects.jsonl")
    assert rows, "no prompt got two differently long answers"
    for row in rows:
        assert row["scores"] == [float(len(r)) for r in row["responses"]]
        ranked_scores = [row["scores"][i] for i in row["ranking"]]
        assert ranked_scores == sorted(row["scores"], reverse=True)  # best first
        assert len(set(row["scores"])) == len(row["scores"])  # ties never reach the ranked file
    assert {r["source"] for r in rows} <= {f"{prompts}:{n}" for n in (1, 2, 3, 5)}
    bad = [r for r in rejects if r["line"] == 4]
    assert len(bad) == 1 and "expected a prompt" in bad[0]["reason"]
    # Every prompt is accounted for: written, or rejected as a whole (tied answers are rejects too).
    whole = {r["line"] for r in rejects if r["reason"].startswith(("no preference", "expected"))}
    assert len(rows) + len(whole - {4}) == 4

    from tuneloop import config
    from tuneloop.data.prepare import prepare

    doc = {
        "task": {"objective": "prefer longer answers", "type": "preference"},
        "model": {"name": str(lively)},
        "data": {"train": ["ranked.jsonl"], "format": "ranked", "split": {"train": 1.0, "val": 0.0, "test": 0.0}},
    }
    (tmp_path / "tuneloop.yaml").write_text(yaml.safe_dump(doc))
    report = prepare(config.load(tmp_path / "tuneloop.yaml"), tokenize=False, workers=0).report
    assert report["rows_in"] == len(rows)
    assert sum(s["rows"] for s in report["splits"].values()) == len(rows)


def test_ties_keep_the_first_sampled_answer_and_reject_the_others():
    from tuneloop.data.candidates import Prompt, rank

    prompt = Prompt("p.jsonl:7", [{"role": "user", "content": "q"}])
    row, rejects = rank(prompt, ["a", "b", "c", "b "], [1.0, 2.0, 1.0, 0.5])
    assert row["responses"] == ["a", "b"] and row["ranking"] == [1, 0] and row["scores"] == [1.0, 2.0]
    assert [(r.where, r.reason.split(":")[0]) for r in rejects] == [
        ("p.jsonl:7", "tied score"),
        ("p.jsonl:7", "duplicate answer"),
    ]
    row, rejects = rank(prompt, ["a", "b"], [3.0, 3.0])
    assert row is None and len(rejects) == 1 and rejects[0].reason.startswith("no preference")


def fake_judge():
    """An OpenAI-compatible judge: 'OK' to the ping; to a grading prompt, 5 if the answer has a vowel 'e', else 1."""

    app = FastAPI()
    seen: list[str] = []

    @app.post("/v1/chat/completions")
    async def chat(request: Request) -> dict:
        body = await request.json()
        prompt = body["messages"][-1]["content"]
        seen.append(prompt)
        if "Answer to grade:" not in prompt:
            return {"choices": [{"message": {"role": "assistant", "content": "OK"}, "finish_reason": "stop"}]}
        answer = prompt.split("Answer to grade:\n", 1)[1].split("\n\nReply with", 1)[0]
        verdict = "5" if "e" in answer else "1"
        return {"choices": [{"message": {"role": "assistant", "content": verdict}, "finish_reason": "stop"}]}

    app.state.seen = seen
    return app


def test_a_loopback_judge_ranks_the_answers(tmp_path, lively, cli):
    prompts = write_prompts(tmp_path)
    out = tmp_path / "judged.jsonl"
    app = fake_judge()
    with running(app) as url:
        args = ["data", "candidates", "--model", lively, "--input", prompts, "--out", out, "--k", "4"]
        result = cli(*args, "--temperature", "1.0", "--max-new-tokens", "12", "--judge", f"{url}/v1")
    assert result.code == 0, result.err
    graded = [p for p in app.state.seen if "Answer to grade:" in p]
    assert len(graded) == 4 * 4  # every answer of every prompt was graded once
    for row in read_jsonl(out):
        best = row["responses"][row["ranking"][0]]
        assert "e" in best and row["scores"][row["ranking"][0]] == 5.0
        assert all("e" not in r for r in row["responses"] if r != best)


def test_without_a_ranker_the_command_refuses_or_writes_for_review(tmp_path, lively, cli):
    prompts = write_prompts(tmp_path)
    out = tmp_path / "out.jsonl"
    refused = cli("data", "candidates", "--model", lively, "--input", prompts, "--out", out)
    assert refused.code == 1 and "not the `ranked` format" in refused.err and not out.exists()

    args = ["data", "candidates", "--model", lively, "--input", prompts, "--out", out, "--for-review"]
    result = cli(*args, "--k", "3", "--temperature", "1.0", "--max-new-tokens", "8")
    assert result.code == 0, result.err
    from tuneloop.review.create import from_jsonl

    rows, info = from_jsonl(out)
    assert rows and all(2 <= len(r["candidates"]) <= 3 for r in rows)
    assert info["systems"][:2] == ["output 1", "output 2"]


def fake_teacher():
    """A teacher endpoint that fails on purpose: HTTP 500 on 'crash', a cut answer on 'ramble', empty on 'mute'."""

    app = FastAPI()

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        body = await request.json()
        question = body["messages"][-1]["content"]
        if "crash" in question:
            return JSONResponse({"error": {"message": "teacher overloaded"}}, status_code=500)
        text, finish = f"Answer: {question.upper()}", "stop"
        if "ramble" in question:
            finish = "length"
        if "mute" in question:
            text = "   "
        return {"choices": [{"message": {"role": "assistant", "content": text}, "finish_reason": finish}]}

    return app


def test_distillation_writes_teacher_answers_and_rejects_failed_rows_with_file_line(tmp_path, cli):
    rows = [
        {"prompt": "reset password"},
        {"prompt": "crash now"},
        {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "track order"}]},
        {"prompt": "ramble on"},
        {"prompt": "mute please"},
    ]
    prompts = write_prompts(tmp_path, rows)
    out = tmp_path / "sft.jsonl"
    with running(fake_teacher()) as url:
        result = cli("data", "candidates", "--teacher", f"{url}/v1", "--k", "1", "--input", prompts, "--out", out)
    assert result.code == 0, result.err
    written = read_jsonl(out)
    assert [r["messages"][-1]["content"] for r in written] == ["Answer: RESET PASSWORD", "Answer: TRACK ORDER"]
    assert written[1]["messages"][0] == {"role": "system", "content": "Be brief."}
    rejects = read_jsonl(tmp_path / "sft.rejects.jsonl")
    assert [(r["source"], r["line"]) for r in rejects] == [(str(prompts), 2), (str(prompts), 4), (str(prompts), 5)]
    assert "HTTP 500" in rejects[0]["reason"] and "finish_reason length" in rejects[1]["reason"]
    assert "empty" in rejects[2]["reason"]
    assert f"{prompts}:2" in result.err  # the command names the failed rows, not just a count

    from tuneloop import config
    from tuneloop.data.prepare import prepare

    doc = {
        "task": {"objective": "distil", "type": "chat"},
        "model": {"name": "unused"},
        "data": {"train": ["sft.jsonl"], "split": {"train": 1.0, "val": 0.0, "test": 0.0}},
    }
    (tmp_path / "tuneloop.yaml").write_text(yaml.safe_dump(doc))
    report = prepare(config.load(tmp_path / "tuneloop.yaml"), tokenize=False, workers=0).report
    assert sum(s["rows"] for s in report["splits"].values()) == 2


def test_teacher_needs_k_1_and_a_reachable_endpoint(tmp_path, cli):
    prompts = write_prompts(tmp_path)
    out = tmp_path / "sft.jsonl"
    many = cli("data", "candidates", "--teacher", "http://127.0.0.1:9/v1", "--k", "2", "--input", prompts, "--out", out)
    assert many.code == 1 and "--k 1" in many.err
    down = cli("data", "candidates", "--teacher", "http://127.0.0.1:9/v1", "--k", "1", "--input", prompts, "--out", out)
    assert down.code == 1 and "not reachable" in down.err and not out.exists()
