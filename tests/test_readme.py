"""The README's two opening commands are the product's promise: keep them true."""

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.conftest import REPO


def readme_commands() -> list[str]:
    blocks = re.findall(r"```bash\n(.*?)\n```", (REPO / "README.md").read_text(), re.S)
    return [b.strip() for b in blocks[:2]]


def test_readme_opens_with_two_commands():
    text = (REPO / "README.md").read_text()
    first_block = text.index("```bash")
    assert text.count("```bash", 0, text.index("## ")) == 2, "both commands come before the first section"
    assert first_block < 1200
    run, test = readme_commands()
    assert "scripts/install.sh" in run and "tuneloop" in run
    assert "scripts/install.sh" in test and "pytest" in test


def test_ci_runs_readme_command_two_exactly():
    ci_lines = [line.strip() for line in (REPO / ".ci/run").read_text().splitlines()]
    assert readme_commands()[1] in ci_lines


def test_lint_is_clean():
    ruff = shutil.which("ruff") or str(Path(os.sys.executable).parent / "ruff")
    check = subprocess.run([ruff, "check", str(REPO)], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout
    fmt = subprocess.run([ruff, "format", "--check", str(REPO)], capture_output=True, text=True)
    assert fmt.returncode == 0, fmt.stdout


@pytest.mark.slow
def test_readme_command_one_on_a_fresh_copy(tmp_path: Path):
    """Copy the tracked files (as a fresh clone has them) and run command 1 there, new venv and all."""
    files = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard"], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout.split()
    if not files:
        pytest.skip("not a git checkout")
    for name in files:
        if (REPO / name).is_file():
            (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, tmp_path / name)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VIRTUAL_ENV", "PYTHONPATH"))}
    env["PATH"] = os.pathsep.join(p for p in env["PATH"].split(os.pathsep) if ".venv" not in p)
    result = subprocess.run(
        ["bash", "-c", readme_commands()[0]],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=3600,  # install + quickstart; a CPU without bf16 takes twice as long (speed is bench/'s job)
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    project = tmp_path / "tuneloop-quickstart"
    (run,) = [d for d in (project / "runs").iterdir() if (d / "loop.json").is_file()]
    assert (run / "final/adapter_model.safetensors").is_file() and (run / "eval/report.html").is_file()
    report = json.loads((run / "eval/metrics.json").read_text())
    # The promise of the quickstart: the tuned model is significantly better on the task metric, and
    # general ability did not significantly regress.
    verdicts = report["comparisons"][run.name]
    assert verdicts["exact_match"]["verdict"] == "better", verdicts["exact_match"]
    assert verdicts["json_valid"]["verdict"] in ("better", "no significant change")
    assert not any(f["regressed"] for f in report["forgetting"][run.name].values()), report["forgetting"]
    assert "Open " in result.stdout and "report.html" in result.stdout
