"""User data formats: auto-detection, conversion to one chat shape, and file:line errors."""

from __future__ import annotations

import json

import pytest

from retain.data.formats import detect_format, load_examples
from retain.data.types import TASK, UNKNOWN, WORLD
from retain.errors import RetainError

CHAT = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Capital of France?"},
        {"role": "assistant", "content": "Paris."}]


def _jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


RECORDS = {
    "messages": {"messages": CHAT},
    "sharegpt": {"system": "Be brief.", "conversations": [{"from": "human", "value": "Capital of France?"},
                                                          {"from": "gpt", "value": "Paris."}]},
    "alpaca": {"system": "Be brief.", "instruction": "Capital of France?", "input": "", "output": "Paris."},
    "prompt_completion": {"prompt": [{"role": "system", "content": "Be brief."},
                                     {"role": "user", "content": "Capital of France?"}], "completion": "Paris."},
}


@pytest.mark.parametrize("fmt", sorted(RECORDS))
def test_every_format_auto_detects_to_the_same_chat(tmp_path, fmt):
    path = _jsonl(tmp_path / f"{fmt}.jsonl", [RECORDS[fmt]] * 3)
    assert detect_format(RECORDS[fmt]) == fmt
    for given in ("auto", fmt):
        ex = load_examples(str(path), format=given, sample_type="task")
        assert len(ex) == 3
        assert ex[0] == {"messages": CHAT, "sample_type": TASK}


def test_sharegpt_json_list_and_alpaca_input_history(tmp_path):
    p = tmp_path / "data.json"
    p.write_text(json.dumps([RECORDS["sharegpt"]]), encoding="utf-8")
    assert load_examples(str(p))[0]["messages"] == CHAT
    rec = {"instruction": "Translate", "input": "chat", "output": "cat", "history": [["hi", "hello"]]}
    msgs = load_examples(str(_jsonl(tmp_path / "a.jsonl", [rec])))[0]["messages"]
    assert [m["role"] for m in msgs] == ["user", "assistant", "user", "assistant"]
    assert msgs[2]["content"] == "Translate\n\nchat"


def test_sample_type_argument_overrides_record_field(tmp_path):
    path = _jsonl(tmp_path / "d.jsonl", [{"messages": CHAT, "sample_type": "world"}, {"messages": CHAT}])
    assert [e["sample_type"] for e in load_examples(str(path))] == [WORLD, UNKNOWN]
    assert [e["sample_type"] for e in load_examples(str(path), sample_type="task")] == [TASK, TASK]


def test_limit_keeps_first_records(tmp_path):
    rows = [{"prompt": f"q{i}", "completion": f"a{i}"} for i in range(5)]
    ex = load_examples(str(_jsonl(tmp_path / "d.jsonl", rows)), limit=2)
    assert [e["messages"][1]["content"] for e in ex] == ["a0", "a1"]


@pytest.mark.parametrize(
    "lines, line_no, needle",
    [
        (['{"prompt": "a", "completion": "b"}', '{"prompt": "a", "completion": '], 2, "invalid JSON"),
        (['{"messages": []}'], 1, "empty conversation"),
        (['{"prompt": "a", "completion": "b"}', "", '{"prompt": "a"}'], 3, "lacks ['completion']"),
        (['{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "  "}]}'], 1, "empty"),
        (['{"messages": [{"role": "user", "content": "q"}]}'], 1, "no assistant turn"),
        (['{"messages": [{"role": "robot", "content": "q"}, {"role": "assistant", "content": "a"}]}'], 1, "robot"),
        (['{"conversations": [{"from": "alien", "value": "q"}]}'], 1, "alien"),
        (['{"body": "plain"}'], 1, "cannot tell the format"),
        (['{"messages": [{"role": "user", "content": 3}, {"role": "assistant", "content": "a"}]}'], 1, "string"),
        (['{"prompt": "a", "completion": "b", "sample_type": "wrld"}'], 1, "wrld"),
    ],
)
def test_malformed_records_name_file_and_line(tmp_path, lines, line_no, needle):
    path = tmp_path / "bad.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    with pytest.raises(RetainError) as e:
        load_examples(str(path))
    assert f"{path}:{line_no}" in str(e.value) and needle in str(e.value)


