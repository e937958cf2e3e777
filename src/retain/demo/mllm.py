"""``retain demo --scenario mllm``: the TG paper's headline case in miniature. Visual instruction tuning
makes an MLLM lose some of its base LLM's language; does mixing in the base LLM's TG corpus keep it?

base LLM (SmolLM2) ──► calibration + drift reference (what it knows) ──► TG self-decompression
miniature MLLM = SmolLM2 + frozen EfficientNet-Lite0 + new 2-layer projector (:mod:`retain.multimodal.model`)
  ──► stage 1: the projector alone on easy-VQA (feature alignment; the language path is untouched)
  ──► stage 2 four ways on the next easy-VQA examples: full (LLM + projector), full + TG (TG-SFT),
      LoRA, LoRAMoE + LBC with the TG corpus as the world type
  ──► every model: VQA accuracy on held-out easy-VQA (learned) and, through its text path, known-fact
      retention, margin change and KL drift against SmolLM2 (kept), with paired 95 % intervals
  ──► ``report.md``, ``demo.png``, ``demo.json``

- **Two references.** Retention and drift are measured against the base LLM (SmolLM2: its calibration
  and its own replies); the VQA gain is paired against the MLLM before stage 2 (stage 1), whose text
  path *is* SmolLM2 (the projector never touches text; its row shows KL 0 and retention 100 %, measured),
  so for the language side the two references coincide in this miniature.
- **Equal compute** as in the text demo: every stage-2 method runs the same steps × batch; a TG run gives
  ``tg_share`` of its batch to text-only TG dialogues (no image) and sees fewer VQA examples.
- **Budgets fixed by a written rule before any comparison** (``docs/mllm.md``): image size, steps,
  learning rates (stage 2: the text demo's per-kind rates, not re-tuned), item counts.
- **Never probe with trained items:** training uses the easy-VQA train images (dev images excluded),
  stage 1 and stage 2 disjoint slices of them; the VQA score is on the package's test images.
- Resumable like the text demo: each stage writes its result atomically and is skipped when re-run; a
  killed stage-2 training resumes from its last checkpoint.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from retain.errors import RetainError

MLLM_METHODS = ("full", "full_tg", "lora", "loramoe_tg", "lora_tg")
"""Stage-2 methods (keys of :data:`retain.demo.common.METHODS`)."""


@dataclass
class MllmProfile:
    """Budgets of the MLLM scenario (the rule that fixed them: docs/mllm.md)."""

    image_size: int
    """Square image side in pixels (easy-VQA images are 64 px): (image_size / 32)² image tokens."""
    stage1_steps: int
    """Optimizer steps of stage 1 (projector only)."""
    steps: int
    """Optimizer steps of each stage-2 method."""
    batch_size: int
    """Sequences per step (both stages)."""
    max_length: int
    """Token cap per training example (TG dialogues are cut; VQA examples are about 50 tokens)."""
    lr_projector: float
    """Peak learning rate of stage 1."""
    lr: dict[str, float]
    """Stage-2 peak learning rate per method kind (full / lora / loramoe)."""
    tg_share: float
    """Share of each TG run's batch taken from the TG corpus."""
    tg_levels: list[list[int]]
    """TG tree shape of the base LLM's corpus (the text demo's)."""
    vqa_items: int
    """Held-out easy-VQA questions scored per model (a seeded sample of the test split)."""
    eval_profile: str
    """Text-path evaluation suite (retain.evaluation.config.EvalSuite.profile)."""
    methods: list[str]
    """Stage-2 methods run by default."""
    eval_overrides: dict[str, Any] = field(default_factory=dict)
    """EvalSuite fields set over ``eval_profile``'s (as :class:`retain.demo.text.DemoProfile`'s)."""


MLLM_PROFILES: dict[str, MllmProfile] = {
    # <= 20 minutes on the 2-core CPU (measured time in the README); the rule: docs/mllm.md.
    "default": MllmProfile(
        image_size=64, stage1_steps=40, steps=24, batch_size=8, max_length=128, lr_projector=1e-3,
        lr={"full": 3e-5, "lora": 1e-3, "loramoe": 1e-3}, tg_share=0.25, tg_levels=[[16, 96], [2, 96]],
        vqa_items=300, eval_profile="quick", methods=["full", "full_tg", "lora", "loramoe_tg"],
    ),
    # A GPU: more steps and items, the full text suite.
    "full": MllmProfile(
        image_size=64, stage1_steps=300, steps=600, batch_size=32, max_length=256, lr_projector=1e-3,
        lr={"full": 3e-5, "lora": 1e-3, "loramoe": 1e-3}, tg_share=0.25, tg_levels=[[120, 256], [4, 192]],
        vqa_items=9673, eval_profile="full", methods=["full", "full_tg", "lora", "loramoe_tg", "lora_tg"],
    ),
    # Seconds, for tests: the plumbing, not the science.
    "smoke": MllmProfile(
        image_size=64, stage1_steps=2, steps=2, batch_size=2, max_length=96, lr_projector=1e-3,
        lr={"full": 1e-4, "lora": 1e-3, "loramoe": 1e-3}, tg_share=0.5, tg_levels=[[2, 16], [1, 16]],
        vqa_items=8, eval_profile="tiny", methods=["full", "loramoe_tg"],
        # fewer text-path items than `tiny`: every row is evaluated through the same code, just on fewer items
        eval_overrides={"probes": {"arc_easy": 6}, "behaviour": {"triviaqa": 4}, "drift_prompts": 2},
    ),
}


