"""A base model (its tokenizer has no chat template) through prepare, train, eval and generate.

`model.chat_template` gives it one, applied wherever the project's tokenizer loads and saved with
the run; without one, prompt/completion rows train as plain `prompt + completion + EOS`. And
`tuneloop train` refuses rows that supervised fine-tuning must not train on.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from tests.test_chat_templates import base_tokenizer
from tests.train_helpers import chat_rows, make_train_project
from tuneloop import config
from tuneloop.data.chat_templates import NAMED, project_tokenizer
from tuneloop.data.formats import Example
from tuneloop.data.render import Renderer
from tuneloop.errors import UserError
from tuneloop.tiny import make_tiny_llama
from tuneloop.train import sft

FAST = {"max_steps": 2, "eval_every": 100, "save_every": 100}


@pytest.fixture(scope="module")
def gemma_base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random Llama carrying a Gemma-style base tokenizer: <bos>/<eos>, <start_of_turn>, no template."""
    return make_tiny_llama(tmp_path_factory.mktemp("gemma-base"), tokenizer=base_tokenizer("gemma"))


def prompt_completion_rows(n: int) -> list[dict]:
    return [
        {"prompt": f"Ticket {i}: {r['messages'][0]['content']}\nAnswer:", "completion": r["messages"][1]["content"]}
        for i, r in enumerate(chat_rows(n))
    ]


def test_model_chat_template_is_applied_everywhere_and_saved_with_the_run(tmp_path: Path, gemma_base: Path):
    from tuneloop import runs
    from tuneloop.generate import stop_token_ids

    path = make_train_project(tmp_path, gemma_base, rows=prompt_completion_rows(40), **FAST)
    (tmp_path / "data/train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in chat_rows(80)))
    doc = path.read_text().replace(f"  name: {gemma_base}\n", f"  name: {gemma_base}\n  chat_template: gemma\n")
    path.write_text(doc)
    from tuneloop.data.prepare import prepare

    cfg = config.load(path)
    prepare(cfg, workers=0)
    manifest = json.loads((tmp_path / "data/prepared/manifest.json").read_text())
    gemma = NAMED["gemma"].jinja
    assert manifest["chat_template_sha256"] == hashlib.sha256(gemma.encode()).hexdigest()
    assert manifest["splits"]["train"]["rows"] > 0

    result = sft.train(cfg)
    final = result.run_dir / "final"
    model, tokenizer = runs.load_final(cfg, result.run_dir)
    assert tokenizer.chat_template == gemma  # eval and serve of the run render as training did
    example = Example.from_json(json.loads((tmp_path / "data/prepared/val.jsonl").read_text().splitlines()[0]))
    trained = Renderer(project_tokenizer(cfg)).render(example)
    prompt = Renderer(tokenizer).prompt_ids(example.messages[:-1])
    assert trained.input_ids[: len(prompt)] == prompt and trained.weights[len(prompt)] > 0
    assert tokenizer.convert_tokens_to_ids("<end_of_turn>") in stop_token_ids(model, tokenizer)
    assert json.loads((result.run_dir / "data-manifest.json").read_text())["chat_template_setting"] == "gemma"
    assert (final / "chat_template.jinja").read_text() == gemma


def test_the_template_is_part_of_the_prepare_key(tmp_path: Path, gemma_base: Path):
    from tuneloop.data.prepare import settings_sha256

    path = make_train_project(tmp_path, gemma_base, rows=prompt_completion_rows(40), **FAST)
    (tmp_path / "mine.jinja").write_text(NAMED["gemma"].jinja)
    none, gemma, mistral, mine = (
        settings_sha256(config.load(path, overrides))
        for overrides in (
            [],
            ["model.chat_template=gemma"],
            ["model.chat_template=mistral"],
            ["model.chat_template=mine.jinja"],
        )
    )
    assert len({none, gemma, mistral}) == 3
    assert mine == gemma  # the key is the template's text: a file holding the same text is the same template
    before = settings_sha256(config.load(path, ["model.chat_template=mine.jinja"]))
    (tmp_path / "mine.jinja").write_text(NAMED["gemma"].jinja + "{# edited #}")
    assert settings_sha256(config.load(path, ["model.chat_template=mine.jinja"])) != before


def test_prompt_completion_trains_as_plain_text_on_a_model_without_a_template(tmp_path: Path, gemma_base: Path):
    from tuneloop.evaluate.runner import test_cases

    path = make_train_project(tmp_path, gemma_base, rows=prompt_completion_rows(60), **FAST)
    cfg = config.load(path)
    manifest = json.loads((tmp_path / "data/prepared/manifest.json").read_text())
    assert manifest["chat_template_sha256"] is None and manifest["rejects"]["rows"] == 0
    result = sft.train(cfg)
    assert result.status == "completed" and result.summary["examples"]["train"] > 0

    tokenizer = project_tokenizer(cfg)
    examples = [Example.from_json(json.loads(line)) for line in (tmp_path / "data/prepared/test.jsonl").open()]
    renderer = Renderer(tokenizer)
    for case in test_cases(examples):  # what eval sends is an exact prefix of what training trained
        trained = renderer.render(case.example)
        prompt = renderer.prompt_ids(case.conversation)
        assert trained.input_ids[: len(prompt)] == prompt
        assert trained.input_ids[-1] == tokenizer.eos_token_id and trained.weights[-1] == 1.0
        assert set(trained.weights[len(prompt) :]) == {1.0} and set(trained.weights[: len(prompt)]) == {0.0}


def test_training_refuses_data_prepared_without_the_template_it_now_has(tmp_path: Path, gemma_base: Path):
    path = make_train_project(tmp_path, gemma_base, rows=prompt_completion_rows(40), **FAST)
    with pytest.raises(UserError, match="measured with no chat template, and this model has one now"):
        sft.train(config.load(path, ["model.chat_template=gemma"]))


def test_train_refuses_preference_rows_naming_the_method(tmp_path: Path, tiny_llama: Path):
    rows = [
        {"prompt": f"ticket {i}: {r['messages'][0]['content']}", "chosen": "yes", "rejected": "a much longer no"}
        for i, r in enumerate(chat_rows(40))
    ]
    path = make_train_project(tmp_path, tiny_llama, rows=rows, **FAST)
    manifest = json.loads((tmp_path / "data/prepared/manifest.json").read_text())
    assert manifest["splits"]["train"]["rows"] > 0  # prepare measures them (longest answer) and keeps them
    with pytest.raises(
        UserError, match=r"preference examples.*preference tuning: task.type preference with method.name dpo, ipo"
    ):
        sft.train(config.load(path))
