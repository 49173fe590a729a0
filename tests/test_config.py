from pathlib import Path

import pytest
import yaml

from tuneloop import config
from tuneloop.errors import UserError


def write(folder: Path, text: str) -> Path:
    path = folder / "tuneloop.yaml"
    path.write_text(text)
    return path


def load_error(path: Path, overrides=()) -> str:
    with pytest.raises(UserError) as info:
        config.load(path, overrides)
    return str(info.value)


def test_minimal_config_fills_defaults(project: Path):
    cfg = config.load(project / "tuneloop.yaml")
    assert cfg.task.metrics == ["accuracy", "f1"]
    assert cfg.model.name == "smollm2-135m-instruct"
    assert cfg.model.trust_remote_code is False
    assert cfg.method.name == "lora"
    assert cfg.train.learning_rate == 2e-4
    assert (cfg.data.split.train, cfg.data.split.val, cfg.data.split.test) == (0.8, 0.1, 0.1)


@pytest.mark.parametrize(("method", "lr"), [("full", 2e-5), ("lora", 2e-4), ("qlora", 2e-4), ("prompt_tuning", 3e-2)])
def test_learning_rate_default_follows_method(project: Path, method: str, lr: float):
    # The fixture is a classification project; qlora and prompt tuning train generative tasks only.
    cfg = config.load(project / "tuneloop.yaml", [f"method.name={method}", "task.type=instruction"])
    assert cfg.train.learning_rate == lr


def test_explicit_learning_rate_wins(project: Path):
    cfg = config.load(project / "tuneloop.yaml", ["method.name=full", "train.learning_rate=1e-4"])
    assert cfg.train.learning_rate == 1e-4


def test_unknown_key_names_closest_key_and_line(tmp_path: Path):
    path = write(tmp_path, "task:\n  objective: x\n  type: chat\ntrain:\n  learnin_rate: 1e-4\n")
    message = load_error(path)
    assert f"{path}:5: unknown key 'train.learnin_rate'; did you mean 'train.learning_rate'?" in message


def test_unknown_section_names_closest_section(tmp_path: Path):
    path = write(tmp_path, "task: {objective: x, type: chat}\nmodle:\n  name: foo\n")
    assert "unknown key 'modle'; did you mean 'model'?" in load_error(path)


def test_all_errors_are_reported_together(tmp_path: Path):
    path = write(
        tmp_path,
        "task:\n  objective: x\n  type: chatt\n  metrics: [rougel]\n"
        "train:\n  batch_size: 0\n  epocs: 2\ndata:\n  split: {train: 0.5, val: 0.1, test: 0.1}\n",
    )
    message = load_error(path)
    assert "5 problems" in message
    assert f"{path}:3: task.type:" in message and "(did you mean 'chat'?)" in message
    assert "unknown metric 'rougel' (did you mean 'rougeL'?)" in message
    assert f"{path}:6: train.batch_size: Input should be greater than 0" in message
    assert "did you mean 'train.epochs'?" in message
    assert "train + val + test must be 1, got 0.7" in message
    lines = [line for line in message.splitlines()[1:]]
    numbers = [int(line.split(":")[1]) for line in lines]
    assert numbers == sorted(numbers), "problems are listed in file order"


def test_missing_required_field(tmp_path: Path):
    path = write(tmp_path, "task:\n  type: chat\n")
    assert "'task.objective' is required" in load_error(path)


def test_malformed_yaml_reports_line(tmp_path: Path):
    path = write(tmp_path, "task:\n  objective: x\n  type: chat\nmodel:\n  name: [unclosed\n  dtype: auto\n")
    message = load_error(path)
    assert message.startswith(f"{path}:")
    line = int(message.split(":")[1])
    assert 5 <= line <= 7
    assert "invalid YAML" in message


def test_yaml_that_is_not_a_mapping(tmp_path: Path):
    assert "must be a mapping" in load_error(write(tmp_path, "- a\n- b\n"))


def test_missing_file_says_how_to_create_one(tmp_path: Path):
    message = load_error(tmp_path / "nope.yaml")
    assert "not found" in message and "tuneloop init" in message


def test_overrides_are_typed(project: Path):
    cfg = config.load(
        project / "tuneloop.yaml",
        [
            "train.learning_rate=3e-5",
            "model.trust_remote_code=true",
            "task.metrics=[accuracy]",
            "data.train=a.jsonl",
        ],
    )
    assert cfg.train.learning_rate == 3e-5
    assert cfg.model.trust_remote_code is True
    assert cfg.task.metrics == ["accuracy"]
    assert cfg.data.train == ["a.jsonl"]


def test_bad_overrides_are_reported_with_their_flag(project: Path):
    message = load_error(project / "tuneloop.yaml", ["method.lora.rr=3", "noequals", "task.type.x=1"])
    assert "--set method.lora.rr=3: unknown key 'method.lora.rr'; did you mean 'method.lora.r'?" in message
    assert "--set noequals: expected KEY=VALUE" in message
    assert "--set task.type.x=1: task.type is a value, not a section" in message


def test_user_metric_accepted(project: Path):
    cfg = config.load(project / "tuneloop.yaml", ["task.metrics=[accuracy, mypkg.metrics:tone_score]"])
    assert cfg.task.metrics == ["accuracy", "mypkg.metrics:tone_score"]


