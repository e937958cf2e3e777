"""The demo's plumbing end to end on a tiny random model (smoke profile): every stage runs, the
outputs exist and agree with each other, and a re-run skips finished stages."""

from __future__ import annotations

import json

import pytest

from retain.demo import DemoConfig, run_demo
from retain.demo.text import text_methods, text_profile
from retain.errors import RetainError


@pytest.mark.slow
def test_demo_smoke_end_to_end(tmp_path, tiny_llama_path, tg_corpus):
    out = tmp_path / "demo"
    cfg = DemoConfig(out=str(out), profile="smoke", model=tiny_llama_path, tg_corpus=str(tg_corpus))
    assert run_demo(cfg) == 0
    summary = json.loads((out / "demo.json").read_text())
    names = [r["name"] for r in summary["rows"]]
    assert names == ["base", "full", "loramoe_tg"]
    full, moe = summary["rows"][1], summary["rows"][2]
    # LoRAMoE trains a small fraction of what full fine-tuning trains.
    assert 0 < moe["trainable_params"] < full["trainable_params"] / 10
    # The TG run mixed both sources; the domain-only run did not.
    assert len(moe["counts"]) == 2 and len(full["counts"]) == 1
    report = (out / "report.md").read_text()
    assert "| full FT |" in report and "LoRAMoE + LBC + TG" in report
    # Every fine-tune carries paired intervals against the base, and against full FT where it is not full FT.
    for m in ("domain", "drift") + (("retention",) if moe["known_total"] else ()):
        iv = moe["vs_base"][m]
        assert iv is not None and iv["lo"] <= iv["diff"] <= iv["hi"]
    assert full["vs_full"] is None and moe["vs_full"]["domain"] is not None
    assert moe["vs_lora"] is None  # the smoke run has no LoRA row
    assert " ± " in report and "method vs full FT" in report
    assert len(moe["loss_curve"]) == moe["steps"]
    assert {"load model", "base calibration", "train full", "evaluate loramoe_tg"} <= set(summary["stages"])
    assert (out / "demo.png").stat().st_size > 1000
    # A second run reuses every finished stage (no training): the rows are identical.
    before = (out / "full" / "demo_result.json").read_text()
    assert run_demo(cfg) == 0
    assert (out / "full" / "demo_result.json").read_text() == before
    # ... and reports the stage times recorded when those stages ran, not the seconds of skipping them.
    again_summary = json.loads((out / "demo.json").read_text())
    for k in ("base calibration", "train full", "evaluate loramoe_tg"):
        assert again_summary["stages"][k] == summary["stages"][k] and k in again_summary["stages_done_earlier"]
    assert again_summary["total_seconds"] >= sum(summary["stages"][k] for k in again_summary["stages_done_earlier"])
    assert "done by an earlier invocation" in (out / "report.md").read_text()
    # Without the earlier record (demo.json lost), a skipped stage counts this invocation's seconds.
    (out / "demo.json").unlink()
    assert run_demo(cfg) == 0
    lost = json.loads((out / "demo.json").read_text())
    assert lost["stages"]["train full"] < 60 and "train full" not in lost["stages_done_earlier"]
    # A finished training whose evaluation was lost is reused, not trained again, and scores the same.
    log_before = (out / "full" / "train_log.jsonl").read_text()
    (out / "full" / "demo_result.json").unlink()
    assert run_demo(cfg) == 0
    assert (out / "full" / "train_log.jsonl").read_text() == log_before
    again = json.loads((out / "full" / "demo_result.json").read_text())
    assert again["retention"] == full["retention"] and again["domain_score"] == full["domain_score"]


def test_a_bad_tg_corpus_is_refused_before_any_model_loads(tmp_path, monkeypatch):
    import retain.models as models

    def no_load(*a, **k):
        raise AssertionError("a model was loaded before the input check")

    monkeypatch.setattr(models, "load_model", no_load)
    with pytest.raises(RetainError, match="--tg_corpus .*missing.jsonl: file not found"):
        run_demo(DemoConfig(out=str(tmp_path / "o"), tg_corpus=str(tmp_path / "missing.jsonl")))
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"messages": [{"role": "user", "content": "hi"}]}\n')
    with pytest.raises(RetainError, match="bad.jsonl:1: .*assistant"):
        run_demo(DemoConfig(out=str(tmp_path / "o"), tg_corpus=str(bad)))
    assert not (tmp_path / "o").exists()  # nothing written


