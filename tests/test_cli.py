import json
from pathlib import Path

import click
import pytest
import typer.main
import yaml

from tuneloop import config
from tuneloop.cli import app
from tuneloop.cli.init import OBJECTIVES


def all_commands():
    root = typer.main.get_command(app)
    stack = [((), root)]
    while stack:
        path, cmd = stack.pop()
        yield path, cmd
        if isinstance(cmd, click.Group):
            stack += [((*path, name), sub) for name, sub in cmd.commands.items()]


def test_every_command_and_option_is_documented(cli):
    for path, cmd in all_commands():
        result = cli(*path, "--help")
        assert result.code == 0, path
        assert cmd.help or cmd.short_help, f"{' '.join(path)} has no help"
        for param in cmd.params:
            if isinstance(param, click.Option) and param.name != "help":
                assert param.help, f"option {param.name} of `{' '.join(path)}` has no help"


def test_loop_commands_present(cli):
    out = cli("--help").out
    for name in ("init", "config", "models", "generate"):
        assert name in out


@pytest.mark.parametrize("task", list(OBJECTIVES))
def test_init_writes_a_working_project(cli, tmp_path: Path, task: str):
    target = tmp_path / "demo"
    result = cli("init", target, "--task", task)
    assert result.code == 0, result.err
    assert (target / "data/sample.jsonl").read_text().count("\n") >= 10
    assert "tuneloop" in (target / "README.md").read_text()
    shown = cli("config", "show", "--config", target / "tuneloop.yaml")
    assert shown.code == 0, shown.err
    resolved = yaml.safe_load(shown.out)
    assert resolved["task"]["type"] == task
    assert resolved["task"]["metrics"] == config.DEFAULT_METRICS[task]
    for line in (target / "data/sample.jsonl").read_text().splitlines():
        json.loads(line)


def test_init_starts_a_classifier_from_the_embedded_encoder(cli, tmp_path: Path):
    """--task classification: MiniLM (not SmolLM2) with a classification strategy; --model still wins."""
    from tuneloop.models import DEFAULT_ENCODER, DEFAULT_MODEL

    for target, extra, model in ((tmp_path / "a", [], DEFAULT_ENCODER), (tmp_path / "b", ["--model", "x"], "x")):
        assert cli("init", target, "--task", "classification", *extra).code == 0
        resolved = yaml.safe_load(cli("config", "show", "--config", target / "tuneloop.yaml").out)
        assert resolved["model"]["name"] == model
        assert resolved["method"]["name"] == "full"
        assert resolved["train"]["learning_rate"] == config.DEFAULT_LEARNING_RATE["full"]
    assert cli("init", tmp_path / "c").code == 0  # a generative task keeps SmolLM2 and LoRA
    resolved = yaml.safe_load(cli("config", "show", "--config", tmp_path / "c" / "tuneloop.yaml").out)
    assert (resolved["model"]["name"], resolved["method"]["name"]) == (DEFAULT_MODEL, "lora")


def test_init_refuses_to_clobber_but_reruns_cleanly(cli, tmp_path: Path):
    target = tmp_path / "p"
    assert cli("init", target).code == 0
    assert cli("init", target).code == 0, "re-running with identical output is fine"
    (target / "tuneloop.yaml").write_text("task: {objective: mine, type: qa}\n")
    clash = cli("init", target)
    assert clash.code == 1 and "--force" in clash.err
    assert (target / "tuneloop.yaml").read_text().startswith("task: {objective: mine")
    assert cli("init", target, "--force").code == 0
    assert "type: chat" in (target / "tuneloop.yaml").read_text()


def test_init_unknown_task_type(cli, tmp_path: Path):
    result = cli("init", tmp_path / "x", "--task", "translation")
    assert result.code == 1 and "unknown task type 'translation'" in result.err


def test_config_show_applies_overrides(cli, project: Path):
    result = cli("config", "show", "-c", project / "tuneloop.yaml", "--set", "train.epochs=1", "-s", "method.name=full")
    resolved = yaml.safe_load(result.out)
    assert resolved["train"]["epochs"] == 1
    assert resolved["train"]["learning_rate"] == 2e-5


def test_user_errors_have_no_traceback(cli, tmp_path: Path):
    (tmp_path / "tuneloop.yaml").write_text("task: {objective: x, type: chat}\nmodle: {}\n")
    result = cli("config", "show", "-c", tmp_path / "tuneloop.yaml")
    assert result.code == 1
    assert "did you mean 'model'?" in result.err
    assert "Traceback" not in result.err + result.out


def test_debug_shows_the_traceback(tmp_path: Path):
    import subprocess
    import sys

    (tmp_path / "tuneloop.yaml").write_text("task: {objective: x, type: chat}\nmodle: {}\n")
    cmd = [
        sys.executable,
        "-m",
        "tuneloop",
        "--debug",
        "config",
        "show",
        "-c",
        str(tmp_path / "tuneloop.yaml"),
    ]
    result = subprocess.run(cmd, capture_output=True, text=True)
    assert result.returncode != 0
    assert "Traceback" in result.stderr and "UserError" in result.stderr


def test_generate_with_a_local_model(cli, tiny_llama: Path):
    result = cli("generate", "--model", tiny_llama, "--max-new-tokens", "4", "hello")
    assert result.code == 0, result.err
    # a random model will not stop in 4 tokens, and that must not pass silently
    assert "hit --max-new-tokens 4" in result.err


def test_generate_uses_the_config_model(cli, tmp_path: Path, tiny_llama: Path):
    (tmp_path / "tuneloop.yaml").write_text(f"task: {{objective: x, type: chat}}\nmodel: {{name: '{tiny_llama}'}}\n")
    result = cli("generate", "-c", tmp_path / "tuneloop.yaml", "--max-new-tokens", "2", "hi")
    assert result.code == 0, result.err
    assert f"loading {tiny_llama}" in result.err


def test_generate_missing_model(cli, tmp_path: Path):
    result = cli("generate", "--model", tmp_path / "nope", "hi")
    assert result.code == 1 and "is not an embedded model" in result.err


def test_models_describes_a_folder(cli, tiny_llama: Path):
    table = cli("models", tiny_llama)
    assert table.code == 0, table.err
    assert "LlamaForCausalLM" in table.out and "apache-2.0" in table.out
    rows = json.loads(cli("models", tiny_llama, "--json").out)
    assert rows[0]["architecture"] == "LlamaForCausalLM" and rows[0]["parameters"] > 50_000


def test_models_lists_embedded(cli):
    result = cli("models", "--json")
    names = {row["name"] for row in json.loads(result.out)}
    assert {"smollm2-135m-instruct", "minilm-l6"} <= names
