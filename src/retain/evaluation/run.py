"""``retain eval``: base reference once, then every fine-tuned folder; eval.json, eval.md, eval.png.

- Inputs are validated before any model is loaded (missing folders, probe files in a bad format,
  unknown probe names, and every ``--tuned`` folder completely: files, config keys, tensor names and
  shapes against its base, safetensors unless ``--allow_pickle``), so a bad command fails in a second
  or two with one line and writes nothing.
- The base reference (calibration + drift reference) goes to ``out/`` first, so ``--reference out``
  skips recomputing it next time; every output file is written atomically.
- Image-text-to-text folders (:func:`retain.multimodal.model.is_mllm_folder`, e.g. written by
  ``retain train`` with method ``projector`` or ``full`` on an MLLM) are scored through their text path
  (the same probes, retention and KL drift) and get held-out easy-VQA accuracy as their domain score
  (``--vqa_items``; the text domain is then off). Two references, one command each: ``--base smollm2``
  (the base LLM) or ``--base <the MLLM before stage 2>``.
"""

from __future__ import annotations

import os
from dataclasses import asdict
from pathlib import Path

from retain.errors import RetainError
from retain.evaluation.config import EvalConfig
from retain.utils import console


def _check_inputs(cfg: EvalConfig, suite) -> None:
    from retain.evaluation.probes import BEHAVIOUR_SOURCES, BUILTIN_KINDS
    from retain.evaluation.suite import load_probe_files

    for name in suite.probes:
        if name not in BUILTIN_KINDS:
            raise RetainError(f"--probes: unknown probe '{name}'; choose from: {', '.join(sorted(BUILTIN_KINDS))}")
    for name in suite.behaviour or {}:
        if name not in BEHAVIOUR_SOURCES:
            raise RetainError(f"--behaviour: unknown source '{name}'; choose from: {', '.join(BEHAVIOUR_SOURCES)}")
    # raises file:line on bad format, on two files of one name, and on shots that give items away
    load_probe_files(suite.probe_files, suite.probe_prompt)
    from retain.adapters.check import check_finetuned_folder

    if Path(cfg.base).expanduser().is_dir():
        check_finetuned_folder(Path(cfg.base).expanduser(), allow_pickle=cfg.allow_pickle,
                               trust_remote_code=cfg.trust_remote_code)
    base_dir = Path(cfg.base).expanduser().resolve()
    for t in cfg.tuned:
        p = Path(t).expanduser()
        if not p.is_dir():
            raise RetainError(f"--tuned {t}: no such folder; give a folder written by retain train")
        if p.resolve() == base_dir:
            console.warn(f"--tuned {t} is the --base folder: its row repeats the base (retention 100 %, KL 0); "
                         "give the fine-tuned folder (a run's model/)")
        # files, config keys, tensor names and shapes against the base: before any model runs
        check_finetuned_folder(p, allow_pickle=cfg.allow_pickle, trust_remote_code=cfg.trust_remote_code)
    if suite.domain:
        from retain.data.olmo_eval import DOMAINS

        if suite.domain not in DOMAINS or suite.domain == "gsm8k":
            choices = ", ".join(d for d in DOMAINS if d != "gsm8k")
            raise RetainError(f"--domain {suite.domain}: choose one of {choices}, or none")
    if cfg.lm_eval_include and not Path(cfg.lm_eval_include).is_dir():
        raise RetainError(f"--lm_eval_include {cfg.lm_eval_include}: no such folder")
    if cfg.reference and not (Path(cfg.reference) / "calibration.json").exists():
        raise RetainError(f"--reference {cfg.reference}: no calibration.json inside")


def _label(path: str) -> str:
    p = Path(path)
    return p.name if p.name not in ("model", "final", "adapter") else f"{p.parent.name}/{p.name}"


def _harness(cfg: EvalConfig, model, tok) -> dict:
    """``{"lm_eval": {task: {metric: value}}}`` when lm-eval tasks were asked for, else {}."""
    if not cfg.lm_eval_tasks:
        return {}
    from retain.evaluation.harness import run_harness

    out = run_harness(model, tok, cfg.lm_eval_tasks, include_path=cfg.lm_eval_include, limit=cfg.lm_eval_limit,
                      include_defaults=cfg.lm_eval_include is None, seed=cfg.seed)
    return {"lm_eval": {task: {k: v for k, v in res.items() if isinstance(v, (int, float))}
                        for task, res in out["results"].items()}}


