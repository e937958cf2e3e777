"""Issue 20, item 6: the multimodal scenario with several draws. Does TG-SFT bring the base LLM's language back
after visual instruction tuning? Rules, fixed before any run: docs/mllm.md, "Several draws".

    python benchmarks/mllm_draws.py run      # draw 0 = `retain demo --scenario mllm`; draws 1, 2 = stage 2 again
    python benchmarks/mllm_draws.py report   # table + plot -> <out>/mllm_draws.md, .png, .json

A draw ``s`` is TG corpus ``s`` (the demo's TG stage with ``--seed s``) and stage-2 training seed ``s``; stage 1,
the calibration and every evaluation item are draw 0's. ``--tg_root`` reuses the corpora of
``benchmarks/learn_and_keep.py`` (``<tg_root>/draw<s>/tg/sft.jsonl``, the same files) instead of making them.
Resumable: every trained run and every evaluation is a file under ``--out``.

Units: accuracies and retention in %; intervals are paired 95 % bootstrap intervals over items
(:func:`retain.evaluation.stats.paired_bootstrap`) on per-item outcomes averaged over the draws.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

from learn_and_keep import Study, difference_table, log, pool_draws

SEEDS = (0, 1, 2)
ARMS = ("full", "full_tg", "lora", "loramoe_tg")
LABELS = {"stage1": "stage 1 (projector only)", "full": "full FT", "full_tg": "full FT + TG", "lora": "LoRA",
          "loramoe_tg": "LoRAMoE + LBC + TG"}
VIEWS = (("domain", "VQA acc."), ("behaviour", "behaviour kept"), ("retention", "knowledge kept"))


def tg_corpus(root: Path, tg_root: Path | None, seed: int) -> Path:
    """TG corpus draw ``seed``: ``<tg_root>/draw<seed>/tg/sft.jsonl`` when given, else made here by
    ``benchmarks/learn_and_keep.py``'s :meth:`Study.tg` (the demo's TG stage with ``--seed seed``) into
    ``<root>/draw<seed>/tg/``."""
    path = (tg_root or root) / f"draw{seed}" / "tg" / "sft.jsonl"
    if path.exists():
        return path
    if tg_root is not None:
        raise SystemExit(f"{path}: no TG corpus there; drop --tg_root to make it here")
    return Study(root).tg(seed)


def phase_run(root: Path, tg_root: Path | None) -> None:
    from retain.demo import DemoConfig
    from retain.demo.common import train_arm
    from retain.demo.mllm import MLLM_PROFILES, run_mllm_demo, stage2_recipe, vqa_data
    from retain.evaluation.config import EvalSuite
    from retain.evaluation.suite import BaseReference
    from retain.evaluation.vqa import evaluate_mllm
    from retain.multimodal.model import load_mllm
    from retain.utils.io import write_json_atomic

    demo = root / "draw0"
    cfg = DemoConfig(scenario="mllm", out=str(demo), seed=0, device="cpu", tg_corpus=str(tg_corpus(root, tg_root, 0)))
    t = time.perf_counter()
    run_mllm_demo(cfg)
    log(f"draw 0 (the demo): {time.perf_counter() - t:.0f} s")
    prof = dataclasses.replace(MLLM_PROFILES["default"])
    suite = EvalSuite.profile(prof.eval_profile, domain=None, seed=0, **prof.eval_overrides)
    ref = BaseReference.load(demo / "reference", suite)
    heldout = vqa_data(prof, 0)["heldout"]
    stage1, processor = load_mllm(demo / "stage1" / "model")
    for seed in SEEDS[1:]:
        tg = tg_corpus(root, tg_root, seed)
        for arm in ARMS:
            run_dir = root / f"draw{seed}" / arm
            if (run_dir / "demo_result.json").exists():
                continue
            recipe = stage2_recipe(cfg, prof, demo, arm, demo / "data" / "vqa_stage2.json", tg)
            recipe.train.output_dir, recipe.train.seed = str(run_dir), seed
            t = time.perf_counter()
            result, model = train_arm(recipe, run_dir, stage1, processor, "cpu")
            train_s = time.perf_counter() - t
            t = time.perf_counter()
            m = evaluate_mllm(model, processor, suite, ref, heldout)
            write_json_atomic(run_dir / "demo_result.json", {"name": arm, **m, "train_seconds": round(train_s, 1),
                                                            "eval_seconds": round(time.perf_counter() - t, 1)})
            log(f"draw {seed} {arm}: VQA {100 * m['domain_score']:.1f}, behaviour kept "
                f"{m.get('behaviour_retention')}, knowledge kept {m.get('retention')}, train {train_s:.0f} s")
            del model


def phase_report(root: Path) -> None:
    from retain.evaluation.compare import outcomes
    from retain.utils.io import write_json_atomic, write_text_atomic

    demo = root / "draw0"
    meta = json.loads((demo / "reference" / "calibration.json").read_text())
    known, mc = meta["known"], {n for n in meta["known"] if not n.startswith("chat:")}
    rows0 = {r["name"]: r for r in json.loads((demo / "demo.json").read_text())["rows"]}
    oc_ref = {"domain": outcomes(rows0["stage1"], known, mc)["domain"][0],
              **{v: outcomes(rows0["base"], known, mc)[v][0] for v in ("behaviour", "retention")}}

    def load(arm, seed):
        f = root / f"draw{seed}" / arm / "demo_result.json"
        return json.loads(f.read_text()) if f.exists() else None

    def pct(o: dict[str, float]) -> float:
        return 100 * sum(o.values()) / len(o)

    res: dict = {"arms": {}}
    pooled: dict[str, dict] = {}
    lines = [f"| method | draws | {' | '.join(v + ' %' for _, v in VIEWS)} | train s |", "|---|---|---|---|---|---|"]
    s1 = outcomes(rows0["stage1"], known, mc)
    lines.append(f"| {LABELS['stage1']} | 1 | " + " | ".join(f"{pct(s1[v][0]):.1f}" for v, _ in VIEWS)
                 + f" | {rows0['stage1'].get('train_seconds', 0):.0f} |")
    for arm in ARMS:
        rows = [r for r in (load(arm, s) for s in SEEDS) if r is not None]
        if not rows:
            continue
        cells, rec, pooled[arm] = pool_draws([outcomes(r, known, mc) for r in rows], oc_ref, VIEWS, "vs_ref")
        secs = [r.get("train_seconds", 0) for r in rows]
        rec["train_seconds"] = sum(secs) / len(secs)
        res["arms"][arm] = rec
        lines.append(f"| {LABELS[arm]} | {len(rows)} | " + " | ".join(cells) + f" | {rec['train_seconds']:.0f} |")
    pairs = [("full_tg", "full"), ("loramoe_tg", "lora"), ("lora", "full"), ("loramoe_tg", "full_tg")]
    diff_lines, res["differences"] = difference_table(pooled, pairs, [(v, t + " (pts)") for v, t in VIEWS], LABELS)
    ref_pct = {v: pct(oc_ref[v]) for v, _ in VIEWS}
    res["reference"] = {**ref_pct, "known": {v: len(oc_ref[v]) for v in ("behaviour", "retention")},
                        "vqa_items": len(oc_ref["domain"])}
    res["verdicts"] = verdicts(res)
    write_json_atomic(root / "mllm_draws.json", res)
    plot(res, ref_pct, root / "mllm_draws.png")
    md = ["# Multimodal scenario, several draws: results", "",
          "Cells: mean over the draws (min–max over draws) [paired 95 % interval against the reference, per-item "
          f"outcomes averaged over the draws]. VQA: {len(oc_ref['domain'])} held-out easy-VQA questions, against stage 1 "
          f"({ref_pct['domain']:.1f} %). Behaviour / knowledge kept: % of the base LLM's "
          f"{len(oc_ref['behaviour'])} / {len(oc_ref['retention'])} known items, against the base LLM (100 %).", "",
          *lines, "", "Differences (per-item outcomes averaged over the draws; paired 95 % intervals):", "", *diff_lines,
          "", *(f"- {v}" for v in res["verdicts"]), "", "![several draws](mllm_draws.png)", ""]
    write_text_atomic(root / "mllm_draws.md", "\n".join(md))
    print("\n".join(md))


def verdicts(res: dict) -> list[str]:
    """The rule's statements (docs/mllm.md, "Several draws"), read off the intervals."""
    out = []
    for tg, plain in (("full_tg", "full"), ("loramoe_tg", "lora")):
        d = res["differences"].get(f"{tg} - {plain}", {}).get("behaviour")
        v = res["arms"].get(tg, {}).get("behaviour", {}).get("vs_ref")
        if d is None or v is None:
            continue
        back = "brings the language back" if d[1] > 0 else "does not bring the language back"
        base = ("comes back to the base LLM (its interval holds 0)" if v[1] <= 0 <= v[2]
                else f"stays below the base LLM ({v[0]:+.1f} [{v[1]:+.1f}, {v[2]:+.1f}] points)")
        out.append(f"{LABELS[tg]} {back} against {LABELS[plain]} (behaviour {d[0]:+.1f} [{d[1]:+.1f}, {d[2]:+.1f}]) "
                   f"and {base}.")
    return out


