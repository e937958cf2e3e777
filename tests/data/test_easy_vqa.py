"""easy-VQA reader: counts, image-disjoint stable splits, records the one loader accepts."""

from __future__ import annotations

import json

from retain.data import easy_vqa
from retain.data.formats import load_examples


def test_splits_are_image_disjoint_stable_and_complete():
    train, dev, held = (easy_vqa.records(s) for s in ("train", "dev", "heldout"))
    assert len(train) + len(dev) == 38575 and len(held) == 9673
    imgs = {s: {r["image"] for r in rows} for s, rows in (("train", train), ("dev", dev), ("heldout", held))}
    assert not imgs["train"] & imgs["dev"] and len(imgs["heldout"]) == 1000
    assert all(p.startswith("test/") for p in imgs["heldout"])
    assert 300 < len(imgs["dev"]) < 500  # 10 % of 4,000 images
    assert {r["id"] for r in easy_vqa.records("dev", seed=5)} == {r["id"] for r in dev}  # seed only reorders
    assert [r["id"] for r in easy_vqa.records("train", n=3, seed=1)] == [r["id"] for r in easy_vqa.records("train", seed=1)[:3]]


def test_answers_majority_and_scoring():
    assert len(easy_vqa.answers()) == 13 and {"yes", "no", "circle", "teal"} <= set(easy_vqa.answers())
    answer, share = easy_vqa.majority_answer(easy_vqa.records("heldout"))
    assert answer in ("yes", "no") and 0.3 < share < 0.45
    assert easy_vqa.score(" Circle.", "circle") and not easy_vqa.score("a circle", "circle")
    assert not easy_vqa.score("", "yes")


def test_records_load_through_the_one_loader(tmp_path):
    rows = easy_vqa.records("dev", n=5)
    path = tmp_path / "evqa.json"
    path.write_text(json.dumps(rows))
    out = load_examples(str(path), image_folder=str(easy_vqa.image_folder()), sample_type="task")
    assert len(out) == 5 and all(len(ex["images"]) == 1 for ex in out)
    assert out[0]["messages"][0]["content"].startswith("<image>\n") and out[0]["messages"][0]["content"].endswith(
        easy_vqa.INSTRUCTION)
    assert out[0]["messages"][1]["content"] == rows[0]["answer"] and out[0]["sample_type"] == 0
