"""The multimodal path on a GPU (skipped without CUDA; CI has none): `retain train` on a tiny random LLaVA
with bf16 autocast for every method (LoRAMoE with the LBC, a text-only TG row mixed in), then `retain eval`
with held-out VQA on every output folder (projector / full MLLM folders, LoRA and LoRAMoE adapters)."""

from __future__ import annotations

import json
import math

import pytest
import torch

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

METHODS = [("projector", "float32"), ("full", "float32"), ("lora", "float32"), ("loramoe", "float32"),
           ("lora", "bfloat16")]
"""(method, weights dtype): float32 weights train under bf16 autocast; bfloat16 weights without it."""


@pytest.fixture(scope="module")
def cuda_runs(tiny_mllm, tmp_path_factory):
    """Every method trained on CUDA from one saved tiny MLLM: {(method, dtype): TrainResult}, the base folder."""
    from PIL import Image

    from retain.multimodal.model import save_mllm
    from retain.training.config import (DatasetSpec, MixtureConfig, ModelConfig, OptimConfig, Recipe,
                                        TrainConfig)
    from retain.training.run import train

    tmp = tmp_path_factory.mktemp("cuda_mllm")
    model, processor = tiny_mllm
    base = save_mllm(model, processor, tmp / "mllm")
    Image.new("RGB", (16, 16), (255, 0, 0)).save(tmp / "red.png")
    Image.new("RGB", (16, 24), (0, 0, 255)).save(tmp / "blue.png")
    vqa = tmp / "vqa.json"
    vqa.write_text(json.dumps([{"image": img, "conversations": [
        {"from": "human", "value": "<image>\nWhat color is the shape?"}, {"from": "gpt", "value": color}]}
        for img, color in [("red.png", "red"), ("blue.png", "blue")] * 4]))
    tg = tmp / "tg.jsonl"
    tg.write_text("".join(json.dumps({"messages": [{"role": "user", "content": f"Tell me fact {i}."},
                                                   {"role": "assistant", "content": f"Fact {i} is true."}]}) + "\n"
                          for i in range(4)))
    runs = {}
    for method, dtype in METHODS:
        datasets = [DatasetSpec(path=str(vqa), type="task", weight=0.5)]
        if method != "projector":  # text-only TG rows in the same batches (the LBC's world type for loramoe)
            datasets.append(DatasetSpec(path=str(tg), type="world", weight=0.5))
        else:
            datasets[0].weight = None
        recipe = Recipe(datasets=datasets, method=method,
                        model=ModelConfig(name=str(base), device="cuda", dtype=dtype),
                        mixture=MixtureConfig(size=8, allow_repeat=True), optim=OptimConfig(lr=1e-2),
                        train=TrainConfig(output_dir=str(tmp / f"run_{method}_{dtype}"), max_steps=3, batch_size=4,
                                          max_length=64, progress=False, bf16_autocast=dtype == "float32"))
        runs[method, dtype] = train(recipe)
    return runs, base, tmp


@pytest.mark.parametrize("method,dtype", METHODS)
def test_every_method_trains_on_cuda(cuda_runs, method, dtype):
    runs, _, _ = cuda_runs
    res = runs[method, dtype]
    assert res.steps == 3 and math.isfinite(res.final_loss)
    params = list(res.model.parameters())
    assert all(p.device.type == "cuda" for p in params)
    trainable = [p for p in params if p.requires_grad]
    assert trainable and all(p.dtype == getattr(torch, dtype) for p in trainable)  # autocast keeps fp32 masters
    assert all(torch.isfinite(p).all() for p in trainable)


def test_retain_eval_with_vqa_on_cuda_for_every_output_folder(cuda_runs):
    from retain.evaluation.config import EvalConfig
    from retain.evaluation.run import run_eval

    runs, base, tmp = cuda_runs
    probe = tmp / "facts.jsonl"
    probe.write_text("".join(json.dumps({"question": f"Which number is {i}?", "choices": [str(i), str(i + 1), "none"],
                                         "answer": 0}) + "\n" for i in range(6)))
    tuned = [runs[m].model_dir for m in METHODS]
    cfg = EvalConfig(base=str(base), tuned=tuned, profile="tiny", probes={}, probe_files=[str(probe)], vqa_items=16,
                     out=str(tmp / "eval"), device="cuda")
    assert run_eval(cfg) == 0
    rows = json.loads((tmp / "eval" / "eval.json").read_text())["rows"]
    assert [r["path"] for r in rows] == [str(base), *tuned]
    for r in rows:
        assert r["domain"]["name"] == "easy_vqa" and r["domain"]["n"] == 16
        assert 0.0 <= r["domain_score"] <= 1.0
    for r in rows[1:]:
        assert math.isfinite(r["kl_drift"]) and r["kl_drift"] >= 0.0
        assert "domain" in r["vs_base"]
    projector_row = rows[1]
    assert projector_row["kl_drift"] < 1e-3  # stage 1 leaves the text path as it was (text rows see no image)
    assert any(r["kl_drift"] > 1e-3 for r in rows[2:])  # full / LoRA / LoRAMoE at lr 1e-2 move it