def mllm_methods(cfg) -> list[str]:
    """The stage-2 methods of ``cfg`` (a :class:`retain.demo.DemoConfig`), checked."""
    methods = list(cfg.methods or MLLM_PROFILES[cfg.profile].methods)
    for m in methods:
        if m not in MLLM_METHODS:
            raise RetainError(f"--methods: '{m}' is not a stage-2 method of --scenario mllm; choose from: "
                              f"{', '.join(MLLM_METHODS)}")
    if not methods:
        raise RetainError("--methods: empty; give at least one method")
    return methods


def resolved_profile(cfg) -> MllmProfile:
    from retain.demo.common import pick_profile

    return pick_profile(cfg, MLLM_PROFILES)


def vqa_data(prof: MllmProfile, seed: int) -> dict[str, list[dict]]:
    """``stage1`` / ``stage2`` (disjoint slices of the train images' questions, dev images excluded) and
    ``heldout`` (a seeded sample of the test split's questions)."""
    from retain.data import easy_vqa

    n1 = prof.stage1_steps * prof.batch_size
    n2 = prof.steps * prof.batch_size
    train = easy_vqa.records("train", seed=seed)
    if n1 + n2 > len(train):
        raise RetainError(f"profile needs {n1 + n2} easy-VQA training questions; the train split has {len(train)}")
    return {"stage1": train[:n1], "stage2": train[n1:n1 + n2],
            "heldout": easy_vqa.records("heldout", n=prof.vqa_items, seed=seed)}


