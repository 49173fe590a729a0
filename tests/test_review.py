"""`tuneloop review`: the store, the web app's guarantees (auth, escaping, idempotence, persistence,
concurrency, field errors), results with intervals and kappa, and the exports."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from tests.review_helpers import XSS, make_eval
from tuneloop.review import create as creating
from tuneloop.review.app import Settings, create_app
from tuneloop.review.results import RESULTS_FILE, agreement, wilson
from tuneloop.review.store import STORE_FILE, Rating, Store, assigned

CRITERIA = ["factual accuracy", "tone", "helpfulness", "follows policy"]


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return Store(tmp_path / "reviews" / STORE_FILE)


def pairwise(store: Store, folder: Path, n: int = 12, overlap: int = 2, name: str = "pw") -> None:
    rows, source = creating.from_eval(make_eval(folder, n))
    creating.build(
        store, rows, source, name=name, mode="pairwise", sample=n, seed=0, criteria=CRITERIA, overlap=overlap
    )


def client(store: Store, token: str | None = None, admin_key: str | None = None, **settings) -> TestClient:
    c = TestClient(create_app(store, Settings(admin_key=admin_key, **settings)), follow_redirects=False)
    if token:
        assert c.get(f"/login?token={token}").status_code == 303
    return c


def rate(c: TestClient, pos: int, sid: str, **body):
    return c.post(f"/api/r/pw/{pos}", json={"submission_id": sid, **body})


# --------------------------------------------------------------------------- create


def test_create_from_an_evaluation_samples_and_hides_the_order_reproducibly(cli, project: Path) -> None:
    folder = make_eval(project / "runs" / "run-1" / "eval", 30)
    cfg = project / "tuneloop.yaml"
    for name in ("one", "two"):
        r = cli("review", "create", "--from", folder, "--sample", "10", "--seed", "3", "--name", name, "-c", cfg)
        assert r.code == 0, r.err
    store = Store(project / "reviews" / STORE_FILE)
    one, two = store.items("one"), store.items("two")
    assert len(one) == 10 and [i.item_id for i in one] == [i.item_id for i in two]
    assert [i.shown for i in one] == [i.shown for i in two]  # same seed, same hidden order
    assert {tuple(i.shown) for i in one} == {(0, 1), (1, 0)}  # both orders occur
    assert all([c.system for c in i.candidates] == ["base", "run-1"] for i in one)
    assert store.review("one").systems == ["base", "run-1"]
    r = cli("review", "create", "--from", folder, "--name", "one", "-c", cfg)
    assert r.code == 1 and "exists" in r.err


def test_create_from_jsonl_reads_prompt_output_pairs_and_messages_rows(cli, project: Path) -> None:
    path = project / "monitor.jsonl"
    rows = [
        {"prompt": "hello?", "output": "hi"},
        {"messages": [{"role": "user", "content": "where is my order?"}, {"role": "assistant", "content": "shipped"}]},
        # the review file of `tuneloop monitor export` (monitor.export.review_record): prompt turns + the answer
        {"messages": [{"role": "user", "content": "refund?"}], "prompt": None, "answer": "no", "model": "m"},
    ]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    cfg = project / "tuneloop.yaml"
    r = cli("review", "create", "--from-jsonl", path, "--mode", "pairwise", "-c", cfg)
    assert r.code == 1 and "pairwise mode needs two answers per row" in r.err
    r = cli("review", "create", "--from-jsonl", path, "--mode", "rubric", "--name", "rb", "-c", cfg)
    assert r.code == 0, r.err
    items = Store(project / "reviews" / STORE_FILE).items("rb")
    assert sorted(i.conversation[-1]["content"] for i in items) == ["hello?", "refund?", "where is my order?"]
    assert sorted(i.candidates[0].text for i in items) == ["hi", "no", "shipped"]
    path.write_text('{"prompt": "x"}\nnot json\n')
    r = cli("review", "create", "--from-jsonl", path, "--mode", "rubric", "-c", cfg)
    assert r.code == 1 and "monitor.jsonl:1" in r.err and "monitor.jsonl:2" in r.err


def test_against_compares_two_runs_on_their_shared_test_cases(cli, project: Path) -> None:
    first = make_eval(project / "runs" / "run-1" / "eval", 6, run="run-1")
    second = make_eval(project / "runs" / "run-2" / "eval", 4, run="run-2")
    cfg = project / "tuneloop.yaml"
    r = cli("review", "create", "--from", "run-1", "--against", "run-2", "--name", "ab", "-c", cfg)
    assert r.code == 0, r.err
    store = Store(project / "reviews" / STORE_FILE)
    assert store.review("ab").systems == ["run-2", "run-1"]  # the win rate is --from's
    items = store.items("ab")
    assert sorted(i.item_id for i in items) == [f"test-{i}" for i in range(4)]
    assert all([c.system for c in i.candidates] == ["run-2", "run-1"] for i in items)
    assert all("judge_win" not in c.scores for i in items for c in i.candidates)  # the judge compared each with base
    r = cli("review", "create", "--from", first, "--against", first, "-c", cfg)
    assert r.code == 1 and "same run" in r.err
    r = cli("review", "create", "--from", project / "runs", "-c", cfg)
    assert r.code == 1 and "tuneloop eval" in r.err
    assert second.is_dir()


def test_cli_errors_are_clear(cli, project: Path) -> None:
    cfg = project / "tuneloop.yaml"
    r = cli("review", "results", "-c", cfg)
    assert r.code == 1 and "create one with `tuneloop review create" in r.err
    assert cli("review", "reviewers", "add", "ana", "-c", cfg).code == 0
    r = cli("review", "reviewers", "add", "ana", "-c", cfg)
    assert r.code == 1 and "exists" in r.err
    assert cli("review", "reviewers", "list", "-c", cfg).out.strip() == "ana"
    r = cli("review", "create", "-c", cfg)
    assert r.code == 1 and "--from RUN" in r.err
    make_eval(project / "eval", 3)
    assert cli("review", "create", "--from", project / "eval", "--name", "pw", "-c", cfg).code == 0
    r = cli("review", "results", "--name", "nope", "-c", cfg)
    assert r.code == 1 and "reviews: pw" in r.err
    r = cli("review", "export", "--ranked", "-c", cfg)
    assert r.code == 1 and "--ranked needs a ranking review" in r.err


def test_each_item_goes_to_overlap_reviewers_and_shares_are_even() -> None:
    names = ["a", "b", "c"]
    shares = {n: assigned(30, names, n, 2) for n in names}
    assert all(len(s) == 20 for s in shares.values())
    assert all(sum(i in s for s in shares.values()) == 2 for i in range(30))
    assert assigned(5, ["a"], "a", 3) == [0, 1, 2, 3, 4] and assigned(5, ["a"], "zed", 2) == []


# --------------------------------------------------------------------------- the app's guarantees


def test_every_route_needs_a_reviewer_token(store: Store, tmp_path: Path) -> None:
    pairwise(store, tmp_path / "eval")
    token = store.add_reviewer("ana")
    anonymous = client(store)
    for path in ("/", "/r/pw", "/r/pw/0"):
        assert anonymous.get(path).status_code == 401, path
    assert rate(anonymous, 0, "s" * 10, choice="A").status_code == 401
    assert anonymous.get("/login?token=wrong").status_code == 401
    assert anonymous.get("/", headers={"Authorization": f"Bearer {token}x"}).status_code == 401
    assert anonymous.get("/", headers={"Authorization": f"Bearer {token}"}).status_code == 200
    assert client(store, token).get("/r/pw/0").status_code == 200
    # admin routes: off without a key; with one, a reviewer's token does not open them
    assert client(store, token).get("/admin").status_code == 404
    admin = client(store, admin_key="k" * 20)
    assert admin.get("/admin", headers={"Authorization": f"Bearer {token}"}).status_code == 401
    assert admin.get("/login?token=" + "k" * 20).status_code == 303
    page = admin.get("/admin")
    assert page.status_code == 200 and "12 items, each seen by up to 2 reviewers" in page.text
    added = admin.post("/admin/reviewers", json={"name": "ben"})
    assert added.status_code == 200 and store.reviewers() == ["ana", "ben"]
    link = added.json()["link"]
    assert client(store).get(link.replace("http://testserver", "")).status_code == 303


def test_model_output_with_a_script_tag_is_shown_as_text(store: Store, tmp_path: Path) -> None:
    pairwise(store, tmp_path / "eval")
    c = client(store, store.add_reviewer("ana"))
    pos = next(p for p, i in enumerate(store.items("pw")) if any(x.text == XSS for x in i.candidates))
    page = c.get(f"/r/pw/{pos}")
    assert page.status_code == 200
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page.text
    assert XSS not in page.text  # neither in the answer nor in the page's JSON state
    assert "nonce-" in page.headers["content-security-policy"]


def test_a_double_submit_is_stored_once(store: Store, tmp_path: Path) -> None:
    pairwise(store, tmp_path / "eval")
    c = client(store, store.add_reviewer("ana"))
    first = rate(c, 0, "submission-1", choice="A", comment="first")
    again = rate(c, 0, "submission-1", choice="B", comment="resent")
    assert first.status_code == 200 and first.json()["saved"] is True
    assert again.status_code == 200 and again.json()["saved"] is False
    stored = store.ratings("pw")
    assert len(stored) == 1 and stored[0].comment == "first"
    assert rate(c, 0, "submission-2", choice="tie").json()["saved"] is True  # a new submission changes the rating
    assert [r.choice for r in store.ratings("pw")] == ["tie"]
    assert rate(c, 1, "submission-2", choice="A").status_code == 409  # an id reused for another item


def test_the_letters_a_reviewer_sees_resolve_to_the_hidden_systems(store: Store, tmp_path: Path) -> None:
    pairwise(store, tmp_path / "eval")
    c = client(store, store.add_reviewer("ana"))
    for pos, item in enumerate(store.items("pw")[:4]):
        rate(c, pos, f"sub-{pos:06d}", choice="A", hallucination=["B"])
        a, b = (item.candidates[i].system for i in item.shown)
        stored = store.ratings("pw")[pos]
        assert stored.choice == a and stored.flags == {b: ["hallucination"]}


def test_a_rating_survives_an_app_restart(store: Store, tmp_path: Path) -> None:
    pairwise(store, tmp_path / "eval")
    token = store.add_reviewer("ana")
    rate(client(store, token), 2, "before-restart", choice="both_bad", correction="the right answer")
    reopened = Store(store.path)  # a new process would open the file like this
    page = client(reopened, token).get("/r/pw/2")
    assert "the right answer" in page.text and '"choice": "both_bad"' in page.text
    assert [r.correction for r in reopened.ratings("pw")] == ["the right answer"]


def test_two_reviewers_rating_concurrently_lose_nothing(store: Store, tmp_path: Path) -> None:
    pairwise(store, tmp_path / "eval", n=40)
    clients = {name: client(store, store.add_reviewer(name)) for name in ("ana", "ben")}
    errors: list[str] = []

    def work(name: str) -> None:
        for pos in range(40):
            r = rate(clients[name], pos, f"{name}-{pos:06d}", choice="AB"[pos % 2], comment=name)
            if r.status_code != 200:
                errors.append(r.text)

    threads = [threading.Thread(target=work, args=(n,)) for n in clients]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    stored = store.ratings("pw")
    assert len(stored) == 80 and {(r.reviewer, r.idx) for r in stored} == {(n, i) for n in clients for i in range(40)}


@pytest.mark.parametrize(
    ("body", "status", "field"),
    [
        ({}, 422, "choice"),
        ({"choice": "C"}, 422, "choice"),
        ({"choice": "A", "scores": {"tone": 3}}, 422, "scores"),
        ({"choice": "A", "hallucination": ["Z"]}, 422, "hallucination"),
        ({"choice": "A", "comment": "x" * 5001}, 422, "comment"),
        ({"choice": "A", "colour": "red"}, 422, "colour"),
        ({"choice": "A", "submission_id": "short"}, 422, "submission_id"),
    ],
)
def test_bad_input_gets_a_4xx_naming_the_field(store: Store, tmp_path: Path, body, status, field) -> None:
    pairwise(store, tmp_path / "eval")
    c = client(store, store.add_reviewer("ana"))
    r = c.post("/api/r/pw/0", json={"submission_id": "valid-id-1", **body})
    assert r.status_code == status and r.json()["error"]["field"] == field, r.text
    assert store.ratings("pw") == []


def test_bad_requests_outside_the_body_are_4xx_too(store: Store, tmp_path: Path) -> None:
    pairwise(store, tmp_path / "eval")
    c = client(store, store.add_reviewer("ana"), max_body_bytes=2048)
    headers = {"Content-Type": "application/json"}
    assert c.post("/api/r/pw/0", content=b"{not json", headers=headers).json()["error"]["field"] == "body"
    assert c.post("/api/r/pw/0", content=b"x" * 4096, headers=headers).status_code == 413
    assert c.post("/api/r/pw/99", json={"submission_id": "valid-id-1", "choice": "A"}).status_code == 404
    bad = c.post("/api/r/pw/abc", json={"submission_id": "valid-id-1", "choice": "A"})
    assert bad.status_code == 422 and bad.json()["error"]["field"] == "pos"
    assert c.get("/r/nope").status_code == 404
    assert c.get("/r/pw").status_code == 303  # the server is still fine


def test_rubric_ratings_need_every_criterion_from_one_to_five(store: Store, tmp_path: Path) -> None:
    rows, source = creating.from_eval(make_eval(tmp_path / "eval", 4))
    creating.build(store, rows, source, name="rb", mode="rubric", sample=4, seed=0, criteria=CRITERIA, overlap=1)
    c = client(store, store.add_reviewer("ana"))
    full = dict.fromkeys(CRITERIA, 4)
    r = c.post("/api/r/rb/0", json={"submission_id": "valid-id-1", "scores": {**full, "tone": 6}})
    assert r.status_code == 422 and r.json()["error"]["field"] == "scores.tone"
    r = c.post("/api/r/rb/0", json={"submission_id": "valid-id-1", "scores": {"tone": 3}})
    assert r.status_code == 422 and "missing factual accuracy" in r.json()["error"]["message"]
    assert c.post("/api/r/rb/0", json={"submission_id": "valid-id-1", "scores": full}).status_code == 200


def test_rubric_ranking_and_done_pages_render(store: Store, tmp_path: Path) -> None:
    rows, source = creating.from_eval(make_eval(tmp_path / "eval", 2))
    creating.build(store, rows, source, name="rb", mode="rubric", sample=2, seed=0, criteria=CRITERIA, overlap=1)
    creating.build(store, rows, source, name="rk", mode="ranking", sample=2, seed=0, criteria=CRITERIA, overlap=1)
    c = client(store, store.add_reviewer("ana"))
    rubric = c.get("/r/rb/0")
    assert rubric.status_code == 200 and all(f'data-criterion="{x}"' in rubric.text for x in CRITERIA)
    ranking = c.get("/r/rk/1")
    assert ranking.status_code == 200 and ranking.text.count('class="rank-btn"') == 2
    for pos in range(2):
        assert c.post(f"/api/r/rk/{pos}", json={"submission_id": f"rank-{pos:05d}", "ranking": ["B", "A"]}).is_success
    done = c.get("/r/rk")
    assert done.status_code == 200 and "All 2 items of <b>rk</b> are rated" in done.text
    home = c.get("/")
    assert "2 / 2" in home.text and "0 / 4" in home.text  # rubric: one item per answer


def test_serve_refuses_a_non_loopback_host_without_an_admin_key(cli, project: Path, monkeypatch) -> None:
    monkeypatch.delenv("TUNELOOP_REVIEW_ADMIN_KEY", raising=False)
    r = cli("review", "serve", "--host", "0.0.0.0", "-c", project / "tuneloop.yaml")
    assert r.code == 1 and "--admin-key" in r.err


# --------------------------------------------------------------------------- results


def test_kappa_equals_the_librarys_on_fixtures() -> None:
    from sklearn.metrics import cohen_kappa_score
    from statsmodels.stats.inter_rater import fleiss_kappa

    rng = np.random.default_rng(0)
    a = rng.choice(["base", "tuned", "tie"], 50)
    b = np.where(rng.random(50) < 0.7, a, rng.choice(["base", "tuned", "tie"], 50))
    two = agreement({i: {"ana": a[i], "ben": b[i]} for i in range(50)})
    assert two["measure"] == "Cohen's kappa" and two["kappa"] == pytest.approx(cohen_kappa_score(a, b))
    s1, s2 = rng.integers(1, 6, 40), rng.integers(1, 6, 40)
    weighted = agreement({i: {"ana": int(s1[i]), "ben": int(s2[i])} for i in range(40)}, weights="quadratic")
    assert weighted["kappa"] == pytest.approx(cohen_kappa_score(s1, s2, weights="quadratic"))
    c = np.where(rng.random(50) < 0.5, a, rng.choice(["base", "tuned", "tie"], 50))
    three = agreement({i: {"ana": a[i], "ben": b[i], "cy": c[i]} for i in range(50)})
    cats = ["base", "tie", "tuned"]
    table = np.array([[sum(x[i] == k for x in (a, b, c)) for k in cats] for i in range(50)])
    assert three["measure"] == "Fleiss' kappa" and three["kappa"] == pytest.approx(fleiss_kappa(table))


def test_the_win_rate_interval_covers_a_known_rate_in_most_seeded_trials() -> None:
    from tuneloop.review.results import _win_rate
    from tuneloop.review.store import Review

    true_rate, n, covered = 0.65, 60, 0
    review = Review("pw", "pairwise", ["base", "tuned"], CRITERIA, 1, 0, {}, "")
    for trial in range(100):
        rng = np.random.default_rng(trial)
        by_item = {
            i: [Rating("pw", i, "ana", f"s{i}", choice="tuned" if rng.random() < true_rate else "base")]
            for i in range(n)
        }
        w = _win_rate(review, by_item)
        assert w["wins"] + w["losses"] == n
        covered += w["ci"][0] <= true_rate <= w["ci"][1]
    assert covered >= 90, covered


def test_results_cli_writes_json_and_the_eval_report_shows_it(cli, project: Path) -> None:
    folder = make_eval(project / "runs" / "run-1" / "eval", 12)
    (folder / "report.html").write_text("<html><body><h1>Evaluation</h1></body></html>")
    (folder / "report.md").write_text("# Evaluation\n")
    cfg = project / "tuneloop.yaml"
    assert cli("review", "create", "--from", folder, "--name", "pw", "-c", cfg).code == 0
    store = Store(project / "reviews" / STORE_FILE)
    store.add_reviewer("ana")
    store.add_reviewer("ben")
    items = store.items("pw")
    for reviewer in ("ana", "ben"):
        for item in items:  # both prefer the tuned answer exactly where the metric and the judge do
            better = "run-1" if int(item.item_id.split("-")[1]) % 2 else "base"
            flags = {"run-1": ["hallucination"]} if item.idx == 0 else {}
            store.save_rating(Rating("pw", item.idx, reviewer, f"{reviewer}-{item.idx}", choice=better, flags=flags))
    r = cli("review", "results", "-c", cfg)
    assert r.code == 0, r.err
    assert "win rate  run-1 over base: 50.0%" in r.out and "Cohen's kappa 1.000" in r.out
    result = json.loads((folder / RESULTS_FILE).read_text())
    assert result["per_reviewer"] == {"ana": 12, "ben": 12}
    assert result["vs_automatic"]["metric_agreement"]["rate"] == 1.0
    assert result["vs_automatic"]["judge_agreement"]["rate"] == 1.0
    assert result["flags"]["hallucination"]["run-1"]["flagged"] == 2  # both reviewers flagged item 0
    html = (folder / "report.html").read_text()
    assert "Human review" in html and "Win rate of run-1 over base" in html
    assert "Humans and rougeL pick the same winner on 100.0% of 12 items" in html
    assert "12 of 12 items rated" in html and "Cohen&#39;s kappa 1 over 12 items" in html
    assert cli("review", "results", "-c", cfg).code == 0
    assert (folder / "report.html").read_text().count("Human review") == 1  # replaced, not appended twice
    assert (folder / "report.md").read_text().count("## Human review") == 1
    assert "earlier evaluation" not in (folder / "report.html").read_text()
    from tuneloop.evaluate.report import add_human_review

    with (folder / "outputs.jsonl").open("a") as f:  # the folder is evaluated again after the review
        f.write("{}\n")
    add_human_review(folder)
    assert "reviewed in an earlier evaluation" in (folder / "report.html").read_text()


def test_rubric_results_reach_the_report_with_intervals_and_correlation(cli, project: Path) -> None:
    folder = make_eval(project / "eval", 8)
    (folder / "report.html").write_text("<html><body></body></html>")
    cfg = project / "tuneloop.yaml"
    assert cli("review", "create", "--from", folder, "--mode", "rubric", "--name", "rb", "-c", cfg).code == 0
    store = Store(project / "reviews" / STORE_FILE)
    store.add_reviewer("ana")
    for item in store.items("rb"):  # the score follows the metric: 0.1 → 1, 0.2 → 2, 0.3 → 3
        score = round(item.candidates[0].scores["rougeL"] * 10)
        store.save_rating(Rating("rb", item.idx, "ana", f"s-{item.idx:05d}", scores=dict.fromkeys(CRITERIA, score)))
    r = cli("review", "results", "-c", cfg)
    assert r.code == 0, r.err
    result = json.loads((folder / RESULTS_FILE).read_text())
    base = result["rubric"]["base"]["tone"]
    assert base["mean"] == 2.0 and base["ci"] == [2.0, 2.0] and base["items"] == 8
    tuned = result["rubric"]["run-1"]["tone"]
    assert tuned["mean"] == 2.0 and tuned["ci"][0] < 2.0 < tuned["ci"][1]
    assert result["vs_automatic"]["metric_spearman"] == pytest.approx(1.0)
    html = (folder / "report.html").read_text()
    assert "factual accuracy" in html and "Spearman correlation of human scores with rougeL: 1" in html


def test_the_report_reads_the_review_file_by_the_shared_path_convention() -> None:
    from tuneloop.evaluate import report

    assert report.HUMAN_REVIEW_FILE == RESULTS_FILE
    assert wilson(0, 0) is None and wilson(5, 10)[0] < 0.5 < wilson(5, 10)[1]


# --------------------------------------------------------------------------- exports


def test_export_writes_csv_and_corrections_that_data_prepare_reads(cli, project: Path) -> None:
    from tuneloop.data.formats import detect_format, read_rows, to_example

    folder = make_eval(project / "eval", 6)
    cfg = project / "tuneloop.yaml"
    assert cli("review", "create", "--from", folder, "--name", "pw", "-c", cfg).code == 0
    store = Store(project / "reviews" / STORE_FILE)
    store.add_reviewer("ana")
    store.save_rating(Rating("pw", 0, "ana", "sub-00000", choice="tie", correction="A corrected answer."))
    store.save_rating(Rating("pw", 1, "ana", "sub-00001", choice="base", comment="too long"))
    r = cli("review", "export", "--out", project / "out", "-c", cfg)
    assert r.code == 0, r.err
    csv_text = (project / "out" / "pw.ratings.csv").read_text()
    assert csv_text.count("\n") == 3 and "too long" in csv_text
    path = project / "out" / "pw.corrections.jsonl"
    rows = list(read_rows(path, path.name))
    assert detect_format(rows, str(path)) == "messages" and len(rows) == 1
    example = to_example(rows[0].value, "messages", "x")
    assert example.messages[-1] == {"role": "assistant", "content": "A corrected answer."}
    assert example.messages[0]["content"] == store.items("pw")[0].conversation[0]["content"]


def test_exported_corrections_go_through_data_prepare(tmp_path: Path, tiny_llama: Path) -> None:
    import yaml

    from tests.train_helpers import chat_rows, make_train_project
    from tuneloop import config
    from tuneloop.data.prepare import prepare
    from tuneloop.review.export import export

    root = tmp_path / "p"
    cfg_path = make_train_project(root, tiny_llama, chat_rows(20))
    traffic = root / "traffic.jsonl"
    traffic.write_text(
        "".join(
            json.dumps({"prompt": f"customer question {i}", "output": f"wrong answer {i}"}) + "\n" for i in range(3)
        )
    )
    store = Store(root / "reviews" / STORE_FILE)
    rows, source = creating.from_jsonl(traffic)
    review, items = creating.build(
        store, rows, source, name="rb", mode="rubric", sample=3, seed=0, criteria=CRITERIA, overlap=1
    )
    store.add_reviewer("ana")
    for item in items:
        n = item.item_id.rsplit("-", 1)[1]
        scores = dict.fromkeys(CRITERIA, 2)
        store.save_rating(Rating("rb", item.idx, "ana", f"s-{n:0>6}", scores=scores, correction=f"right answer {n}"))
    export(store, review, root / "data" / "reviewed")
    doc = yaml.safe_load(cfg_path.read_text())
    doc["data"]["train"] = ["data/train.jsonl", "data/reviewed/rb.corrections.jsonl"]
    cfg_path.write_text(yaml.safe_dump(doc))
    prepare(config.load(cfg_path), workers=0)
    prepared = "".join((root / "data" / "prepared" / f"{s}.jsonl").read_text() for s in ("train", "val", "test"))
    assert all(f"right answer {n}" in prepared for n in (1, 2, 3)) and "wrong answer" not in prepared
    assert "rb.corrections" not in (root / "data" / "prepared" / "rejects.jsonl").read_text()


def test_ranking_export_writes_the_ranked_format_the_data_stage_reads(cli, project: Path) -> None:
    from tuneloop.data.formats import detect_format, read_rows, to_example

    path = project / "candidates.jsonl"
    path.write_text(
        json.dumps({"prompt": "Say hi", "outputs": [{"system": s, "output": f"{s} says hi"} for s in "xyz"]}) + "\n"
    )
    cfg = project / "tuneloop.yaml"
    assert cli("review", "create", "--from-jsonl", path, "--mode", "ranking", "--name", "rk", "-c", cfg).code == 0
    store = Store(project / "reviews" / STORE_FILE)
    token = store.add_reviewer("ana")
    store.add_reviewer("ben")
    item = store.items("rk")[0]
    letter = {item.candidates[i].system: chr(65 + j) for j, i in enumerate(item.shown)}
    c = TestClient(create_app(store, Settings()))
    c.get(f"/login?token={token}")
    r = c.post("/api/r/rk/0", json={"submission_id": "rank-00001", "ranking": [letter[s] for s in "zxy"]})
    assert r.status_code == 200, r.text
    assert c.post("/api/r/rk/0", json={"submission_id": "rank-00002", "ranking": ["A"]}).status_code == 422
    store.save_rating(Rating("rk", 0, "ben", "rank-00003", ranking=["z", "y", "x"]))
    assert cli("review", "export", "--ranked", "--out", project / "out", "-c", cfg).code == 0
    out = project / "out" / "rk.ranked.jsonl"
    rows = list(read_rows(out, out.name))
    assert detect_format(rows, str(out)) == "ranked"
    example = to_example(rows[0].value, "ranked", "x")
    assert [example.responses[i] for i in example.ranking] == ["z says hi", "x says hi", "y says hi"]  # mean ranks
    assert cli("review", "results", "--name", "rk", "-c", cfg).code == 0
