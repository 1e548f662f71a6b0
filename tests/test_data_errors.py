"""Data files a user might hand over by mistake: each gives one DataError line naming the file and line."""
import json

import pytest

from pocl_utils.data import DataError, load_instructions

ROW = '{"instruction": "a", "output": "b"}\n'


def _load(path, text: str) -> str:
    path.write_text(text, encoding="utf-8")
    with pytest.raises(DataError) as info:
        load_instructions(path)
    message = str(info.value)
    assert "\n" not in message and str(path) in message
    return message


def test_deeply_nested_line_names_file_and_line(tmp_path):
    message = _load(tmp_path / "deep.jsonl", ROW + "[" * 100_000 + "]" * 100_000 + "\n")
    assert message == f"{tmp_path / 'deep.jsonl'}, line 2: JSON nested too deeply to read (a row is one flat JSON object)"


@pytest.mark.parametrize("name, text", [
    ("pretty.json", json.dumps([{"instruction": "a", "output": "b"}], indent=2)),
    ("pretty.jsonl", json.dumps({"instruction": "a", "output": "b"}, indent=2)),
])
def test_pretty_printed_json_hints_that_json_lines_is_expected(tmp_path, name, text):
    message = _load(tmp_path / name, text)
    assert message.startswith(f"{tmp_path / name}, line 1: malformed JSON")
    assert "JSON Lines is expected (one JSON object per line)" in message and "pretty-printed" in message


def test_a_broken_later_line_gets_no_document_hint(tmp_path):
    message = _load(tmp_path / "broken.jsonl", ROW + '{"instruction": \n')
    assert ", line 2: malformed JSON" in message and "JSON Lines is expected" not in message


@pytest.mark.parametrize("row, field", [
    ('{"instruction": "a", "output": "b\\ud800c"}', "output"),
    ('{"instruction": "a", "output": ["ok", "x\\udc00"]}', "output[1]"),
    ('{"instruction": "a\\ud800", "output": "b"}', "instruction"),
])
def test_a_lone_surrogate_is_refused_naming_the_field(tmp_path, row, field):
    message = _load(tmp_path / "sur.jsonl", ROW.replace('"a"', '"z"') + row + "\n")
    assert f", line 2, field '{field}': lone surrogate" in message


def test_a_surrogate_pair_is_fine(tmp_path):
    (tmp_path / "ok.jsonl").write_text('{"instruction": "a", "output": "\\ud83d\\ude00"}\n', encoding="utf-8")
    assert load_instructions(tmp_path / "ok.jsonl")[0]["output"] == "\U0001F600"
