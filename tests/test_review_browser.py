"""The review app end to end in a real browser: headless Chromium (Debian's `chromium` package, which
.ci/run installs) driven by Playwright, against `tuneloop review serve` in its own process."""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.review_helpers import make_eval
from tuneloop.review.store import STORE_FILE, Store

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
playwright = pytest.importorskip("playwright.sync_api", reason="playwright is in the dev extra: pip install -e .[dev]")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="no chromium on PATH (apt-get install chromium; .ci/run does)")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(config: Path, port: int) -> subprocess.Popen:
    """`tuneloop review serve` on 127.0.0.1:port, once it answers."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "tuneloop", "review", "serve", "--port", str(port), "-c", str(config)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"the server exited: {proc.stdout.read().decode()}")
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2)
        except urllib.error.HTTPError:
            return proc  # 401 without a token: it is up
        except OSError:
            time.sleep(0.3)
    proc.kill()
    raise AssertionError("the review server did not start within 120 s")


def test_a_reviewer_rates_with_mouse_and_keyboard_and_the_ratings_persist(cli, project: Path) -> None:
    folder = make_eval(project / "runs" / "run-1" / "eval", 6)
    config = project / "tuneloop.yaml"
    assert cli("review", "create", "--from", folder, "--name", "pw", "-c", config).code == 0
    port = free_port()
    added = cli("review", "reviewers", "add", "ana", "--url", f"http://127.0.0.1:{port}", "-c", config)
    link = added.out.strip()
    assert link.startswith(f"http://127.0.0.1:{port}/login?token=")
    before = cli("review", "results", "-c", config).out
    assert "0 of 6 items rated" in before
    store = Store(project / "reviews" / STORE_FILE)
    items = store.items("pw")
    server = start_server(config, port)
    try:
        with playwright.sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
            page = browser.new_page()
            page.goto(link)
            assert page.locator("text=Your reviews").is_visible()
            page.click("text=continue")
            page.wait_for_url("**/r/pw/0")
            # item 1, with the mouse: A is better, B hallucinates
            page.click("button.choice[data-choice=A]")
            page.check("input.flag-box[data-flag=hallucination][data-letter=B]")
            page.click("#save")
            page.wait_for_url("**/r/pw/1")
            # item 2, with the keyboard: 2 = B is better, Enter saves
            page.keyboard.press("2")
            page.keyboard.press("Enter")
            page.wait_for_url("**/r/pw/2")
            # item 3: 3 = tie, e opens the correction prefilled with an answer, then it is rewritten
            page.keyboard.press("3")
            page.keyboard.press("e")
            assert page.input_value("#correction") in [c.text for c in items[2].candidates]
            page.fill("#correction", "The corrected answer, written by a person.")
            page.keyboard.press("Escape")
            page.keyboard.press("Enter")
            page.wait_for_url("**/r/pw/3")
            assert "3 / 6 rated" in page.inner_text("#progress-text")
            # reload what was rated: the page shows the stored ratings again
            page.goto(f"http://127.0.0.1:{port}/r/pw/0")
            assert "on" in page.get_attribute("button.choice[data-choice=A]", "class")
            assert page.is_checked("input.flag-box[data-flag=hallucination][data-letter=B]")
            page.reload()
            assert page.is_checked("input.flag-box[data-flag=hallucination][data-letter=B]")
            page.goto(f"http://127.0.0.1:{port}/r/pw/2")
            assert page.input_value("#correction") == "The corrected answer, written by a person."
            browser.close()
    finally:
        server.terminate()
        server.wait(timeout=30)
    ratings = {r.idx: r for r in store.ratings("pw")}
    shown = {i: [items[i].candidates[k].system for k in items[i].shown] for i in range(3)}
    assert ratings[0].choice == shown[0][0] and ratings[0].flags == {shown[0][1]: ["hallucination"]}
    assert ratings[1].choice == shown[1][1]
    assert ratings[2].choice == "tie" and ratings[2].correction == "The corrected answer, written by a person."
    after = cli("review", "results", "-c", config).out
    assert "3 of 6 items rated" in after and "ana 3" in after and after != before


def test_rubric_and_ranking_are_rated_from_the_keyboard(cli, project: Path) -> None:
    folder = make_eval(project / "eval", 2)
    config = project / "tuneloop.yaml"
    assert cli("review", "create", "--from", folder, "--mode", "rubric", "--name", "rb", "-c", config).code == 0
    assert cli("review", "create", "--from", folder, "--mode", "ranking", "--name", "rk", "-c", config).code == 0
    port = free_port()
    link = cli("review", "reviewers", "add", "ana", "--url", f"http://127.0.0.1:{port}", "-c", config).out.strip()
    store = Store(project / "reviews" / STORE_FILE)
    server = start_server(config, port)
    try:
        with playwright.sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
            page = browser.new_page()
            page.goto(link)
            page.goto(f"http://127.0.0.1:{port}/r/rb/0")
            for key in "5432":  # one score per criterion, the highlight moving down after each
                page.keyboard.press(key)
            page.keyboard.press("ArrowUp")
            page.keyboard.press("1")  # the highlight went back up: the third criterion becomes 1
            page.keyboard.press("h")  # one answer: h flags it directly
            page.keyboard.press("Enter")
            page.wait_for_url("**/r/rb/1")
            page.goto(f"http://127.0.0.1:{port}/r/rk/0")
            page.keyboard.press("2")
            page.keyboard.press("Enter")  # the last answer ranks itself
            page.wait_for_url("**/r/rk/1")
            browser.close()
    finally:
        server.terminate()
        server.wait(timeout=30)
    [rubric] = store.ratings("rb")
    assert rubric.scores == {"factual accuracy": 5, "tone": 4, "helpfulness": 1, "follows policy": 2}
    assert list(rubric.flags.values()) == [["hallucination"]]
    [ranking] = store.ratings("rk")
    item = store.items("rk")[0]
    assert ranking.ranking == [item.candidates[item.shown[1]].system, item.candidates[item.shown[0]].system]