def test_demo_bad_input(tmp_path):
    with pytest.raises(RetainError, match="unknown method 'nope'"):
        text_methods(DemoConfig(out=str(tmp_path), methods=["nope"]))
    with pytest.raises(RetainError, match="--profile"):
        text_profile(DemoConfig(out=str(tmp_path), profile="huge"))  # type: ignore[arg-type]
    with pytest.raises(RetainError, match="--tg_corpus"):
        from retain.demo.common import check_tg_corpus

        check_tg_corpus(str(tmp_path / "missing.jsonl"))


def test_demo_trains_on_the_sweeps_examples_and_never_on_its_dev_split(tmp_path):
    """The default profile's domain training set is the train side minus the dev tail on which
    benchmarks/sweep_lr.py chose the learning rates: no dev prompt is ever in a demo recipe's data."""
    from pathlib import Path

    from retain.data.formats import load_examples
    from retain.data.olmo_eval import dev_split, domain_split, format_mc_prompt
    from retain.demo.text import PROFILES, build_recipe

    prof = PROFILES["default"]
    cfg = DemoConfig(out=str(tmp_path), domain="sst2")
    items = domain_split("sst2", "train")
    dev = {format_mc_prompt(it) for it in dev_split("sst2", prof.dev_items)}  # the sweep's dev split
    assert len(dev) == prof.dev_items
    for name in ("full", "lora", "full_tg", "loramoe_tg"):
        spec = build_recipe(cfg, prof, name, Path("tg.jsonl"), tmp_path).datasets[0]
        assert spec.limit == len(items) - prof.dev_items
        trained = {e["messages"][0]["content"] for e in load_examples(spec.path, limit=spec.limit)}
        assert len(trained) == spec.limit and not trained & dev


def test_kl_anchored_methods_carry_the_profile_lambda_and_others_do_not(tmp_path):
    from pathlib import Path

    from retain.demo.common import METHODS
    from retain.demo.text import PROFILES, build_recipe

    prof, cfg = PROFILES["smoke"], DemoConfig(out=str(tmp_path), domain="sst2")
    lam = {n: build_recipe(cfg, prof, n, Path("tg.jsonl"), tmp_path).train.kl_anchor for n in METHODS}
    assert lam["full_kl"] == lam["lora_kl"] == prof.kl_anchor > 0
    assert all(v == 0.0 for n, v in lam.items() if n not in ("full_kl", "lora_kl"))


def test_stage_clock_keeps_recorded_times_of_skipped_stages(tmp_path):
    """Both scenarios time stages through one StageClock: a skipped stage keeps the seconds recorded when it
    ran (from demo.json) and is listed in ``reused``; a stage that runs is timed now."""
    import json
    import time

    from rich.console import Console

    from retain.demo.common import StageClock

    (tmp_path / "demo.json").write_text(json.dumps({"stages": {"train full": 123.4}}))
    clock = StageClock(tmp_path, Console(file=open(tmp_path / "log.txt", "w")))
    clock("train full", time.perf_counter(), done_earlier=True)
    clock("train lora", time.perf_counter() - 2.0, done_earlier=True)  # not recorded: timed now
    assert clock.stages["train full"] == 123.4 and clock.reused == ["train full"]
    assert 2.0 <= clock.stages["train lora"] < 60
    assert 123.4 <= clock.total() < 123.4 + 60  # this invocation's seconds + the skipped stage's recorded ones
    fresh = StageClock(tmp_path / "none", Console(file=open(tmp_path / "log2.txt", "w")))
    fresh("train full", time.perf_counter(), done_earlier=True)
    assert fresh.reused == [] and fresh.stages["train full"] < 60
