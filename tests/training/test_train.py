"""Short real training runs on the tiny model: each method lowers the loss and writes its outputs."""

from __future__ import annotations

import json

import pytest
import torch

from retain.training.recipe import recipe_from_dict
from retain.training.run import train


def _same_logits(a, b, ids):
    with torch.no_grad():
        return torch.allclose(a(input_ids=ids).logits, b(input_ids=ids).logits, atol=1e-5)


@pytest.mark.parametrize("method", ["full", "lora", "loramoe"])
def test_short_run_lowers_loss_and_writes_outputs(make_recipe, tmp_path, method):
    from retain.models import load_finetuned

    lr = 3e-3 if method == "full" else 2e-2  # adapters start at zero (LoRA B = 0): a larger step
    recipe = recipe_from_dict(make_recipe(method=method, optim={"lr": lr}, train={"max_steps": 8, "grad_accum": 2}))
    res = train(recipe)
    out = tmp_path / "run"
    rows = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(1, 9)) and res.steps == 8
    first, last = rows[0]["lm_loss"], sum(r["lm_loss"] for r in rows[-2:]) / 2
    assert last < first - 0.2, (first, last)
    assert rows[-1]["tokens"] > rows[0]["tokens"] > 0 and rows[0]["lr"] == 0.0  # warmup starts at 0
    if method == "loramoe":
        assert all(r["lbc_loss"] is not None and r["lbc_loss"] >= 0 for r in rows)
        assert rows[0]["loss"] == pytest.approx(rows[0]["lm_loss"] + rows[0]["lbc_loss"])
    else:
        assert all(r["lbc_loss"] is None for r in rows)
    assert (out / "loss.png").stat().st_size > 1000 and not (out / "checkpoints").exists()
    saved = json.loads((out / "train_result.json").read_text())
    assert saved["steps"] == 8 and saved["examples"] == 24 and saved["final_loss"] == pytest.approx(res.final_loss)
    # the mean LM loss of the last steps (all 8 here: fewer than 10), what the bar shows last
    assert res.final_loss == pytest.approx(sum(r["lm_loss"] for r in rows) / 8) and res.final_loss_steps == 8
    assert 0 < res.trainable_params <= res.total_params
    assert (res.trainable_params == res.total_params) == (method == "full")
    # The saved folder reloads into the same function as the in-memory result.
    loaded, _ = load_finetuned(res.model_dir)
    ids = torch.randint(0, 1000, (2, 12))
    assert _same_logits(res.model, loaded, ids)