def _recipe(cfg, prof: MllmProfile, out: Path, name: str, method: str, base_name: str, datasets, steps: int,
            lr: float):
    from retain.training.config import MixtureConfig, ModelConfig, OptimConfig, Recipe, TrainConfig

    return Recipe(
        datasets=datasets, model=ModelConfig(name=base_name, device=cfg.device), method=method,  # type: ignore[arg-type]
        mixture=MixtureConfig(size=steps * prof.batch_size, allow_repeat=True),
        optim=OptimConfig(lr=lr, warmup_ratio=0.1, schedule="cosine"),
        train=TrainConfig(output_dir=str(out / name), max_steps=steps, batch_size=prof.batch_size,
                          max_length=prof.max_length, seed=cfg.seed, save_every=max(1, steps // 4), progress=False),
    )


def stage2_recipe(cfg, prof: MllmProfile, out: Path, name: str, vqa_file: Path, tg_path: Path | None):
    """The stage-2 recipe of one method: easy-VQA (task) [+ the TG corpus, text only (world)], on the
    stage-1 model."""
    from retain.data import easy_vqa
    from retain.demo.common import METHODS
    from retain.training.config import DatasetSpec

    arm = METHODS[name]
    method, with_tg = arm.method, arm.tg
    vqa = DatasetSpec(path=str(vqa_file), type="task", image_folder=str(easy_vqa.image_folder()))
    datasets = [vqa]
    if with_tg:
        vqa.weight = 1.0 - prof.tg_share
        datasets.append(DatasetSpec(path=str(tg_path), format="messages", type="world", weight=prof.tg_share))
    return _recipe(cfg, prof, out, name, method, str(out / "stage1" / "model"), datasets, prof.steps, prof.lr[method])


def add_mllm_comparisons(rows: list[dict[str, Any]], ref) -> None:
    """``vs_base``: retention / margin / drift against the base LLM, the VQA gain against stage 1 (the
    MLLM before stage 2); ``vs_full`` / ``vs_lora``: every metric against that stage-2 baseline."""
    from retain.evaluation.compare import compare
    from retain.evaluation.report import BASELINES

    by = {r["name"]: r for r in rows}
    base, stage1 = by["base"], by.get("stage1")
    for r in rows:
        if r["name"] == "base":
            continue
        vb = compare(r, base, ref.known, ref.mc_probes, b_is_base=True)
        vb["domain"] = (compare(r, stage1, ref.known, ref.mc_probes)["domain"]
                        if stage1 is not None and r is not stage1 else None)
        r["vs_base"] = vb
        for name in BASELINES:
            other = by.get(name)
            r[f"vs_{name}"] = (compare(r, other, ref.known, ref.mc_probes)
                               if other and r is not other and r is not stage1 else None)


def run_mllm_demo(cfg) -> int:
    """``retain demo --scenario mllm`` (cfg: :class:`retain.demo.DemoConfig`)."""

    from retain.data import easy_vqa
    from retain.demo.common import (
        arm_row, check_tg_corpus, open_run, reference_stage, result_row, run_summary, tg_stage,
    )
    from retain.evaluation.config import EvalSuite
    from retain.evaluation.vqa import evaluate_mllm
    from retain.models import load_model
    from retain.multimodal.model import MiniMLLMConfig, build_mini_mllm, load_mllm
    from retain.training.config import DatasetSpec
    from retain.training.run import train
    from retain.utils import console
    from retain.utils.io import read_json, write_json_atomic, write_text_atomic

    prof = resolved_profile(cfg)
    methods = mllm_methods(cfg)
    if cfg.tg_corpus:
        check_tg_corpus(cfg.tg_corpus)
    easy_vqa.image_folder()  # the package is installed: before any model loads
    out = Path(cfg.out or "runs/demo_mllm")
    con, device, stage = open_run(cfg, out)

    con.rule(f"[bold]retain demo --scenario mllm[/] · profile {cfg.profile} · LLM {cfg.model} · {', '.join(methods)}")
    t0 = time.perf_counter()
    base, tok = load_model(cfg.model, device=device)
    suite = EvalSuite.profile(prof.eval_profile, domain=None, seed=cfg.seed, **prof.eval_overrides)
    stage("load base LLM", t0)

    con.rule("1/4 base LLM: calibration (known facts) and drift reference")
    ref = reference_stage(base, tok, suite, out, stage)
    rows: list[dict[str, Any]] = [{"name": "base", "label": f"{cfg.model} (base LLM, text only)", **ref.base_metrics,
                                   "trainable_params": 0, "train_seconds": 0.0}]

    con.rule("2/4 TG self-decompression (base LLM)")
    tg_path = tg_stage(cfg, prof, methods, out, base, tok, stage)
    del base

    data = vqa_data(prof, cfg.seed)
    data_dir = out / "data"
    for part in ("stage1", "stage2"):
        write_json_atomic(data_dir / f"vqa_{part}.json", data[part])
    majority, majority_share = easy_vqa.majority_answer(data["heldout"])

    con.rule("3/4 stage 1: the projector alone")
    result_file = out / "stage1" / "demo_result.json"
    t0 = time.perf_counter()
    if result_file.exists():
        rows.append(read_json(result_file))
        stage1, processor = load_mllm(out / "stage1" / "model")
        stage1.to(device)
        stage("build MLLM + train stage 1", t0, done_earlier=True)
        stage("evaluate stage1", t0, done_earlier=True)
    else:
        mllm, processor = build_mini_mllm(MiniMLLMConfig(language_model=cfg.model, image_size=prof.image_size,
                                                         seed=cfg.seed))
        vqa1 = DatasetSpec(path=str(data_dir / "vqa_stage1.json"), type="task", image_folder=str(easy_vqa.image_folder()))
        recipe = _recipe(cfg, prof, out, "stage1", "projector", cfg.model, [vqa1], prof.stage1_steps, prof.lr_projector)
        if (out / "stage1").exists():
            shutil.rmtree(out / "stage1")
        result = train(recipe, model=mllm, tokenizer=processor, copy_model=False)
        stage1 = result.model
        stage("build MLLM + train stage 1", t0)
        t0 = time.perf_counter()
        metrics = evaluate_mllm(stage1, processor, suite, ref, data["heldout"])
        stage("evaluate stage1", t0)
        row = result_row("stage1", "stage 1: projector only", metrics, result, prof.lr_projector, out / "stage1")
        write_json_atomic(result_file, row)
        rows.append(row)

    con.rule("4/4 stage 2: visual instruction tuning, four ways")
    for name in methods:
        rows.append(arm_row(name, lambda: stage2_recipe(cfg, prof, out, name, data_dir / "vqa_stage2.json", tg_path),
                            stage1, processor, device, out, stage, con,
                            lambda model: evaluate_mllm(model, processor, suite, ref, data["heldout"])))

    add_mllm_comparisons(rows, ref)
    summary = {"scenario": "mllm", **run_summary(cfg, prof, rows, tg_path, stage, ref),
               "vqa": {"heldout_items": len(data["heldout"]), "majority_answer": majority,
                       "majority_share": majority_share, "stage1_examples": len(data["stage1"]),
                       "stage2_examples": len(data["stage2"])}}
    write_json_atomic(out / "demo.json", summary)
    from retain.evaluation.report import mllm_markdown, plot_demo, print_demo_table

    print_demo_table(rows, domain="VQA", domain_ref="stage 1")
    plot_demo(rows, out / "demo.png", domain="held-out easy-VQA accuracy %", domain_ref="stage 1")
    write_text_atomic(out / "report.md", mllm_markdown(summary))
    console.result(f"wrote {out / 'report.md'}, {out / 'demo.png'}, {out / 'demo.json'} · "
                   f"total {summary['total_seconds'] / 60:.1f} min")
    return 0
