"""User probe files: the two documented formats and file:line errors."""

from __future__ import annotations

import pytest

from retain.errors import RetainError
from retain.evaluation.probes import load_probe_file


def write(tmp_path, text, name="p.jsonl"):
    p = tmp_path / name
    p.write_text(text, encoding="utf-8")
    return p


def test_valid_files(tmp_path):
    gen = load_probe_file(write(tmp_path, '{"question": "Capital of France?", "answers": ["Paris"]}\n\n'
                                          '{"id": "b", "question": "2+2?", "answers": ["4", "four"]}\n'))
    assert gen.kind == "chat" and [it["id"] for it in gen.items] == ["p-1", "b"]  # asked in chat by default
    mc = load_probe_file(write(tmp_path, '{"question": "Sky?", "choices": ["blue", "red"], "answer": 0}\n', "m.jsonl"))
    assert mc.kind == "mc" and mc.items[0]["answer"] == 0


@pytest.mark.parametrize("text, match", [
    ('{"question": "ok", "answers": ["a"]}\n{bad json\n', r"p\.jsonl:2: invalid JSON"),
    ('\n{"answers": ["a"]}\n', r"p\.jsonl:2: missing 'question'"),
    ('{"question": "q", "choices": ["a", "b"], "answer": 2}\n', r"p\.jsonl:1: 'answer' must be an integer index"),
    ('{"question": "q", "choices": ["a", "b"], "answer": true}\n', r"p\.jsonl:1: 'answer' must be"),
    ('{"question": "q", "choices": ["a"], "answer": 0}\n', r"p\.jsonl:1: 'choices' must be a list of at least 2"),
    ('{"question": "q", "answers": []}\n', r"p\.jsonl:1: 'answers' must be a non-empty list"),
    ('{"question": "q"}\n', r"p\.jsonl:1: need 'answers'"),
    ('{"question": "q", "answers": ["a"]}\n{"question": "r", "choices": ["a", "b"], "answer": 1}\n',
     r"p\.jsonl:2: mixes mc and gen"),
    ('[1, 2]\n', r"p\.jsonl:1: expected a JSON object"),
    ('\n\n', r"p\.jsonl: no probe items"),
])
def test_bad_files_name_file_and_line(tmp_path, text, match):
    with pytest.raises(RetainError, match=match):
        load_probe_file(write(tmp_path, text))


def test_missing_file(tmp_path):
    with pytest.raises(RetainError, match="probe file not found"):
        load_probe_file(tmp_path / "nope.jsonl")


def test_not_utf8_or_a_folder_is_one_line(tmp_path):
    p = tmp_path / "p.jsonl"
    p.write_bytes(b'{"question": "ok", "answers": ["a"]}\n{"question": "caf\xe9", "answers": ["a"]}\n')
    with pytest.raises(RetainError) as e:
        load_probe_file(p)
    assert str(e.value) == f"{p}:2: not valid UTF-8 (byte 0xe9); re-encode the file as UTF-8"
    with pytest.raises(RetainError, match="is a folder"):
        load_probe_file(tmp_path)
