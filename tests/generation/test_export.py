"""Exports: sft.jsonl is TRL conversational and loads with datasets; ShareGPT and TG-PT layouts; re-export."""

from __future__ import annotations

from retain.generation.prompts import Prompts

import json

import pytest

from retain.cli import main
from retain.generation.run import decompress
from retain.utils.io import read_json, read_jsonl


@pytest.fixture
def run_dir(small_cfg, fake_backend):
    return decompress(small_cfg(), fake_backend)


def _kept(run_dir):
    return {n["id"]: n for n in read_jsonl(run_dir / "nodes.jsonl") if not n["dropped"]}


def test_sft_is_trl_conversational_and_loads_with_datasets(run_dir, tmp_path):
    from datasets import load_dataset

    ds = load_dataset("json", data_files=str(run_dir / "sft.jsonl"), split="train", cache_dir=str(tmp_path / "hf"))
    assert ds.column_names == ["messages"]
    kept = _kept(run_dir)
    leaves = [i for i in kept if not any(j.startswith(i + ".") for j in kept)]
    assert len(ds) == len(leaves) > 0
    for row in ds:
        msgs = row["messages"]
        assert [m["role"] for m in msgs] == ["user", "assistant"] * (len(msgs) // 2)
        assert all(isinstance(m["content"], str) and m["content"] for m in msgs)
    # each row is one root-to-leaf path: consecutive turns are parent -> child in the tree
    by_q = {n["question"]: n for n in kept.values()}
    for row in ds:
        chain = [by_q[m["content"]] for m in row["messages"] if m["role"] == "user"]
        assert chain[0]["parent_id"] is None
        assert all(b["parent_id"] == a["id"] for a, b in zip(chain, chain[1:]))
        assert chain[-1]["id"] in leaves


def test_sharegpt_and_pt(run_dir):
    rows = read_json(run_dir / "sharegpt.json")
    sft = read_jsonl(run_dir / "sft.jsonl")
    assert len(rows) == len(sft)
    for r, s in zip(rows, sft):
        assert [c["from"] for c in r["conversations"]] == ["human", "gpt"] * (len(r["conversations"]) // 2)
        assert [c["value"] for c in r["conversations"]] == [m["content"] for m in s["messages"]]
    docs = read_jsonl(run_dir / "pt.jsonl")
    kept = _kept(run_dir)
    assert len(docs) == sum(1 for i in kept if "." not in i)  # one document per root question
    text = "\n\n".join(d["text"] for d in docs)
    for n in kept.values():  # every kept node exactly once
        assert text.count(f"{n['question']}\n{n['answer']}") == 1


def test_export_command_reexports(run_dir, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["export", str(run_dir), "--format", "sft", "--out", str(out)]) == 0
    assert (out / "sft.jsonl").read_text() == (run_dir / "sft.jsonl").read_text()
    assert not (out / "pt.jsonl").exists()
    (run_dir / "sharegpt.json").unlink()
    assert main(["export", str(run_dir)]) == 0
    assert json.loads((run_dir / "sharegpt.json").read_text())
    assert main(["export", str(run_dir), "--format", "sharegpt,pt", "--out", str(out)]) == 0
    assert (out / "pt.jsonl").exists()
    assert main(["export", str(run_dir), "--format", "xml"]) == 2
    assert "--format xml: unknown export format" in capsys.readouterr().err


def test_export_refuses_unfinished_or_foreign_dirs(run_dir, tmp_path, capsys):
    m = read_json(run_dir / "manifest.json")
    m["status"] = "running"
    (run_dir / "manifest.json").write_text(json.dumps(m))
    assert main(["export", str(run_dir)]) == 2
    assert "has not finished" in capsys.readouterr().err
    assert main(["export", str(run_dir), "--allow_incomplete", "true"]) == 0
    assert main(["export", str(tmp_path)]) == 2
    assert "not a decompress run directory" in capsys.readouterr().err


def test_system_prompt_is_exported(small_cfg, fake_backend):
    run = decompress(small_cfg(prompts=Prompts(system="You are a helpful tutor.")), fake_backend)
    first = read_jsonl(run / "sft.jsonl")[0]["messages"]
    assert first[0] == {"role": "system", "content": "You are a helpful tutor."}
    assert [m["role"] for m in first[1:]] == ["user", "assistant"] * ((len(first) - 1) // 2)
    assert read_json(run / "sharegpt.json")[0]["system"] == "You are a helpful tutor."
