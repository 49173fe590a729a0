"""The Presidio backend of data.pii: names and places become [PERSON] and [LOCATION].

No statistical spaCy model can be installed here, so the pipeline is a real but rule-based one: a blank
English pipeline with an entity_ruler, saved to a folder the way a user's own pipeline would be.
"""

import concurrent.futures
import json
import sys
from collections import Counter
from pathlib import Path

import pytest
import yaml

pytest.importorskip("presidio_analyzer")
spacy = pytest.importorskip("spacy")

from tuneloop import config  # noqa: E402
from tuneloop.data.pii import PiiScanner, is_placeholder  # noqa: E402
from tuneloop.data.prepare import CHUNK, prepare  # noqa: E402
from tuneloop.errors import UserError  # noqa: E402

PATTERNS = [
    {"label": "PERSON", "pattern": "Jane Doe"},
    {"label": "PERSON", "pattern": "Ann"},
    {"label": "GPE", "pattern": "Paris"},
    {"label": "LOC", "pattern": "Lake Geneva"},
    {"label": "FAC", "pattern": "Baker Street"},
    {"label": "ORG", "pattern": "Acme"},
    # What a statistical model can do: take a placeholder's word for a name, or run a name into one.
    {"label": "PERSON", "pattern": "EMAIL"},
    {"label": "PERSON", "pattern": [{"ORTH": "Bob"}, {"ORTH": "["}, {"ORTH": "PHONE"}]},
]


def save_pipeline(folder: Path, patterns: list[dict]) -> str:
    nlp = spacy.blank("en")
    if patterns:
        nlp.add_pipe("entity_ruler").add_patterns(patterns)
    nlp.to_disk(folder)
    return str(folder)


@pytest.fixture(scope="module")
def ner_model(tmp_path_factory: pytest.TempPathFactory) -> str:
    return save_pipeline(tmp_path_factory.mktemp("spacy") / "ner", PATTERNS)


@pytest.fixture(scope="module")
def scanner(ner_model: str) -> PiiScanner:
    return PiiScanner(ner="presidio", ner_model=ner_model)


def test_names_and_places_become_placeholders(scanner: PiiScanner):
    text = "Jane Doe of Acme flew from Paris to Lake Geneva, then to Baker Street."
    redacted, counts = scanner.redact(text)
    assert redacted == "[PERSON] of Acme flew from [LOCATION] to [LOCATION], then to [LOCATION]."
    assert counts == {"PERSON": 1, "LOCATION": 3}
    assert is_placeholder("[PERSON]") and is_placeholder("[LOCATION]")


def test_batches_give_what_one_text_at_a_time_gives(scanner: PiiScanner):
    texts = ["Jane Doe lives near Lake Geneva.", "", "no names here", "Ann wrote to [EMAIL] from Paris."] * 20
    one_by_one = []
    for text in texts:
        counts: Counter[str] = Counter()
        one_by_one.append((scanner.ner.redact(text, counts), counts))
    assert scanner.ner.redact_many(texts, batch_size=7) == one_by_one
    assert one_by_one[0] == ("[PERSON] lives near [LOCATION].", {"PERSON": 1, "LOCATION": 1})


@pytest.mark.parametrize("text", ["", "   ", "the order from acme shipped on monday", "paris in lower case"])
def test_text_without_names_or_places_is_unchanged(scanner: PiiScanner, text: str):
    assert scanner.redact(text) == (text, {})


def test_detect_counts_the_same_as_redact(scanner: PiiScanner):
    text = "Ann met Jane Doe in Paris"
    assert scanner.detect(text) == scanner.redact(text)[1] == {"PERSON": 2, "LOCATION": 1}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("mail jane@example.com", ("mail [EMAIL]", {"EMAIL": 1})),  # the entity is inside [EMAIL]
        ("call Bob +1-202-555-0143", ("call Bob [PHONE]", {"PHONE": 1})),  # the entity reaches into [PHONE]
    ],
)
def test_an_entity_overlapping_a_placeholder_is_not_counted_again(scanner: PiiScanner, text: str, expected):
    assert scanner.redact(text) == expected
    assert scanner.redact(expected[0]) == (expected[0], {})


def test_a_pattern_type_and_a_name_in_one_text(scanner: PiiScanner):
    redacted, counts = scanner.redact("Jane Doe <jane.doe@example.com>, +1-202-555-0143, from Paris")
    assert redacted == "[PERSON] <[EMAIL]>, [PHONE], from [LOCATION]"
    assert counts == {"PERSON": 1, "EMAIL": 1, "PHONE": 1, "LOCATION": 1}


def test_ner_types_choose_what_is_replaced(ner_model: str):
    places = PiiScanner(["EMAIL"], ner="presidio", ner_model=ner_model, ner_types=["LOCATION"])
    assert places.redact("Jane Doe, Paris, +1-202-555-0143") == (
        "Jane Doe, [LOCATION], +1-202-555-0143",
        {"LOCATION": 1},
    )


def test_ner_off_leaves_names_alone():
    assert PiiScanner().redact("Jane Doe from Paris") == ("Jane Doe from Paris", {})


@pytest.mark.parametrize("kind", ["package", "folder"])
def test_a_missing_model_is_an_error_not_a_download(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kind: str):
    import spacy.cli

    def download(*args, **kwargs):
        raise AssertionError("tried to download a spaCy model")

    monkeypatch.setattr(spacy.cli, "download", download)
    model, message = {
        "package": ("en_core_web_zz", "en_core_web_zz is not an installed spaCy package"),
        "folder": (str(tmp_path / "no-such-pipeline"), "there is no folder"),
    }[kind]
    with pytest.raises(UserError, match=message) as info:
        PiiScanner(ner="presidio", ner_model=model)
    assert "python -m spacy download" in str(info.value) and "nlp.to_disk()" in str(info.value)