def _load(path: str, cfg: EvalConfig, key: str):
    """(model, tokenizer, processor or None) through the one loader; an MLLM folder comes with its processor."""
    from retain.models import load_model

    model, tok = load_model(path, device=cfg.device, allow_pickle=cfg.allow_pickle,
                            trust_remote_code=cfg.trust_remote_code, key=key)
    if hasattr(tok, "image_processor"):  # an image-text-to-text folder: (model, processor)
        return model, tok.tokenizer, tok
    return model, tok, None


def run_eval(cfg: EvalConfig) -> int:
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from retain.multimodal.model import is_mllm_folder

    suite = cfg.suite()
    multimodal = any(is_mllm_folder(Path(p).expanduser()) for p in [cfg.base, *cfg.tuned])
    heldout: list[dict] = []
    if multimodal and cfg.vqa_items > 0:
        from retain.data import easy_vqa

        suite.domain = None  # the visual domain replaces the text one
        heldout = easy_vqa.records("heldout", n=cfg.vqa_items, seed=cfg.seed)
    _check_inputs(cfg, suite)

    import torch

    from retain.evaluation.report import eval_markdown_table, plot_eval, print_eval_table
    from retain.evaluation.suite import BaseReference, evaluate
    from retain.utils.io import write_json_atomic, write_text_atomic

    out = Path(cfg.out)
    torch.manual_seed(cfg.seed)
    base, tok, base_proc = _load(cfg.base, cfg, "--base")
    if cfg.reference:
        ref = BaseReference.load(cfg.reference, suite)
    else:
        console.status(f"calibrating on the base model ({cfg.base}) ...")
        ref = BaseReference.build(base, tok, suite)
        ref.save(out)
    if base_proc is not None and heldout:  # an MLLM base: its VQA items pair with the tuned models'
        from retain.evaluation.suite import evaluate_from_results
        from retain.evaluation.vqa import PROBE_NAME, score_vqa

        from retain.data import easy_vqa

        vqa = score_vqa(base, base_proc, heldout, easy_vqa.image_folder(), easy_vqa.answers(), batch_size=suite.batch_size)
        items = ref.base_metrics.get("items") or {}
        merged = evaluate_from_results({PROBE_NAME: vqa}, None, suite, {})  # the domain fields of the base row
        ref.base_metrics.update(domain_score=merged["domain_score"], domain=merged["domain"],
                                items={**items, PROBE_NAME: merged["items"][PROBE_NAME]})
    rows = []
    if not cfg.skip_base:
        rows.append({"model": "base", "path": cfg.base, **ref.base_metrics, **_harness(cfg, base, tok)})
    del base
    from retain.evaluation.compare import compare

    for t in cfg.tuned:
        console.status(f"evaluating {t} ...")
        model, ttok, proc = _load(t, cfg, "--tuned")
        if proc is not None and heldout:
            from retain.evaluation.vqa import evaluate_mllm

            metrics = evaluate_mllm(model, proc, suite, ref, heldout)
        else:
            metrics = evaluate(model, ttok, suite, ref)
        # Paired 95 % intervals of the difference from the base (domain, retention, margins, drift).
        metrics["vs_base"] = compare(metrics, ref.base_metrics, ref.known, ref.mc_probes, b_is_base=True)
        rows.append({"model": _label(t), "path": t, **metrics, **_harness(cfg, model, ttok)})
        del model
    if not rows:
        raise RetainError("nothing to report: give --tuned folders or drop --skip_base")
    write_json_atomic(out / "eval.json", {"suite": asdict(suite), "base": cfg.base, "rows": rows})
    table = eval_markdown_table(rows)
    known = ", ".join(f"{k}: {len(v)}" for k, v in ref.known.items())
    write_text_atomic(out / "eval.md", f"# retain eval\n\n{table}\nKnown items (base calibration): {known}.\n")
    plot_eval(rows, out / "eval.png")
    print_eval_table(rows)
    console.result(f"wrote {out / 'eval.json'}, {out / 'eval.md'}, {out / 'eval.png'}")
    return 0
