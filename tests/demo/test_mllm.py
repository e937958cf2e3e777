"""`retain demo --scenario mllm` end to end on a tiny language model (smoke profile): stage 1, the
stage-2 methods, VQA and text-path rows with intervals against the right references, a re-run that
skips finished stages."""

from __future__ import annotations

import json

import pytest
import torch

from retain.demo import DemoConfig, run_demo
from retain.errors import RetainError


@pytest.mark.slow
def test_mllm_demo_smoke_end_to_end(tmp_path, tiny_llama_path, tg_corpus):
    out = tmp_path / "demo"
    cfg = DemoConfig(scenario="mllm", out=str(out), profile="smoke", model=tiny_llama_path, tg_corpus=str(tg_corpus),
                     device="cpu")
    assert run_demo(cfg) == 0
    summary = json.loads((out / "demo.json").read_text())
    assert [r["name"] for r in summary["rows"]] == ["base", "stage1", "full", "loramoe_tg"]
    base, stage1, full, moe = summary["rows"]
    assert base["domain_score"] is None  # the base LLM cannot see
    for r in (stage1, full, moe):
        assert r["domain"]["name"] == "easy_vqa" and r["domain"]["n"] == summary["vqa"]["heldout_items"]
    # stage 1 trains only the projector; its text path is the base LLM's: no drift, nothing forgotten
    assert stage1["trainable_params"] < full["trainable_params"] / 10
    assert stage1["kl_drift"] < 1e-6 and stage1["retention"] in (None, 1.0)
    # VQA gain paired against stage 1, text metrics against the base LLM; stage 1 is no stage-2 baseline
    assert stage1["vs_base"]["domain"] is None and full["vs_base"]["domain"] is not None
    assert full["vs_base"]["drift"] is not None and stage1["vs_full"] is None
    assert moe["vs_full"]["domain"] is not None and len(moe["counts"]) == 2 and len(full["counts"]) == 1
    assert (out / "stage1" / "model" / "config.json").exists() and (out / "demo.png").stat().st_size > 1000
    report = (out / "report.md").read_text()
    assert "VQA acc %" in report and "gain vs stage 1 (pts)" in report and "LoRAMoE + LBC + TG" in report
    before = (out / "full" / "demo_result.json").read_text()
    assert run_demo(cfg) == 0  # a re-run skips every finished stage
    assert (out / "full" / "demo_result.json").read_text() == before
    assert "train full" in json.loads((out / "demo.json").read_text())["stages_done_earlier"]
    # a run whose training finished but whose evaluation was lost reloads the saved MLLM folder
    (out / "full" / "demo_result.json").unlink()
    assert run_demo(cfg) == 0
    again = json.loads((out / "full" / "demo_result.json").read_text())
    assert again["domain_score"] == full["domain_score"] and again["kl_drift"] == pytest.approx(full["kl_drift"], abs=1e-6)


def test_mllm_demo_refuses_a_text_only_method(tmp_path):
    with pytest.raises(RetainError, match="not a stage-2 method"):
        run_demo(DemoConfig(scenario="mllm", out=str(tmp_path / "d"), profile="smoke", methods=["full_kl"]))
    assert not (tmp_path / "d").exists()


@pytest.mark.slow
def test_stage1_is_the_same_whether_tg_is_generated_or_reused(tmp_path, tiny_llama_path, tg_corpus, monkeypatch):
    """Issue 22 item 15: stage 1 uses no TG data, so generating the TG corpus first (the base LLM sampling
    with the hf backend, the embedder, the tree) or reusing one (--tg_corpus) must leave it bit for bit the same:
    the same projector weights and the same VQA answers."""
    import re

    from safetensors.torch import load_file

    from retain.generation.backends import hf_backend

    class Listing(hf_backend.HFBackend):
        """The real backend (every side effect of sampling happens), with the random model's replies made
        into question lists and whole answers, so the tree grows."""

        def chat(self, conversations, params):
            out = super().chat(conversations, params)
            for conv, c in zip(conversations, out):
                m = re.search(r"numbered list of (\d+)", conv[-1]["content"])
                if m:
                    c.text = "\n".join(f"{i}. What is thing {i} of {len(conv)} {c.text[:12]!r}?"
                                       for i in range(1, 1 + int(m[1])))
                else:
                    c.text = "It is a thing."
                c.finish_reason = "stop"
            return out

    monkeypatch.setattr(hf_backend, "HFBackend", Listing)
    runs = {}
    for name, corpus in (("generated", None), ("reused", str(tg_corpus))):
        out = tmp_path / name
        cfg = DemoConfig(scenario="mllm", out=str(out), profile="smoke", model=tiny_llama_path, tg_corpus=corpus,
                         device="cpu", methods=["loramoe_tg"])
        assert run_demo(cfg) == 0
        runs[name] = out
    assert (runs["generated"] / "tg" / "sft.jsonl").stat().st_size > 0 and not (runs["reused"] / "tg").exists()
    a, b = (load_file(str(runs[n] / "stage1" / "model" / "model.safetensors")) for n in ("generated", "reused"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    ra, rb = (json.loads((runs[n] / "stage1" / "demo_result.json").read_text()) for n in ("generated", "reused"))
    assert list(ra["counts"].values()) == list(rb["counts"].values())  # keyed by the run's own data path
    where = ("seconds", "timings", "train_seconds", "counts", "output_dir", "model_dir")  # clocks and paths
    assert {k: v for k, v in ra.items() if k not in where} == {k: v for k, v in rb.items() if k not in where}
