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

from retain.assets import model_name
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
    from retain.adapters.methods import check_finetuned_folder

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
        from retain.evaluation.domain_file import is_domain_path, load_domain_file

        if is_domain_path(suite.domain):
            load_domain_file(suite.domain)  # your own data: file:line errors before any model loads
        elif suite.domain not in DOMAINS or suite.domain == "gsm8k":
            choices = ", ".join(d for d in DOMAINS if d != "gsm8k")
            raise RetainError(f"--domain {suite.domain}: choose one of {choices}, a data file or folder of your own, "
                              "or none")
    if cfg.lm_eval_include and not Path(cfg.lm_eval_include).is_dir():
        raise RetainError(f"--lm_eval_include {cfg.lm_eval_include}: no such folder")
    if cfg.reference and not (Path(cfg.reference) / "calibration.json").exists():
        raise RetainError(f"--reference {cfg.reference}: no calibration.json inside")


def _check_gate(cfg: EvalConfig, suite, vqa: bool = False):
    """The gate (None without ``--gate``), its rules checked against what this run measures."""
    if cfg.gate is None:
        return None
    from retain.evaluation.gate import load_gate

    gate = load_gate(cfg.gate, cfg.gate_mode)
    for rule in gate.rules:
        missing = {"domain": not suite.domain and not vqa, "drift": suite.drift_prompts <= 0,
                   "knowledge_retention": not (suite.probes or suite.probe_files)}.get(rule.name, False)
        if rule.name.startswith("lm_eval:"):
            missing = rule.name.split(":", 1)[1] not in cfg.lm_eval_tasks
        if missing:
            raise RetainError(f"{gate.source}: rule {rule.name}: this run does not measure it; add what it needs "
                              "(--domain, drift prompts, probes or --lm_eval_tasks) or drop the rule")
    return gate


def _label(path: str) -> str:
    p = Path(path)
    return p.name if p.name not in ("model", "final", "adapter") else f"{p.parent.name}/{p.name}"


def _harness(cfg: EvalConfig, model, tok) -> dict:
    """``{"lm_eval": {task: {metric: value}}, "lm_eval_items": {task: {"metric", "doc_ids", "values"}}}``
    when lm-eval tasks were asked for (per-sample results kept, to pair a tuned model with its base),
    else {}."""
    if not cfg.lm_eval_tasks:
        return {}
    from retain.evaluation.harness import run_harness, sample_outcomes

    out = run_harness(model, tok, cfg.lm_eval_tasks, include_path=cfg.lm_eval_include, limit=cfg.lm_eval_limit,
                      include_defaults=cfg.lm_eval_include is None, seed=cfg.seed, log_samples=True)
    return {"lm_eval": {task: {k: v for k, v in res.items() if isinstance(v, (int, float))}
                        for task, res in out["results"].items()},
            "lm_eval_items": sample_outcomes(out)}


def _load(path: str, cfg: EvalConfig, key: str):
    """(model, tokenizer, processor or None) through the one loader; an MLLM folder comes with its processor."""
    from retain.models import load_model

    model, tok = load_model(path, device=cfg.device, allow_pickle=cfg.allow_pickle,
                            trust_remote_code=cfg.trust_remote_code, key=key)
    if hasattr(tok, "image_processor"):  # an image-text-to-text folder: (model, processor)
        return model, tok.tokenizer, tok
    return model, tok, None


def run_eval(cfg: EvalConfig) -> int:
    if cfg.gate is not None and not cfg.tuned:
        return gate_saved(cfg)
    if cfg.show != "none" and not cfg.tuned:
        return show_saved_flips(cfg)
    from retain.utils.startup import import_ml_stack

    import_ml_stack()  # models load below: the stack's import with the collector paused (about 2 s sooner)
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
    gate = _check_gate(cfg, suite, vqa=bool(heldout))

    import torch

    from retain.evaluation.flips import item_flips
    from retain.evaluation.suite import BaseReference, evaluate

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
    rows, flips = [], []
    base_harness = _harness(cfg, base, tok)  # also with --skip_base: the tuned models' tasks pair with it
    if not cfg.skip_base:
        rows.append({"model": "base", "path": model_name(cfg.base), **ref.base_metrics, **base_harness})
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
        harness = _harness(cfg, model, ttok)
        if harness:  # lm-eval tasks, paired sample by sample with the base
            from retain.evaluation.harness import paired_tasks

            metrics["vs_base"].update(paired_tasks(harness["lm_eval_items"], base_harness["lm_eval_items"]))
        rows.append({"model": _label(t), "path": t, **metrics, **harness})
        flips += item_flips(_label(t), metrics.get("items") or {}, ref.base_metrics.get("items") or {},
                            [*ref.probes, ref.domain], ref.known)
        del model
    if not rows:
        raise RetainError("nothing to report: give --tuned folders or drop --skip_base")
    return _report(cfg, suite, ref, rows, flips, gate)


