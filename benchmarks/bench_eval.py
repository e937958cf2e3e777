"""Time one default `retain eval` evaluation of SmolLM2-135M-Instruct (what the demo runs per model).

Prints wall and CPU seconds of BaseReference.build (once per demo) and of one evaluate() call, next
to a reference forward throughput measured in the same run (8 x 128 tokens, fp32), so numbers taken
on a busy machine can be compared: ``evaluate_s * ref_tok_s`` is the cost in reference-forward tokens.

    python benchmarks/bench_eval.py [--profile default] [--threads N]
"""

from __future__ import annotations

import argparse
import json
import time


def ref_throughput(model, reps: int = 3) -> float:
    import torch

    ids = torch.randint(0, 40000, (8, 128))
    with torch.inference_mode():
        model(input_ids=ids, logits_to_keep=1)
        t = time.perf_counter()
        for _ in range(reps):
            model(input_ids=ids, logits_to_keep=1)
    return reps * ids.numel() / (time.perf_counter() - t)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--profile", default="default")
    ap.add_argument("--threads", type=int, default=0)
    args = ap.parse_args()
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    from retain.evaluation.config import EvalSuite
    from retain.evaluation.suite import BaseReference, evaluate
    from retain.models import load_model

    model, tok = load_model("smollm2", device="cpu")
    suite = EvalSuite.profile(args.profile)
    tput_before = ref_throughput(model)
    c, t = time.process_time(), time.perf_counter()
    ref = BaseReference.build(model, tok, suite)
    build_wall, build_cpu = time.perf_counter() - t, time.process_time() - c
    c, t = time.process_time(), time.perf_counter()
    res = evaluate(model, tok, suite, ref)
    eval_wall, eval_cpu = time.perf_counter() - t, time.process_time() - c
    tput = (tput_before + ref_throughput(model)) / 2
    base = ref.base_metrics
    print(json.dumps({
        "threads": torch.get_num_threads(), "ref_forward_tok_s": round(tput),
        "build_reference_s": round(build_wall, 1), "build_reference_cpu_s": round(build_cpu, 1),
        "evaluate_s": round(eval_wall, 1), "evaluate_cpu_s": round(eval_cpu, 1),
        "evaluate_s_at_580_tok_s": round(eval_wall * tput / 580, 1),
        "timings_s": res["timings"],
        "base": {k: {"acc": round(v["accuracy"], 3), "acc_raw": v.get("acc_raw"), "n": v["n"],
                     "known": len(ref.known[k])} for k, v in base["probes"].items()},
        "domain_score": base["domain_score"], "drift_tail_mass": ref.drift.mean_tail_mass if ref.drift else None,
    }, indent=1))


if __name__ == "__main__":
    main()
