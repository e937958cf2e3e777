"""VQA scoring without generation (answers' first reply tokens, distinct), and `retain eval` on image-text-to-text
folders: text-path metrics plus held-out easy-VQA, paired against an MLLM base."""

from __future__ import annotations

import json

import pytest

from retain.errors import RetainError


def test_easy_vqa_answers_have_distinct_first_tokens(tiny_mllm):
    from retain.data import easy_vqa
    from retain.evaluation.vqa import answer_tokens

    _, processor = tiny_mllm
    answers = easy_vqa.answers()
    toks = answer_tokens(processor, answers)
    assert len(answers) == 13 and len(set(toks)) == 13
    # each is the first token the tokenizer gives the answer as the reply starts
    for a, t in zip(answers, toks):
        assert a.startswith(processor.tokenizer.decode([t]).strip())
    with pytest.raises(RetainError, match="start with the same token"):
        answer_tokens(processor, ["triangle", "triangular"])


def test_score_vqa_outcomes_are_consistent_and_the_argmax_of_the_answer_set(tiny_mllm):
    import torch

    from retain.data import easy_vqa
    from retain.evaluation.vqa import answer_tokens, score_vqa, vqa_accuracy

    model, processor = tiny_mllm
    recs = easy_vqa.records("heldout", n=6, seed=0)
    answers = easy_vqa.answers()
    res = score_vqa(model, processor, recs, easy_vqa.image_folder(), answers, batch_size=4)
    assert [r["id"] for r in res] == [r["id"] for r in recs]
    for r, rec in zip(res, recs):
        assert answers[r["gold"]] == rec["answer"] and r["correct"] == (r["pred"] == r["gold"])
        assert (r["margin"] > 0) == r["correct"]
    assert vqa_accuracy(res) == sum(r["correct"] for r in res) / 6
    # batching does not change a prediction (left padding with position ids)
    one = score_vqa(model, processor, recs[:1], easy_vqa.image_folder(), answers, batch_size=1)[0]
    assert one["pred"] == res[0]["pred"] and abs(one["margin"] - res[0]["margin"]) < 1e-4
    # a model pushed towards one answer's first token predicts it everywhere
    tok = answer_tokens(processor, answers)[answers.index("teal")]
    bias = torch.zeros(model.lm_head.weight.shape[0])
    bias[tok] = 100.0
    model.lm_head.bias = torch.nn.Parameter(bias)  # a logit offset on one token (Linear adds its bias)
    try:
        biased = score_vqa(model, processor, recs, easy_vqa.image_folder(), answers)
    finally:
        model.lm_head.bias = None
    assert all(answers[r["pred"]] == "teal" for r in biased)


def test_retain_eval_on_mllm_folders_pairs_vqa_and_text_metrics(tiny_mllm, tmp_path):
    from retain.evaluation.config import EvalConfig
    from retain.evaluation.run import run_eval
    from retain.multimodal.model import save_mllm

    model, processor = tiny_mllm
    folder = save_mllm(model, processor, tmp_path / "mllm")
    cfg = EvalConfig(base=str(folder), tuned=[str(folder)], profile="tiny", vqa_items=6, out=str(tmp_path / "eval"),
                     device="cpu")
    assert run_eval(cfg) == 0
    rows = json.loads((tmp_path / "eval" / "eval.json").read_text())["rows"]
    base, same = rows
    assert base["domain"]["name"] == "easy_vqa" and base["domain"]["n"] == 6
    assert same["domain_score"] == base["domain_score"]  # the same model: same VQA answers
    assert same["vs_base"]["domain"]["diff"] == 0 and same["retention"] in (None, 1.0)
    assert same["kl_drift"] < 1e-6


@pytest.mark.parametrize("method", ["lora", "loramoe"])
def test_retain_eval_on_mllm_adapter_folders(tiny_mllm, tmp_path, method):
    """An MLLM LoRA / LoRAMoE folder written by `retain train` loads with its processor, scores VQA through
    the adapted model, and pairs with its MLLM base; a zero-step adapter is the base (same answers)."""
    from PIL import Image

    from retain.evaluation.config import EvalConfig
    from retain.evaluation.run import run_eval
    from retain.multimodal.model import save_mllm
    from retain.training.config import (DatasetSpec, MixtureConfig, ModelConfig, OptimConfig, Recipe,
                                        TrainConfig)
    from retain.training.run import train

    model, processor = tiny_mllm
    base = save_mllm(model, processor, tmp_path / "mllm")
    Image.new("RGB", (16, 16), (255, 0, 0)).save(tmp_path / "red.png")
    vqa = tmp_path / "vqa.json"
    vqa.write_text(json.dumps([{"image": "red.png", "conversations": [
        {"from": "human", "value": "<image>\nWhat color is the shape?"}, {"from": "gpt", "value": "red"}]}] * 4))
    tg = tmp_path / "tg.jsonl"
    tg.write_text(json.dumps({"messages": [{"role": "user", "content": "Tell me a fact."},
                                           {"role": "assistant", "content": "Water is wet."}]}) + "\n")
    recipe = Recipe(datasets=[DatasetSpec(path=str(vqa), type="task", weight=0.5),
                              DatasetSpec(path=str(tg), type="world", weight=0.5)],
                    method=method, model=ModelConfig(name=str(base), device="cpu"),
                    mixture=MixtureConfig(size=4, allow_repeat=True), optim=OptimConfig(lr=1e-2),
                    train=TrainConfig(output_dir=str(tmp_path / "run"), max_steps=2, batch_size=2, max_length=64,
                                      progress=False))
    res = train(recipe)
    cfg = EvalConfig(base=str(base), tuned=[str(res.model_dir)], profile="tiny", vqa_items=6,
                     out=str(tmp_path / "eval"), device="cpu")
    assert run_eval(cfg) == 0
    base_row, tuned = json.loads((tmp_path / "eval" / "eval.json").read_text())["rows"]
    assert tuned["domain"]["name"] == "easy_vqa" and tuned["domain"]["n"] == 6
    assert tuned["kl_drift"] > 1e-6  # the adapter (trained at lr 1e-2) is applied on the text path
    assert base_row["items"]["domain:easy_vqa"]["ids"] == tuned["items"]["domain:easy_vqa"]["ids"]  # paired
    assert "domain" in tuned["vs_base"]
