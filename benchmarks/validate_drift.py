"""Do the drift measures order fine-tunes the way their answers changed? Measured on saved demo models.

    python benchmarks/validate_drift.py --demo runs/demo [--extra runs/demo_full48] [--alphas 0.25 0.5]
                                        [--out docs/drift_validation.json]

Models: every row of ``<demo>/demo.json`` (the base and each method), the rows of the ``--extra`` demo
folders (e.g. full FT trained longer: ``retain demo --methods '[full]' --steps 48 --out runs/demo_full48``
with the demo's ``reference/`` copied in), and weaker versions of the demo's full fine-tune made by
interpolating the weights, ``base + alpha (full - base)`` for each ``--alphas`` (a dose series of one
update direction, scored with the demo's own suite and base reference).

What "the answers changed" means here, per model, from the behaviour probe (the model's own chat replies):

- ``lost``: 1 - behaviour retention (share of the base's correct chat answers it no longer gives);
- ``label``: share of its replies that open with an answer label ("Answer: X"), the domain's format.

The drift measures ranked against them: per-token KL over the whole reply (``kl_drift``), KL over the
first 4 reply tokens (``kl_opening``) and the share of changed replies (``reply_change``). The script prints
a table and the Spearman rank correlation of each measure with ``lost`` and with ``label`` over the models,
and writes both to ``--out`` (JSON). Not a test: it reads what the demo wrote and scores two more models.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

MEASURES = ("kl_drift", "kl_opening", "reply_change")
TARGETS = ("lost", "label")


def spearman(x: list[float], y: list[float]) -> float:
    """Spearman's rank correlation (average ranks for ties)."""
    from scipy.stats import spearmanr

    return float(spearmanr(x, y).statistic)


def summarize(row: dict) -> dict:
    beh = row.get("behaviour") or {}
    return {"model": row.get("label") or row.get("name"), "lost": 1 - (row.get("behaviour_retention") or 0.0),
            "label": beh.get("label_share") or 0.0, "kl_drift": row.get("kl_drift") or 0.0,
            "kl_opening": row.get("kl_opening") or 0.0, "reply_change": row.get("reply_change") or 0.0,
            "domain": row.get("domain_score")}


def interpolated(base, tuned, alpha: float):
    """A copy of ``base`` with weights ``base + alpha (tuned - base)`` (same architecture, full fine-tune)."""
    import copy

    import torch

    out = copy.deepcopy(base)
    tuned_sd = tuned.state_dict()
    with torch.no_grad():
        for name, p in out.state_dict().items():
            if p.is_floating_point():
                p.add_(alpha * (tuned_sd[name] - p))
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--demo", default="runs/demo")
    ap.add_argument("--extra", nargs="*", default=[])
    ap.add_argument("--alphas", type=float, nargs="*", default=[0.25, 0.5])
    ap.add_argument("--out", default=None)
    args = ap.parse_args()

    from retain.evaluation.config import EvalSuite
    from retain.evaluation.suite import BaseReference, evaluate
    from retain.models import load_model
    from retain.utils.io import read_json, write_json_atomic

    demo = Path(args.demo)
    summary = read_json(demo / "demo.json")
    rows = [summarize(r) for r in summary["rows"]]
    for extra in args.extra:
        rows += [{**summarize(r), "model": f"{r['label']} ({Path(extra).name})"}
                 for r in read_json(Path(extra) / "demo.json")["rows"] if r["name"] != "base"]
    if args.alphas:
        cfg = summary["config"]
        suite = EvalSuite(**read_json(demo / "reference" / "calibration.json")["suite"])  # the demo's own suite
        ref = BaseReference.load(demo / "reference", suite)
        base, tok = load_model(cfg["model"], device="cpu")
        full, _ = load_model(str(demo / "full" / "model"), device="cpu")
        for a in args.alphas:
            m = evaluate(interpolated(base, full, a), tok, suite, ref)
            rows.append(summarize({**m, "label": f"full FT x {a:g}"}))
            print(f"scored full FT x {a:g}", flush=True)
    from retain.utils.tables import md_table

    print(md_table(["model", "lost %", "label %", "KL/token", "opening KL", "reply change %", "domain %"],
                   [[r["model"], f"{100 * r['lost']:.1f}", f"{100 * r['label']:.1f}", f"{r['kl_drift']:.3f}",
                     f"{r['kl_opening']:.3f}", f"{100 * r['reply_change']:.1f}",
                     "–" if r["domain"] is None else f"{100 * r['domain']:.1f}"] for r in rows]))
    corr = correlations(rows)
    methods = rows[1: len(summary["rows"])]  # the demo's fine-tunes alone (one strength each)
    corr_methods = correlations(methods)
    print(md_table(["drift measure", f"Spearman vs lost ({len(rows)} models)", "vs label share",
                    f"vs lost ({len(methods)} demo methods)"],
                   [[m, f"{corr[m]['lost']:+.2f}", f"{corr[m]['label']:+.2f}", f"{corr_methods[m]['lost']:+.2f}"]
                    for m in MEASURES]))
    if args.out:
        write_json_atomic(args.out, {"models": rows, "spearman": corr, "spearman_methods": corr_methods,
                                     "n_models": len(rows)})


def correlations(rows: list[dict]) -> dict:
    """Per drift measure: Spearman's rho with each target over ``rows``."""
    return {m: {t: spearman([r[m] for r in rows], [r[t] for r in rows]) for t in TARGETS} for m in MEASURES}


if __name__ == "__main__":
    main()