def test_a_pipeline_that_finds_no_names_is_refused(tmp_path: Path):
    blank = save_pipeline(tmp_path / "blank", [])
    with pytest.raises(UserError, match="labels no entity PERSON or PER or GPE or LOC or FAC"):
        PiiScanner(ner="presidio", ner_model=blank)
    only_orgs = save_pipeline(tmp_path / "orgs", [{"label": "ORG", "pattern": "Acme"}])
    with pytest.raises(UserError, match=r"its labels: ORG\)"):
        PiiScanner(ner="presidio", ner_model=only_orgs)


@pytest.mark.parametrize("module", ["presidio_analyzer", "spacy"])
def test_not_installed_says_how_to_install(monkeypatch: pytest.MonkeyPatch, ner_model: str, module: str):
    monkeypatch.setitem(sys.modules, module, None)  # makes `import module` raise ImportError
    with pytest.raises(UserError, match=rf"needs {module}: pip install 'tuneloop\[presidio\]'") as info:
        PiiScanner(ner="presidio", ner_model=ner_model)
    assert "python -m spacy download en_core_web_lg" in str(info.value)


def test_the_scanner_from_a_config_section(ner_model: str):
    pii = config.PiiConfig(ner="presidio", ner_model=ner_model, ner_types=["PERSON"], types=["EMAIL"])
    scanner = PiiScanner.from_config(pii)
    assert scanner.redact("Jane Doe <j@example.com> in Paris") == (
        "[PERSON] <[EMAIL]> in Paris",
        {"PERSON": 1, "EMAIL": 1},
    )


# --------------------------------------------------------------------------- through prepare()


def make_project(root: Path, tiny_llama: Path, rows: list[dict], pii: dict) -> Path:
    (root / "data").mkdir(parents=True, exist_ok=True)
    (root / "data" / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = {
        "task": {"objective": "answer", "type": "chat"},
        "model": {"name": str(tiny_llama)},
        "data": {"train": ["data/train.jsonl"], "pii": pii},
    }
    (root / "tuneloop.yaml").write_text(yaml.safe_dump(cfg))
    return root / "tuneloop.yaml"


def chat(i: int, named: bool) -> dict:
    asker = "Jane Doe from Paris asks" if named else f"Customer {i} asks"
    return {
        "messages": [
            {"role": "user", "content": f"{asker}: how do I configure feature {i} on plan {i % 7}?"},
            {"role": "assistant", "content": f"Open settings, choose feature {i}, and save. Plan {i % 7} has it."},
        ]
    }


def outputs(folder: Path) -> str:
    return "".join((folder / f"{split}.jsonl").read_text() for split in ("train", "val", "test"))


def test_prepare_redacts_names_in_forked_workers(
    tmp_path: Path, tiny_llama: Path, ner_model: str, monkeypatch: pytest.MonkeyPatch
):
    pools = []

    class CountedPool(concurrent.futures.ProcessPoolExecutor):
        def __init__(self, *args, **kwargs):
            pools.append(kwargs.get("mp_context"))
            super().__init__(*args, **kwargs)

    # prepare imports the executor when it starts its pool, so the count proves the worker path ran.
    monkeypatch.setattr(concurrent.futures, "ProcessPoolExecutor", CountedPool)
    rows = [chat(i, named=i % 50 == 0) for i in range(CHUNK + 300)]
    named = sum(1 for i in range(len(rows)) if i % 50 == 0)
    path = make_project(tmp_path, tiny_llama, rows, {"ner": "presidio", "ner_model": ner_model})
    result = prepare(config.load(path), tokenize=False, workers=2)
    assert len(pools) == 1 and pools[0].get_start_method() == "fork"
    out = tmp_path / "data" / "prepared"
    train = (out / "train.jsonl").read_text()
    assert "[PERSON] from [LOCATION] asks" in train
    assert "Jane Doe" not in outputs(out) and "Paris" not in outputs(out)
    report = json.loads((out / "report.json").read_text())
    assert report["pii"]["by_type"] == {"LOCATION": named, "PERSON": named} == result.report["pii"]["by_type"]
    assert report["pii"]["rows"] == named
    assert "| PERSON |" in (out / "report.md").read_text()


def test_prepare_detect_mode_counts_names_and_keeps_them(tmp_path: Path, tiny_llama: Path, ner_model: str):
    rows = [chat(i, named=i % 10 == 0) for i in range(40)]
    path = make_project(tmp_path, tiny_llama, rows, {"mode": "detect", "ner": "presidio", "ner_model": ner_model})
    report = prepare(config.load(path), tokenize=False, workers=1).report
    assert report["pii"]["by_type"] == {"LOCATION": 4, "PERSON": 4}
    text = outputs(tmp_path / "data" / "prepared")
    assert text.count("Jane Doe from Paris") == 4 and "[PERSON]" not in text
    assert any("NOT redacted" in w for w in report["warnings"])


def test_a_relative_model_folder_starts_from_the_config_folder(ner_model: str, tmp_path: Path):
    model = Path(ner_model)
    pii = config.PiiConfig(ner="presidio", ner_model=model.name, ner_types=["PERSON"])
    assert PiiScanner.from_config(pii, root=model.parent).redact("Jane Doe called")[0] == "[PERSON] called"
    with pytest.raises(UserError, match="ner_model"):
        PiiScanner.from_config(pii, root=tmp_path)  # not beside this config: not found, not downloaded