def test_paths_resolve_against_config_folder(project: Path):
    cfg = config.load(project / "tuneloop.yaml")
    assert cfg.path("data/train.jsonl") == project.resolve() / "data/train.jsonl"
    assert cfg.path("/abs/x.jsonl") == Path("/abs/x.jsonl")


def test_resolved_config_round_trips(project: Path, tmp_path: Path):
    cfg = config.load(project / "tuneloop.yaml", ["train.epochs=2", "method.lora.target_modules=[q_proj, v_proj]"])
    out = cfg.save_resolved(tmp_path / "run")
    assert out.name == "config.resolved.yaml"
    again = config.load(out)
    assert again.model_dump() == cfg.model_dump()
    assert yaml.safe_load(out.read_text())["train"]["learning_rate"] == 2e-4


def test_pii_ner_keys(project: Path):
    pii = config.load(project / "tuneloop.yaml").data.pii
    assert (pii.ner, pii.ner_model, pii.ner_types) == ("off", "en_core_web_lg", ["PERSON", "LOCATION"])
    path = project / "tuneloop.yaml"
    path.write_text(path.read_text() + "data:\n  pii:\n    ner: off\n    ner_types: [PERSON]\n")
    pii = config.load(path).data.pii
    assert (pii.ner, pii.ner_types) == ("off", ["PERSON"])  # YAML's bare `off` is false; it means 'off'
    assert config.load(path, ["data.pii.ner=presidio"]).data.pii.ner == "presidio"
    message = load_error(path, ["data.pii.ner=spacy", "data.pii.ner_types=[NAME]"])
    assert "data.pii.ner: Input should be 'presidio' or 'off'" in message
    assert "data.pii.ner_types.0: Input should be 'PERSON' or 'LOCATION'" in message
    assert "at least 1" in load_error(path, ["data.pii.ner_types=[]"])


def test_metrics_the_project_cannot_compute_fail_at_load_all_at_once(tmp_path: Path):
    path = write(
        tmp_path,
        "task:\n  objective: x\n  type: chat\n  metrics: [rougeL, json_schema, accuracy, preference_accuracy]\n"
        "train:\n  eval_metrics: [json_schema]\n",
    )
    message = load_error(path)
    assert "4 problems" in message
    assert f"{path}:4: task.metrics: metric json_schema needs eval.json_schema" in message
    assert f"{path}:4: task.metrics: metric accuracy compares the label" in message and "data.labels" in message
    assert f"{path}:4: task.metrics: preference_accuracy needs preference pairs" in message
    assert f"{path}:6: train.eval_metrics: metric json_schema needs eval.json_schema" in message
    # With what they need, the same metrics load.
    fixed = ["eval.json_schema=schema.json", "data.labels=[billing, refund]", "task.metrics=[json_schema, accuracy]"]
    cfg = config.load(path, fixed)
    assert cfg.task.metrics == ["json_schema", "accuracy"] and cfg.train.eval_metrics == ["json_schema"]
    assert "metric accuracy" not in load_error(path, ["task.type=classification", "eval.json_schema=s.json"])


def test_a_test_file_takes_the_test_share_to_zero(tmp_path: Path):
    base = "task: {objective: x, type: chat}\ndata:\n  train: a.jsonl\n  test: t.jsonl\n"
    cfg = config.load(write(tmp_path, base + "  split: {train: 0.9, val: 0.1}\n"))
    assert (cfg.data.split.train, cfg.data.split.val, cfg.data.split.test) == (0.9, 0.1, 0.0)
    cfg = config.load(write(tmp_path, base))
    assert (cfg.data.split.train, cfg.data.split.val, cfg.data.split.test) == (0.9, 0.1, 0.0)
    cfg = config.load(write(tmp_path, base + "  split: {val: 0.2}\n"))
    assert (cfg.data.split.train, cfg.data.split.val, cfg.data.split.test) == (0.8, 0.2, 0.0)
    path = write(tmp_path, base + "  split:\n    train: 0.8\n    val: 0.1\n    test: 0.1\n")
    message = load_error(path)
    assert f"{path}:8: data.split.test: data.test gives your own test set" in message
    assert "set data.split.test to 0" in message
    # A config that went through a run (every default written out) loads the same again.
    assert config.derive(cfg, []).data.split == cfg.data.split


def test_phone_regions_are_checked_at_load(project: Path):
    cfg = config.load(project / "tuneloop.yaml", ["data.pii.phone_regions=[gb, de]"])
    assert cfg.data.pii.phone_regions == ["GB", "DE"]
    assert "GB" in config.load(project / "tuneloop.yaml").data.pii.phone_regions
    message = load_error(project / "tuneloop.yaml", ["data.pii.phone_regions=[GB, UK]"])
    assert "data.pii.phone_regions: unknown region UK" in message


def test_a_train_metric_that_is_not_measured_is_located(project: Path):
    generative = "task.type=instruction"  # the fixture is a classification project, which measures its own metrics
    message = load_error(project / "tuneloop.yaml", ["train.metric=rougel", "train.eval_metrics=[rougeL]", generative])
    assert "--set train.metric=rougel: train.metric: 'rougel' is not measured during training" in message
    assert "did you mean 'rougeL'?" in message
    assert config.load(project / "tuneloop.yaml", ["train.metric=rougeL", "train.eval_metrics=[rougeL]", generative])
