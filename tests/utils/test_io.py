"""retain.utils.io: readers name file:line for bad bytes and folders; a full disk is one line, nothing torn."""

from __future__ import annotations

import json

import pytest

from retain.errors import RetainError
from retain.utils.io import append_text, iter_jsonl, iter_jsonl_lines, read_json, read_text


def _latin1_line5(path):
    rows = [json.dumps({"prompt": f"q{i}", "completion": "a"}) for i in range(4)]
    path.write_bytes(("\n".join(rows) + "\n").encode() + b'{"prompt": "caf\xe9 \xff", "completion": "a"}\n')
    return path


def test_invalid_utf8_names_file_line_and_byte(tmp_path):
    path = _latin1_line5(tmp_path / "data.jsonl")
    with pytest.raises(RetainError) as e:
        list(iter_jsonl(path))
    assert str(e.value) == f"{path}:5: not valid UTF-8 (byte 0xe9); re-encode the file as UTF-8"
    (tmp_path / "x.json").write_bytes(b'{\n "a": "\xff"}')
    with pytest.raises(RetainError, match=r"x.json:2: not valid UTF-8 \(byte 0xff\)"):
        read_json(tmp_path / "x.json")


def test_a_folder_where_a_file_is_expected(tmp_path):
    with pytest.raises(RetainError, match="is a folder; give the path of a dataset"):
        read_text(tmp_path, "dataset")
    with pytest.raises(RetainError, match="is a folder"):
        list(iter_jsonl(tmp_path))


def test_line_numbers_count_blank_lines_and_keep_unicode_separators(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text('{"a": 1}\n\n{"a": "x\u2028y\x85z"}\r\n', encoding="utf-8")
    assert [(i, r["a"]) for i, r in iter_jsonl_lines(path)] == [(1, 1), (3, "x\u2028y\x85z")]


def test_a_torn_multibyte_tail_is_skipped_only_when_allowed(tmp_path):
    path = tmp_path / "j.jsonl"
    path.write_bytes('{"a": 1}\n{"a": "é'.encode()[:-1])  # a kill cut the 2-byte é in half
    assert [r["a"] for r in iter_jsonl(path, allow_truncated_tail=True)] == [1]
    with pytest.raises(RetainError, match="j.jsonl:2: not valid UTF-8"):
        list(iter_jsonl(path))


def test_append_text_is_all_or_nothing(tmp_path):
    path = tmp_path / "j.jsonl"
    append_text(path, '{"a": 1}\n')
    append_text(path, '{"a": 2}\n{"a": 3}\n')
    assert [r["a"] for r in iter_jsonl(path)] == [1, 2, 3]


def test_full_disk_append_cuts_back_and_names_the_path(small_disk):
    from retain.utils.io import write_text_atomic

    small_disk = small_disk.make("64k")
    path = small_disk / "j.jsonl"
    append_text(path, '{"a": 1}\n')
    with pytest.raises(RetainError) as e:
        append_text(path, json.dumps({"a": "x" * 200_000}) + "\n")
    assert str(e.value) == f"{path}: no space left on device; free space and re-run the same command"
    assert path.read_text() == '{"a": 1}\n'  # the journal is intact: no partial line
    with pytest.raises(RetainError, match="out.txt: no space left on device"):
        write_text_atomic(small_disk / "out.txt", "y" * 200_000)
    assert sorted(p.name for p in small_disk.iterdir()) == ["j.jsonl"]  # no temp file left


def test_folder_lock_admits_one_process_and_leaves_no_empty_folder(tmp_path):
    from retain.utils.io import FolderLock

    run = tmp_path / "runs" / "a"
    with FolderLock(run, "retain train"):
        assert (run / ".lock").exists()
        with pytest.raises(RetainError, match=r"runs/a: another `retain train` is working on this folder"):
            with FolderLock(run, "retain train"):
                pass
        (run / "train_log.jsonl").write_text("", encoding="utf-8")
    assert (run / "train_log.jsonl").exists()  # what a run wrote stays
    with FolderLock(tmp_path / "b", "retain decompress"):
        pass
    assert not (tmp_path / "b").exists()  # created by the lock, nothing written: removed


def test_a_byte_order_mark_at_the_start_is_accepted(tmp_path):
    """Windows editors save UTF-8 with a BOM; JSON readers used to call the first line invalid JSON."""
    from retain.data.formats import load_examples
    from retain.options import read_config_file
    from retain.training.config import Recipe

    bom = b"\xef\xbb\xbf"
    (tmp_path / "d.jsonl").write_bytes(bom + b'{"prompt": "q", "completion": "a"}\n')
    (tmp_path / "d.json").write_bytes(bom + b'[{"prompt": "q", "completion": "a"}]')
    (tmp_path / "r.yaml").write_bytes(bom + b"method: full\ndatasets: [{path: d.jsonl}]\n")
    assert [r for _, r in iter_jsonl_lines(tmp_path / "d.jsonl")] == [{"prompt": "q", "completion": "a"}]
    assert load_examples(str(tmp_path / "d.json")) == load_examples(str(tmp_path / "d.jsonl"))
    assert read_json(tmp_path / "d.json") == [{"prompt": "q", "completion": "a"}]
    assert read_config_file(tmp_path / "r.yaml", Recipe)["method"] == "full"
    assert read_text(tmp_path / "d.jsonl").startswith("{")
