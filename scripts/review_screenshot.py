"""Take the README's screenshot of the review page (docs/review-page.png) with headless Chromium.

With `--project DIR` (a quickstart project whose newest run has been evaluated, e.g. after
`tuneloop quickstart DIR`), the review is `tuneloop review create --from latest` on that run: real
base and tuned answers to the test tickets. Without it, the review is built from quickstart tickets,
each with two answers: the reference record and the same record with a wrong category and an
invented product (made up here, not a model's output). Either way the picture shows the page as a
reviewer sees it, two items into the review. Run from the repository root:

    .venv/bin/python scripts/review_screenshot.py [--project tuneloop-quickstart] [--out docs/review-page.png]
"""

from __future__ import annotations

import argparse
import json
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

from playwright.sync_api import sync_playwright

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "docs" / "review-page.png"
TICKETS = REPO / "src" / "tuneloop" / "templates" / "quickstart" / "tickets.jsonl"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--project", type=Path, help="a quickstart project with an evaluated run")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    if args.project is not None:
        cfg = ["-c", str(args.project / "tuneloop.yaml")]
        create = ["review", "create", "--from", "latest", "--sample", "20", "--name", "tickets", *cfg]
        subprocess.run([sys.executable, "-m", "tuneloop", *create], check=True)
        shoot(cfg, args.out, demo=False)
        return
    rows = []
    for line in TICKETS.read_text().splitlines():
        ticket = json.loads(line)["messages"]
        right = json.loads(ticket[-1]["content"])
        if right["product"] is None and len(rows) < 6:
            wrong = {**right, "category": "technical" if right["category"] != "technical" else "billing"}
            wrong["product"] = "Nimbus Drive"
            outputs = [
                {"system": "base", "output": json.dumps(wrong)},
                {"system": "tuned", "output": ticket[-1]["content"]},
            ]
            rows.append({"prompt": ticket[:-1], "reference": ticket[-1]["content"], "outputs": outputs})
    with tempfile.TemporaryDirectory() as tmp:
        project = Path(tmp)
        (project / "tuneloop.yaml").write_text("task:\n  objective: triage tickets\n  type: extraction\n")
        demo = project / "demo.jsonl"
        demo.write_text("".join(json.dumps(r) + "\n" for r in rows))
        tl = [sys.executable, "-m", "tuneloop"]
        cfg = ["-c", str(project / "tuneloop.yaml")]
        subprocess.run([*tl, "review", "create", "--from-jsonl", str(demo), "--name", "tickets", *cfg], check=True)
        shoot(cfg, args.out, demo=True)


def shoot(cfg: list[str], out: Path, demo: bool) -> None:
    """Serve the review named 'tickets', rate two items as a reviewer, start a third, and take the picture."""
    tl = [sys.executable, "-m", "tuneloop"]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    add = [*tl, "review", "reviewers", "add", "Dana (support lead)", "--url", f"http://127.0.0.1:{port}", *cfg]
    link = subprocess.run(add, check=True, capture_output=True, text=True).stdout.strip()
    server = subprocess.Popen([*tl, "review", "serve", "--port", str(port), *cfg])
    try:
        for _ in range(200):
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2)
            except urllib.error.HTTPError:
                break
            except OSError:
                time.sleep(0.3)
        with sync_playwright() as p:
            chromium = shutil.which("chromium") or shutil.which("chromium-browser")
            browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
            page = browser.new_page(viewport={"width": 1180, "height": 900})
            page.goto(link)
            page.click("text=continue")
            for pos in (1, 2):  # two items rated with the keyboard first, to show the progress bar moving
                page.keyboard.press("3")
                page.keyboard.press("Enter")
                page.wait_for_url(f"**/r/tickets/{pos}")
            if demo:
                better = page.locator(".answer", has_text='"product":null').get_attribute("data-letter")
                page.keyboard.press("1" if better == "A" else "2")
                page.check(f"input.flag-box[data-flag=hallucination][data-letter={'B' if better == 'A' else 'A'}]")
                page.fill("#comment", "Wrong category, and it names a product the ticket never mentions.")
            out.parent.mkdir(exist_ok=True)
            page.screenshot(path=str(out), full_page=True)
            browser.close()
    finally:
        server.terminate()
        server.wait(timeout=30)
    print(f"{out} ({out.stat().st_size // 1024} KiB)")


if __name__ == "__main__":
    main()
