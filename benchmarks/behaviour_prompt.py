"""How much of the behaviour probe's measured forgetting depends on its instruction line? Saved demo models.

    python benchmarks/behaviour_prompt.py --demo runs/demo [--instruction ""] [--out docs/behaviour_prompt.json]

The demo's behaviour probe asks each question followed by "Answer with just the name or short phrase.", an
instruction line much like the SST-2 prompt the fine-tunes were trained on ("Answer with one word: negative or
positive."). This script asks the same questions (the demo's behaviour sources and sample) with another
instruction (default: none, the bare question), calibrates the known items on the base again under that
prompt, asks every saved model of the demo folder, and prints behaviour retention with its paired 95 %
interval against the base, lost / gained counts and the share of replies opening with an answer label.
Not a test: it reads what the demo saved and scores the models once more.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--demo", default="runs/demo")
    ap.add_argument("--instruction", default="")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()

    from retain.evaluation.compare import compare, interval
    from retain.evaluation.config import EvalSuite
    from retain.evaluation.stats import fmt_interval
    from retain.evaluation.suite import BaseReference, evaluate
    from retain.models import load_model
    from retain.utils.io import read_json, write_json_atomic
    from retain.utils.tables import md_table

    demo = Path(args.demo)
    summary = read_json(demo / "demo.json")
    demo_suite = EvalSuite(**read_json(demo / "reference" / "calibration.json")["suite"])
    suite = dataclasses.replace(demo_suite, probes={}, probe_files=[], domain=None, drift_prompts=0,
                                behaviour_instruction=args.instruction)
    base, tok = load_model(summary["config"]["model"], device="cpu")
    ref = BaseReference.build(base, tok, suite)
    print(f"base: {ref.base_metrics['behaviour_known']} known of {ref.base_metrics['behaviour']['n']}", flush=True)
    rows = [{"model": "base model", **ref.base_metrics}]
    for r in summary["rows"]:
        if r["name"] == "base":
            continue
        model, _ = load_model(str(demo / r["name"] / "model"), device="cpu")
        m = evaluate(model, tok, suite, ref)
        m["vs_base"] = compare(m, ref.base_metrics, ref.known, ref.mc_probes, b_is_base=True)
        rows.append({"model": r["label"], **m})
        print(f"scored {r['label']}", flush=True)
        del model
    cells = []
    for r in rows:
        b, vb = r["behaviour"], (r.get("vs_base") or {}).get("behaviour")
        cells.append([r["model"], f"{100 * r['behaviour_retention']:.1f}", fmt_interval(interval(vb), 100),
                      f"{b['lost']}/{b['known']}", f"{b['gained']}/{b['unknown_asked']}",
                      f"{100 * b['label_share']:.0f}"])
    ask = f'"{args.instruction}"' if args.instruction else "none (the bare question)"
    print(f"instruction: {ask}")
    print(md_table(["model", "behaviour kept %", "vs base (pts) [95 %]", "lost/known", "gained/asked unknown",
                    "replies with an answer label %"], cells))
    if args.out:
        write_json_atomic(args.out, {"instruction": args.instruction, "rows": [
            {k: r.get(k) for k in ("model", "behaviour_retention", "behaviour", "vs_base")} for r in rows]})


if __name__ == "__main__":
    main()
