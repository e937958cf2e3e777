"""A real tiny tree on SmolLM2-135M-Instruct through the `hf` backend; the export trains with TRL as is."""

from __future__ import annotations

import pytest

from retain.generation.config import DecompressConfig
from retain.generation.run import decompress
from retain.utils.io import read_json, read_jsonl


@pytest.mark.slow
def test_smollm2_levels_2_2_exports_trl_conversational(tmp_path, smollm2_path):
    from datasets import load_dataset

    cfg = DecompressConfig(run_dir=str(tmp_path / "run"), model=smollm2_path, levels=[[2, 16], [2, 16]],
                           topics=["science", "history"], question_tokens=12, progress=False, seed=0)
    run_dir = decompress(cfg)

    manifest = read_json(run_dir / "manifest.json")
    assert manifest["status"] == "complete"
    assert manifest["model"]  # recorded from the backend
    nodes = read_jsonl(run_dir / "nodes.jsonl")
    assert any(n["depth"] == 1 and not n["dropped"] for n in nodes)
    assert all(n["params"]["max_new_tokens"] == 16 for n in nodes)
    assert all(n["completion_tokens"] <= 16 for n in nodes)
    assert manifest["totals"]["completion_tokens"] > 0

    ds = load_dataset("json", data_files=str(run_dir / "sft.jsonl"), split="train", cache_dir=str(tmp_path / "hf"))
    assert len(ds) == manifest["exports"]["sft"]["rows"] > 0
    for row in ds:
        roles = [m["role"] for m in row["messages"]]
        assert roles == ["user", "assistant"] * (len(roles) // 2) and roles
        assert all(isinstance(m["content"], str) and m["content"].strip() for m in row["messages"])
    # TRL recognises the rows as conversational (what SFTTrainer checks before applying a chat template)
    from trl.data_utils import is_conversational

    assert is_conversational(ds[0])