def plot(res: dict, ref: dict, path: Path) -> None:
    """One panel per view: each draw's value as a dot, the mean with its paired 95 % interval against the
    reference as an error bar, the reference (stage 1 / base LLM) as a dashed line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(14, 4.2))
    arms = [a for a in ARMS if a in res["arms"]]
    for ax, (view, title) in zip(axes, VIEWS):
        for i, arm in enumerate(arms):
            rec = res["arms"][arm][view]
            d, lo, hi = rec["vs_ref"]
            mean = ref[view] + d
            ax.errorbar([i], [mean], yerr=[[d - lo], [hi - d]], fmt="o", capsize=4, color=f"C{i}")
            ax.scatter([i + 0.15] * len(rec["per_draw"]), rec["per_draw"], marker="x", s=20, color=f"C{i}")
        ax.axhline(ref[view], ls="--", color="grey", lw=1)
        ax.set_xticks(range(len(arms)), [LABELS[a] for a in arms], rotation=20, fontsize=8)
        ax.set_title(f"{title} (%)" + (" · dashed: stage 1" if view == "domain" else " · dashed: base LLM"), fontsize=9)
        ax.grid(alpha=0.3, axis="y")
    fig.suptitle("Visual instruction tuning of the miniature MLLM, 3 draws: mean with paired 95 % interval "
                 "(o), each draw (x)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("phase", choices=["run", "report"])
    ap.add_argument("--out", default="runs/mllm_draws")
    ap.add_argument("--tg_root", default=None, help="reuse learn_and_keep's TG corpora: <tg_root>/draw<s>/tg/sft.jsonl")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = ap.parse_args()
    root = Path(args.out)
    if args.phase == "report":
        return phase_report(root)
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    phase_run(root, Path(args.tg_root) if args.tg_root else None)


if __name__ == "__main__":
    main()
