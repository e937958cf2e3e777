"""Image records in the one loader: LLaVA JSON, chat messages with image parts, text records mixed in,
and every bad image input as one ``file:line`` error before any model loads."""

from __future__ import annotations

import json

import pytest

from retain.data.formats import load_examples
from retain.errors import RetainError


def _jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_llava_json_list_with_image_folder(tmp_path, image_dir):
    data = tmp_path / "llava.json"
    data.write_text(json.dumps([
        {"id": "a", "image": "red.png", "conversations": [
            {"from": "human", "value": "<image>\nWhat color?"}, {"from": "gpt", "value": "red"}]},
        {"id": "b", "conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello"}]},
    ]))
    out = load_examples(str(data), image_folder=str(image_dir))
    assert out[0]["images"] == [str((image_dir / "red.png").resolve())]
    assert out[0]["messages"][0] == {"role": "user", "content": "<image>\nWhat color?"}
    assert "images" not in out[1]  # a text-only (TG) record mixes in unchanged


def test_messages_with_image_parts_paths_and_top_level_images(tmp_path, image_dir):
    data = _jsonl(tmp_path / "chat.jsonl", [
        {"messages": [{"role": "user", "content": [{"type": "image", "image": "red.png"},
                                                   {"type": "text", "text": "Color?"}]},
                      {"role": "assistant", "content": "red"}]},
        {"messages": [{"role": "user", "content": [{"type": "text", "text": "Compare"},
                                                   {"type": "image_url", "image_url": {"url": "blue.png"}},
                                                   {"type": "image"}]},
                      {"role": "assistant", "content": [{"type": "text", "text": "blue, red"}]}],
         "images": ["red.png"]},
        {"messages": [{"role": "user", "content": "plain"}, {"role": "assistant", "content": "text"}]},
    ])
    a, b, c = load_examples(str(data), image_folder=str(image_dir))
    assert a["messages"][0]["content"] == "<image>\nColor?" and a["images"][0].endswith("red.png")
    assert b["messages"][0]["content"] == "Compare\n<image>\n<image>"
    assert [p.rsplit("/", 1)[1] for p in b["images"]] == ["blue.png", "red.png"]
    assert b["messages"][1]["content"] == "blue, red" and "images" not in c


def test_relative_images_default_to_the_data_files_folder(image_dir):
    data = _jsonl(image_dir / "d.jsonl", [{"image": "blue.png", "conversations": [
        {"from": "human", "value": "<image> ?"}, {"from": "gpt", "value": "blue"}]}])
    assert load_examples(str(data))[0]["images"] == [str((image_dir / "blue.png").resolve())]


GOOD = [{"from": "human", "value": "<image>\nq"}, {"from": "gpt", "value": "a"}]


@pytest.mark.parametrize("record, message", [
    ({"image": "gone.png", "conversations": GOOD}, "image 'gone.png' not found at"),
    ({"image": "broken.png", "conversations": GOOD}, "cannot be read"),
    ({"image": "https://example.com/x.png", "conversations": GOOD}, "only local files"),
    ({"image": ["red.png", "blue.png"], "conversations": GOOD}, "1 '<image>' placeholder(s) in the text but 2 image(s)"),
    ({"image": "red.png", "conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}]},
     "0 '<image>' placeholder(s) in the text but 1 image(s)"),
    ({"conversations": GOOD}, "1 '<image>' placeholder(s) in the text but 0 image(s); put one '<image>' where each "
                              "image goes or remove it"),
    ({"messages": [{"role": "user", "content": [{"type": "image"}]}, {"role": "assistant", "content": "a"}]},
     "names no file and 'images' has none left"),
    ({"messages": [{"role": "user", "content": [{"type": "video"}]}, {"role": "assistant", "content": "a"}]},
     "messages[0].content[0] must be a"),
    ({"image": 3, "conversations": GOOD}, "must be a path or a list of paths"),
])
def test_bad_image_input_is_one_file_line_error(tmp_path, image_dir, record, message):
    ok = ({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}
          if "messages" in record else {"conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "yo"}]})
    data = _jsonl(tmp_path / "bad.jsonl", [ok, record])
    with pytest.raises(RetainError) as e:
        load_examples(str(data), image_folder=str(image_dir))
    text = str(e.value)
    assert text.startswith(f"{data}:2: ") and message in text and "\n" not in text


def test_stray_placeholder_in_text_data_is_fine_without_image_folder(tmp_path):
    data = _jsonl(tmp_path / "t.jsonl", [{"messages": [{"role": "user", "content": "what is <image>?"},
                                                       {"role": "assistant", "content": "an HTML-ish tag"}]}])
    assert "images" not in load_examples(str(data))[0]


def test_image_folder_must_exist(tmp_path):
    data = _jsonl(tmp_path / "t.jsonl", [{"messages": [{"role": "user", "content": "q"},
                                                       {"role": "assistant", "content": "a"}]}])
    with pytest.raises(RetainError, match="not a folder"):
        load_examples(str(data), image_folder=str(tmp_path / "nope"))