def test_missing_and_empty_files(tmp_path):
    with pytest.raises(RetainError, match="file not found"):
        load_examples(str(tmp_path / "nope.jsonl"))
    (tmp_path / "empty.jsonl").write_text("\n", encoding="utf-8")
    with pytest.raises(RetainError, match="empty"):
        load_examples(str(tmp_path / "empty.jsonl"))
    with pytest.raises(RetainError, match="unknown format"):
        load_examples(str(_jsonl(tmp_path / "d.jsonl", [RECORDS["alpaca"]])), format="csv")  # type: ignore[arg-type]


def test_builtin_names_resolve_to_the_train_split():
    ex = load_examples("builtin:medmcqa", sample_type="task", limit=3)
    assert len(ex) == 3 and all(e["sample_type"] == TASK for e in ex)
    assert [m["role"] for m in ex[0]["messages"]][-1] == "assistant"
    with pytest.raises(RetainError):
        load_examples("builtin:no_such_domain")


def test_plain_text_records_for_continued_pretraining(tmp_path):
    """{"text": ...} (TG-PT's pt.jsonl): auto-detected, sample types kept, empty text refused by line."""
    from retain.data.formats import load_examples

    p = tmp_path / "pt.jsonl"
    p.write_text('{"text": "What is a star?\\nA ball of plasma.", "sample_type": "world"}\n{"text": "Second."}\n')
    ex = load_examples(str(p))
    assert ex == [{"text": "What is a star?\nA ball of plasma.", "sample_type": 1}, {"text": "Second.", "sample_type": -1}]
    assert load_examples(str(p), sample_type="world")[1]["sample_type"] == 1
    p.write_text('{"text": "ok"}\n{"text": "  "}\n')
    with pytest.raises(RetainError, match=r"pt.jsonl:2: 'text' is empty"):
        load_examples(str(p))
    p.write_text('{"text": "ok"}\n{"messages": []}\n')
    with pytest.raises(RetainError, match=r"pt.jsonl:2: .*'text'"):
        load_examples(str(p))


@pytest.mark.parametrize("suffix", [".jsonl", ".json"])
def test_an_oversized_record_is_skipped_before_it_is_parsed(tmp_path, caplog, monkeypatch, suffix):
    """A 50 MB single-line record took 103 s and 4.4 GB in the tokenizer before it was dropped."""
    import json
    import logging

    from retain.data import formats

    monkeypatch.setattr(formats, "MAX_RECORD_CHARS", 1000)  # the same rule at a test's size
    rows = [{"prompt": "q1", "completion": "a1"}, {"prompt": "q2", "completion": "x" * 5000},
            {"prompt": "q3", "completion": "a3"}]
    path = tmp_path / f"d{suffix}"
    path.write_text("\n".join(map(json.dumps, rows)) + "\n" if suffix == ".jsonl" else json.dumps(rows), encoding="utf-8")
    parsed = []
    real = json.loads
    monkeypatch.setattr(json, "loads", lambda s, *a, **k: parsed.append(len(s)) or real(s, *a, **k))
    with caplog.at_level(logging.WARNING, logger="retain.data.formats"):
        out = formats.load_examples(str(path))
    assert [ex["messages"][0]["content"] for ex in out] == ["q1", "q3"]
    where = f"{path}:2" if suffix == ".jsonl" else f"{path}: item 1"
    # the line with its newline; for a .json list the characters of the record's keys and strings
    size = len(json.dumps(rows[1])) + 1 if suffix == ".jsonl" else sum(len(k) + len(v) for k, v in rows[1].items())
    assert [r.getMessage() for r in caplog.records] == [
        f"{where}: a record of {size:,} characters, over the limit of 1,000 "
        "(retain.data.formats.MAX_RECORD_CHARS); skipped"]
    if suffix == ".jsonl":
        assert max(parsed) < 1000  # the long line never reached the JSON parser