def _report(cfg: EvalConfig, suite, ref, rows: list[dict], flips: list[dict], gate) -> int:
    """eval.json, eval_items.jsonl, eval.md, eval.png, gate.json; tables, verdict, flips and gate lines on
    stdout. Returns 1 when the gate fails, else 0."""
    from retain.evaluation.flips import FLIPS_FILE, flip_lines, flips_markdown
    from retain.evaluation.gate import GATE_FILE, evaluate_gate, gate_summary
    from retain.evaluation.report import eval_markdown_table, plot_eval, print_eval_table, prompt_lines
    from retain.evaluation.verdict import legend, verdict_lines
    from retain.utils.io import write_json_atomic, write_jsonl_atomic, write_text_atomic

    out = Path(cfg.out)
    prompts = {p.name: p.prompt_format for p in ref.probes}
    write_json_atomic(out / "eval.json", {"suite": asdict(suite), "base": cfg.base, "prompts": prompts, "rows": rows})
    write_jsonl_atomic(out / FLIPS_FILE, flips)
    lines = verdict_lines(rows)
    gated = evaluate_gate(gate, rows) if gate is not None else []
    known = ", ".join(f"{k}: {len(v)}" for k, v in ref.known.items())
    md = ["# retain eval", "", "## Verdict", "", *([f"- {v}" for v in lines] or ["- (no fine-tuned model)"]), ""]
    if gate is not None:
        summary = gate_summary(gate, gated)
        md += [f"## Gate ({gate.mode}): {'passed' if summary['passed'] else 'FAILED'}", "",
               *[f"- {g['line']}" for g in gated], ""]
    md += ["## Scores", "", eval_markdown_table(rows), *legend(), "",
           f"Known items (base calibration): {known or 'none'}.", "", *prompt_lines({"prompts": prompts}),
           "## What flipped", "", flips_markdown(flips), ""]
    write_text_atomic(out / "eval.md", "\n".join(md))
    plot_eval(rows, out / "eval.png")
    print_eval_table(rows)
    console.result("verdict (paired 95 % intervals vs the base):" if lines else "verdict: no fine-tuned model")
    for v in lines:
        console.result(f"  {v}")
    if cfg.show != "none":
        for line in flip_lines(flips, cfg.show):
            console.result(line)
    elif flips:
        lost = sum(f["change"] == "lost" for f in flips)
        console.result(f"{len(flips)} items flipped ({lost} lost, {len(flips) - lost} gained): "
                       f"retain eval --out {out} --show lost")
    written = [out / n for n in ("eval.json", FLIPS_FILE, "eval.md", "eval.png")]
    rc = 0
    if gate is not None:
        rc = _write_gate(gate, gated, out)
        written.append(out / GATE_FILE)
    console.result(f"wrote {', '.join(map(str, written))}")
    return rc


def _write_gate(gate, gated: list[dict], out: Path, source: Path | None = None) -> int:
    """``out/gate.json`` and the gate's lines on stdout (``source``: the saved evaluation it judged, named in
    the status line). Returns 1 when a rule failed, else 0."""
    from retain.evaluation.gate import GATE_FILE, gate_summary
    from retain.utils.io import write_json_atomic

    summary = gate_summary(gate, gated)
    write_json_atomic(out / GATE_FILE, summary)
    on = f" on {source}" if source is not None else ""
    console.result(f"gate ({gate.mode}){on}: {'passed' if summary['passed'] else 'FAILED'}")
    for g in gated:
        console.result(f"  {g['line']}")
    return 0 if summary["passed"] else 1


def gate_saved(cfg: EvalConfig) -> int:
    """``retain eval --out DIR --gate G`` without ``--tuned``: apply the gate to the evaluation saved in
    ``DIR/eval.json`` (no model is loaded), write ``DIR/gate.json``; 1 when a rule fails. A rule the saved run
    did not measure fails ("not measured in this run")."""
    from retain.evaluation.gate import GATE_FILE, evaluate_gate, load_gate
    from retain.utils.io import read_json

    gate = load_gate(cfg.gate, cfg.gate_mode)  # a bad gate file is named first
    path = Path(cfg.out) / "eval.json"
    if not path.exists():
        raise RetainError(f"--gate: no --tuned folder to gate and no saved evaluation at {path}; give --tuned, "
                          "or point --out at an earlier retain eval's folder")
    rows = read_json(path)["rows"]
    gated = evaluate_gate(gate, rows)
    if not gated:
        raise RetainError(f"--gate: {path} holds no fine-tuned row to gate; run retain eval with --tuned first")
    rc = _write_gate(gate, gated, Path(cfg.out), source=path)
    console.result(f"wrote {Path(cfg.out) / GATE_FILE}")
    return rc


def show_saved_flips(cfg: EvalConfig) -> int:
    """``retain eval --out DIR --show lost`` without ``--tuned``: print an earlier run's flipped items."""
    from retain.evaluation.flips import FLIPS_FILE, flip_lines
    from retain.utils.io import read_jsonl

    path = Path(cfg.out) / FLIPS_FILE
    if not path.exists():
        raise RetainError(f"--show {cfg.show}: {path} not found; run retain eval with --tuned first (or point "
                          "--out at its folder)")
    lines = flip_lines(read_jsonl(path), cfg.show)
    for line in lines:
        console.result(line)
    if not lines:
        console.status(f"no {cfg.show if cfg.show != 'all' else 'flipped'} items in {path}")
    return 0
