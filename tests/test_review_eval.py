"""A review of a real evaluation (tiny Llama, a pairwise LLM judge): create, rate, results, and the eval
report written afterwards carries the human review section."""

from __future__ import annotations

import json
import threading
from pathlib import Path

from tests.test_eval import _edit, _Judge, _longer
from tests.train_helpers import chat_rows, make_train_project
from tuneloop import config
from tuneloop.review.store import STORE_FILE, Rating, Store


def test_a_review_of_a_real_evaluation_reaches_its_report(cli, tmp_path: Path, tiny_llama: Path) -> None:
    from http.server import HTTPServer

    from tuneloop.evaluate.runner import evaluate
    from tuneloop.train.sft import train

    path = make_train_project(tmp_path / "p", tiny_llama, chat_rows(60))
    _edit(path, eval={"max_new_tokens": 8, "bootstrap": 100, "forgetting": {"enabled": False}})
    run_dir = train(config.load(path)).run_dir
    judge = HTTPServer(("127.0.0.1", 0), type("Judge", (_Judge,), {"rule": staticmethod(_longer)}))
    threading.Thread(target=judge.serve_forever, daemon=True).start()
    overrides = [
        "task.metrics=[output_length]",
        "eval.redteam.enabled=false",
        f"eval.judge.url=http://127.0.0.1:{judge.server_port}/v1",
    ]
    try:
        evaluate(config.load(path, overrides=overrides), [run_dir])
    finally:
        judge.shutdown()
    assert cli("review", "create", "--from", run_dir, "--name", "pw", "-c", path).code == 0
    store = Store(path.parent / "reviews" / STORE_FILE)
    store.add_reviewer("ana")
    items = store.items("pw")
    assert items and all(i.conversation[0]["content"] for i in items)
    for item in items:  # the reviewer prefers the longer answer, as the judge does
        base, tuned = item.candidates
        choice = (
            "tie"
            if len(base.text) == len(tuned.text)
            else (tuned.system if len(tuned.text) > len(base.text) else "base")
        )
        store.save_rating(Rating("pw", item.idx, "ana", f"s-{item.idx:05d}", choice=choice))
    assert cli("review", "results", "-c", path).code == 0
    result = json.loads((run_dir / "eval" / "human-review.json").read_text())
    assert result["systems"] == ["base", run_dir.name] and result["rated_items"] == len(items)
    judged = result["vs_automatic"]["judge_agreement"]
    if judged is not None:  # items where both the judge and the reviewer picked one answer
        assert judged["rate"] == 1.0
    # evaluating the run again writes a fresh report; it carries the review of these same answers
    evaluate(config.load(path, overrides=overrides[:2]), [run_dir])
    html = (run_dir / "eval" / "report.html").read_text()
    assert 'id="human-review"' in html and "earlier evaluation" not in html
    assert "<script" not in html