def test_grad_accumulation_matches_one_big_batch(make_recipe, tmp_path):
    """Loss is normalised by assistant tokens of the whole step: 1x4 and 2x2 give the same update."""
    weights = []
    for i, (bs, acc) in enumerate([(4, 1), (2, 2)]):
        data = make_recipe(method="lora", train={"max_steps": 3, "batch_size": bs, "grad_accum": acc,
                                                 "output_dir": str(tmp_path / f"r{i}")})
        res = train(recipe_from_dict(data))
        weights.append({n: p.detach().clone() for n, p in res.model.named_parameters() if p.requires_grad})
    assert weights[0].keys() == weights[1].keys()
    for n in weights[0]:
        torch.testing.assert_close(weights[0][n], weights[1][n], atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize("balance", ["token", "example", "type"])
def test_length_sorted_steps_give_the_same_update(make_recipe, tmp_path, balance):
    """sort_by_length reorders a step's examples before they are cut into forward passes: 4x1 unsorted and
    2x2 sorted train on the same examples per step, so they end at the same weights, under every
    mixture.loss_balance (its weights come from the whole step's counts)."""
    weights = []
    for i, (bs, acc, srt) in enumerate([(4, 1, False), (2, 2, True), (1, 4, True)]):
        data = make_recipe(method="lora", mixture={"loss_balance": balance},
                           train={"max_steps": 3, "batch_size": bs, "grad_accum": acc,
                                  "sort_by_length": srt, "output_dir": str(tmp_path / f"s{i}")})
        res = train(recipe_from_dict(data))
        weights.append({n: p.detach().clone() for n, p in res.model.named_parameters() if p.requires_grad})
    for w in weights[1:]:
        for n in weights[0]:
            torch.testing.assert_close(weights[0][n], w[n], atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize("method,balance", [("full", "token"), ("lora", "token"), ("loramoe", "token"),
                                            ("full", "example"), ("loramoe", "example"), ("lora", "type"),
                                            ("loramoe", "type")])
def test_lm_head_on_labelled_positions_only_gives_the_same_update(make_recipe, tmp_path, monkeypatch, method, balance):
    """Training asks for logits where a label follows only (logits_to_keep, boolean form): the same loss
    and weights as computing the head everywhere, and the loss really receives the (n, V) logits, under
    every mixture.loss_balance (the per-example weights follow the (n, V) rows in row-major order)."""
    import retain.training.trainer as trainer_mod

    seen, real = [], trainer_mod.token_loss_sum

    def spy(logits, labels, *weight):
        seen.append(logits.dim())
        return real(logits, labels, *weight)

    monkeypatch.setattr(trainer_mod, "token_loss_sum", spy)
    runs = []
    for on in (True, False):
        monkeypatch.setattr(trainer_mod, "accepts_logits_to_keep", lambda model, on=on: on)
        seen.clear()
        res = train(recipe_from_dict(make_recipe(method=method, mixture={"loss_balance": balance},
                                                 train={"max_steps": 3, "grad_accum": 2,
                                                        "output_dir": str(tmp_path / f"h{on}")})))
        assert set(seen) == ({2} if on else {3})
        rows = [json.loads(x) for x in (tmp_path / f"h{on}" / "train_log.jsonl").read_text().splitlines()]
        runs.append(([r["lm_loss"] for r in rows],
                     {n: p.detach().clone() for n, p in res.model.named_parameters() if p.requires_grad}))
    assert runs[0][0] == pytest.approx(runs[1][0], rel=1e-5)
    for n in runs[0][1]:
        torch.testing.assert_close(runs[0][1][n], runs[1][1][n], atol=1e-5, rtol=1e-4)


def test_in_memory_base_model_is_copied(make_recipe, tiny_llama_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    base = AutoModelForCausalLM.from_pretrained(tiny_llama_path)
    tok = AutoTokenizer.from_pretrained(tiny_llama_path)
    before = {n: p.detach().clone() for n, p in base.named_parameters()}
    res = train(recipe_from_dict(make_recipe(method="full", train={"max_steps": 2})), model=base, tokenizer=tok)
    assert all(torch.equal(before[n], p) for n, p in base.named_parameters())  # untouched
    assert any(not torch.equal(before[n], p) for n, p in res.model.named_parameters())


def test_existing_run_needs_resume_and_finished_run_returns_result(make_recipe):
    from retain.errors import RetainError

    recipe = recipe_from_dict(make_recipe(method="lora", train={"max_steps": 2}))
    first = train(recipe)
    with pytest.raises(RetainError, match="already holds a run.*--resume"):
        train(recipe)
    again = train(recipe, resume=True)
    assert again.model is None and again.final_loss == pytest.approx(first.final_loss)


@pytest.mark.parametrize("method", ["lora", "loramoe"])
def test_gradient_checkpointing_gives_the_same_step(make_recipe, tmp_path, method):
    """Recomputing activations must not change the update (non-reentrant checkpointing, frozen base)."""
    weights = []
    for ckpt in (False, True):
        data = make_recipe(method=method, model={"gradient_checkpointing": ckpt},
                           loramoe={"dropout": 0.0}, train={"max_steps": 2, "output_dir": str(tmp_path / f"gc{ckpt}")})
        res = train(recipe_from_dict(data))
        weights.append({n: p.detach().clone() for n, p in res.model.named_parameters() if p.requires_grad})
    for n in weights[0]:
        torch.testing.assert_close(weights[0][n], weights[1][n], atol=1e-6, rtol=1e-5)


def test_bf16_autocast_trains(make_recipe):
    res = train(recipe_from_dict(make_recipe(method="lora", train={"max_steps": 2, "bf16_autocast": True})))
    assert res.steps == 2 and 0 < res.final_loss < 20


def test_plain_text_trains_mixed_with_chat_and_its_loss_covers_every_token(make_recipe, tmp_path):
    """TG-PT: a {"text"} file (format auto-detected) mixes with chat data as the world type."""
    pt = tmp_path / "pt.jsonl"
    pt.write_text("".join(json.dumps({"text": f"Fact {i}: the sky is blue and grass is green."}) + "\n" for i in range(8)))
    task = make_recipe()["datasets"][0]
    recipe = recipe_from_dict(make_recipe(method="full", datasets=[task, {"path": str(pt), "weight": 1, "type": "world"}],
                                          train={"max_steps": 3}))
    res = train(recipe)
    assert sorted(res.counts.values()) == [8, 16] and any(k.endswith("pt.jsonl") and v == 8 for k, v in res.counts.items())
    rows = [json.loads(line) for line in (tmp_path / "run" / "train_log.jsonl").read_text().splitlines()]
    assert len(rows) == 3 and all(r["lm_loss"] > 0 for r in rows)
    # every text token is labelled: the text-only run trains on more tokens per example than its chat prompt would
    only = recipe_from_dict(make_recipe(method="full", datasets=[{"path": str(pt), "format": "text"}],
                                        train={"max_steps": 1, "output_dir": str(tmp_path / "run2"), "batch_size": 8}))
    train(only)
    row = json.loads((tmp_path / "run2" / "train_log.jsonl").read_text().splitlines()[0])
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(make_recipe()["model"]["name"])
    per_doc = len(tok("Fact 0: the sky is blue and grass is green.", add_special_tokens=True)["input_ids"]) + 1
    assert row["tokens"] >= 8 * (per_doc - 1)  # every token but the first of each document has a label


@pytest.mark.parametrize("base_use_cache", [True, False])
def test_a_full_fine_tune_keeps_the_bases_use_cache(make_recipe, tiny_llama_path, tmp_path, base_use_cache):
    """The Trainer sets config.use_cache = False on the model it trains; the folder used to keep it, so a
    user loading it elsewhere decoded without the KV cache (issue 22 item 8)."""
    import shutil

    base = tmp_path / "base"
    shutil.copytree(tiny_llama_path, base)
    cfg = json.loads((base / "config.json").read_text())
    (base / "config.json").write_text(json.dumps({**cfg, "use_cache": base_use_cache}))
    res = train(recipe_from_dict(make_recipe(method="full", model={"name": str(base)}, train={"max_steps": 1})))
    saved = json.loads((tmp_path / "run" / "model" / "config.json").read_text())
    assert saved["use_cache"] is base_use_cache and res.model.config.use_cache is base_use_cache


@pytest.mark.parametrize("method", ["full", "lora", "loramoe"])
def test_snapshot_steps_save_loadable_fine_tunes_of_those_steps(make_recipe, tmp_path, method):
    """train.snapshot_steps: a folder per listed step, in the final model's format, loaded by load_model; the
    last step's snapshot is the final model, an earlier one is not; use_cache is the base's, not the Trainer's."""
    from retain.models import load_model

    recipe = recipe_from_dict(make_recipe(method=method, optim={"lr": 2e-2},
                                          train={"max_steps": 4, "snapshot_steps": [2, 4]}))
    res = train(recipe)
    snaps = tmp_path / "run" / "snapshots"
    assert sorted(p.name for p in snaps.iterdir()) == ["step-2", "step-4"]
    ids = torch.randint(0, 1000, (2, 12))
    at2, _ = load_model(str(snaps / "step-2"), device="cpu")
    at4, _ = load_model(str(snaps / "step-4"), device="cpu")
    assert _same_logits(res.model, at4, ids) and not _same_logits(res.model, at2, ids)
    assert at2.config.use_cache is res.model.config.use_cache  # the base's (the Trainer trains with False)


def test_snapshot_steps_are_checked():
    from retain.errors import RetainError
    from retain.training.config import TrainLoopConfig

    with pytest.raises(RetainError, match="train.snapshot_steps"):
        TrainLoopConfig(snapshot_steps=[0])
