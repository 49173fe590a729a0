"""Shared fixtures: a tiny random Llama, an in-process CLI runner, and a project folder."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from tuneloop.tiny import make_tiny_llama

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A ~0.1M-parameter random Llama folder (safetensors + ChatML tokenizer)."""
    return make_tiny_llama(tmp_path_factory.mktemp("tiny-llama"))


@dataclass
class Result:
    code: int
    out: str
    err: str


@pytest.fixture
def cli(capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch):
    """Run `tuneloop ARGS...` in-process through the real entry point (error handling included)."""
    from tuneloop import cli as cli_module

    def run(*args: str) -> Result:
        monkeypatch.setattr(sys, "argv", ["tuneloop", *map(str, args)])
        monkeypatch.setitem(cli_module._state, "debug", False)
        capsys.readouterr()
        try:
            cli_module.main()
            code = 0
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        out, err = capsys.readouterr()
        return Result(code, out, err)

    return run


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A minimal valid project folder; tests write variations of its tuneloop.yaml."""
    (tmp_path / "tuneloop.yaml").write_text("task:\n  objective: route tickets\n  type: classification\n")
    return tmp_path
