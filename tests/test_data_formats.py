"""Readers, format detection and validation: every bad record is reported at its file:line."""

import json
from pathlib import Path

import pytest

from tuneloop.data.formats import RowError, detect_format, read_rows, to_example
from tuneloop.errors import UserError

ROUND_TRIP = {
    "prompt_completion": (
        {"prompt": "Reset password?", "completion": "Settings → Security."},
        [{"role": "user", "content": "Reset password?"}, {"role": "assistant", "content": "Settings → Security."}],
    ),
    "messages": (
        {
            "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": "Hi"},
                {"role": "assistant", "content": "Hello", "weight": 0},
                {"role": "user", "content": "Bye"},
                {"role": "assistant", "content": "Goodbye"},
            ]
        },
        None,
    ),
    "alpaca": (
        {"instruction": "Translate", "input": "Thank you", "output": "Merci"},
        [{"role": "user", "content": "Translate\n\nThank you"}, {"role": "assistant", "content": "Merci"}],
    ),
    "sharegpt": (
        {"conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello"}]},
        [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}],
    ),
}


@pytest.mark.parametrize("fmt", list(ROUND_TRIP))
def test_chat_formats_become_messages(fmt):
    record, expected = ROUND_TRIP[fmt]
    example = to_example(record, fmt, "f:1")
    assert example.kind == "chat"
    if expected is None:
        expected = [dict(m, weight=float(m["weight"])) if "weight" in m else m for m in record["messages"]]
    assert example.messages == expected
    assert example.to_json()["messages"] == expected


def test_other_formats():
    assert to_example({"text": "plain"}, "text", "f:1").text == "plain"
    cls = to_example({"text": "charged twice", "label": 3}, "classification", "f:1")
    assert (cls.text, cls.label) == ("charged twice", "3")
    pref = to_example({"prompt": "q", "chosen": "good", "rejected": "bad"}, "preference", "f:1")
    assert (pref.messages[0]["content"], pref.chosen, pref.rejected) == ("q", "good", "bad")
    ranked = to_example({"prompt": "q", "responses": ["a", "b", "c"], "ranking": [2, 0, 1]}, "ranked", "f:1")
    assert ranked.responses == ["a", "b", "c"] and ranked.ranking == [2, 0, 1]


@pytest.mark.parametrize(
    ("record", "fmt", "reason"),
    [
        ({"msgs": []}, "messages", "row has keys {msgs}, expected messages"),
        ({"prompt": "", "completion": "x"}, "prompt_completion", "field 'prompt' is empty"),
        ({"prompt": "q", "completion": 5}, "prompt_completion", "field 'completion' is a int, expected a string"),
        ({"messages": [{"role": "user", "content": "hi"}]}, "messages", "no assistant turn"),
        (
            {"messages": [{"role": "assistant", "content": "a"}, {"role": "user", "content": "b"}]},
            "messages",
            "message 1 is from assistant, expected user",
        ),
        (
            {"messages": [{"role": "bot", "content": "a"}]},
            "messages",
            "messages[1] has role 'bot'",
        ),
        (
            {"messages": [{"role": "user", "content": ["x"]}, {"role": "assistant", "content": "a"}]},
            "messages",
            "messages[1] (user) content is a list, expected a string",
        ),
        (
            {
                "messages": [
                    {"role": "user", "content": "q"},
                    {"role": "assistant", "content": "a"},
                    {"role": "user", "content": "q2"},
                ]
            },
            "messages",
            "the last message is from the user",
        ),
        ({"text": "x", "label": "refunds"}, "classification", "unknown label 'refunds'"),
        (
            {"prompt": "q", "responses": ["a", "b"], "ranking": [0, 0]},
            "ranked",
            "field 'ranking' lists response 0 more than once",
        ),
    ],
)
def test_bad_records_have_reasons(record, fmt, reason):
    with pytest.raises(RowError, match=None) as info:
        to_example(record, fmt, "f:1", labels=frozenset({"billing", "technical"}))
    assert reason in str(info.value)


def test_jsonl_reports_line_numbers_and_keeps_raw(tmp_path: Path):
    path = tmp_path / "d.jsonl"
    path.write_bytes(b'{"text": "ok"}\n\n{"text": broken}\n{"text": "caf\xe9"}\n{"text": "fine"}\n')
    rows = list(read_rows(path, "d.jsonl"))
    assert [r.line for r in rows] == [1, 3, 4, 5]
    assert rows[1].error.startswith("invalid JSON") and rows[1].raw == '{"text": broken}'
    assert rows[2].error == "invalid UTF-8 at byte 13" and isinstance(rows[2].raw, bytes)


def test_json_array_line_numbers(tmp_path: Path):
    path = tmp_path / "d.json"
    path.write_text('[\n  {"text": "a"},\n  {\n    "text": "b"\n  },\n  {"text": "c"}\n]\n')
    rows = list(read_rows(path, "d.json"))
    assert [(r.line, r.value["text"]) for r in rows] == [(2, "a"), (3, "b"), (6, "c")]


def test_csv_multiline_cells_and_json_columns(tmp_path: Path):
    path = tmp_path / "d.csv"
    messages = json.dumps([{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]).replace('"', '""')
    path.write_text('text,label\n"two\nlines",billing\nshort\nthird,account\n"x",y\n', encoding="utf-8")
    rows = list(read_rows(path, "d.csv"))
    assert [r.line for r in rows] == [2, 4, 5, 6]
    assert rows[0].value == {"text": "two\nlines", "label": "billing"}
    assert "cells" in rows[1].error
    chat = tmp_path / "c.csv"
    chat.write_text(f'messages\n"{messages}"\n', encoding="utf-8")
    row = next(read_rows(chat, "c.csv"))
    assert to_example(row.value, "messages", "c:2").messages[1]["content"] == "a"


def test_parquet(tmp_path: Path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "d.parquet"
    pq.write_table(pa.table({"prompt": ["a", "b"], "completion": ["c", "d"]}), path)
    rows = list(read_rows(path, "d.parquet"))
    assert [(r.line, r.value["completion"]) for r in rows] == [(1, "c"), (2, "d")]


def test_detection_needs_a_clear_majority(tmp_path: Path):
    path = tmp_path / "mixed.jsonl"
    lines = [{"text": "a"}] * 3 + [{"prompt": "p", "completion": "c"}] * 3 + [{"foo": 1}] * 2
    path.write_text("".join(json.dumps(x) + "\n" for x in lines))
    with pytest.raises(UserError) as info:
        detect_format(list(read_rows(path, "mixed.jsonl")), "mixed.jsonl")
    message = str(info.value)
    assert "no format holds a clear majority" in message
    assert "3 text" in message and "3 prompt_completion" in message and "2 other" in message
