"""Stage 1 of ``retain demo --scenario mllm`` alone (default profile) and its held-out VQA accuracy.

    python benchmarks/stage1_mllm.py runs/stage1_check            # ~2 min on a quiet 2-core CPU
    MKL_ENABLE_INSTRUCTIONS=AVX2 ONEDNN_MAX_CPU_ISA=AVX2 python benchmarks/stage1_mllm.py runs/stage1_avx2

Not part of ``make bench``. The demo's own pieces (``vqa_data``, ``build_mini_mllm``, ``_recipe``, ``train``),
then ``score_vqa`` on the 300 held-out questions; the per-step losses are in ``<out>/stage1/train_log.jsonl``.
It produced the numbers of docs/mllm.md, "Why stage 1 differs between machines": run with two ``src/`` trees
(``PYTHONPATH``) or two instruction sets and compare the logs.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def main(out: Path) -> dict:
    from retain.data import easy_vqa
    from retain.demo import DemoConfig
    from retain.demo.mllm import _recipe, resolved_profile, vqa_data
    from retain.evaluation.vqa import score_vqa, vqa_accuracy
    from retain.multimodal.model import MiniMLLMConfig, build_mini_mllm
    from retain.training.config import DatasetSpec
    from retain.training.run import train
    from retain.utils.io import write_json_atomic
    from retain.utils.seed import seed_everything

    out.mkdir(parents=True, exist_ok=True)
    cfg = DemoConfig(scenario="mllm", out=str(out), device="cpu")
    prof = resolved_profile(cfg)
    seed_everything(cfg.seed)
    data = vqa_data(prof, cfg.seed)
    write_json_atomic(out / "vqa_stage1.json", data["stage1"])
    mllm, processor = build_mini_mllm(MiniMLLMConfig(language_model=cfg.model, image_size=prof.image_size,
                                                     seed=cfg.seed))
    vqa1 = DatasetSpec(path=str(out / "vqa_stage1.json"), type="task", image_folder=str(easy_vqa.image_folder()))
    recipe = _recipe(cfg, prof, out, "stage1", "projector", cfg.model, [vqa1], prof.stage1_steps, prof.lr_projector)
    result = train(recipe, model=mllm, tokenizer=processor, copy_model=False)
    rows = score_vqa(result.model, processor, data["heldout"], easy_vqa.image_folder(), easy_vqa.answers(),
                     batch_size=16)
    return {"vqa_acc": vqa_accuracy(rows), "correct": sum(r["correct"] for r in rows), "n": len(rows)}


if __name__ == "__main__":
    print(json.dumps(main(Path(sys.argv[1] if len(sys.argv) > 1 else "runs/stage1_check"))))
