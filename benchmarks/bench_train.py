"""Training throughput of full / LoRA / LoRAMoE on SmolLM2-135M-Instruct, measured in one run.

    python benchmarks/bench_train.py [--steps 3] [--batch 8] [--max_length 128] [--threads 1]

Same data (MedMCQA train, chat template), same batches, fp32, this machine's threads. Prints input
tokens/s of the training loop (model loading and the first step excluded) and the ratio to full
fine-tuning. Not a test: numbers depend on the machine.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--max_length", type=int, default=128)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1 is robust on a shared CPU box)")
    args = ap.parse_args()

    import torch

    torch.set_num_threads(args.threads)

    from transformers import AutoModelForCausalLM, AutoTokenizer

    from retain.assets import smollm2_path
    from retain.training.recipe import recipe_from_dict
    from retain.training.run import train

    path = str(smollm2_path())
    base, tok = AutoModelForCausalLM.from_pretrained(path), AutoTokenizer.from_pretrained(path)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for method in ("full", "lora", "loramoe"):
            recipe = recipe_from_dict({
                "model": {"name": "smollm2"}, "method": method,
                "datasets": [{"path": "builtin:medmcqa", "type": "task", "limit": args.batch * (args.steps + 1)}],
                "optim": {"lr": 1e-5},
                "train": {"output_dir": f"{tmp}/{method}", "max_steps": args.steps + 1, "batch_size": args.batch,
                          "max_length": args.max_length, "progress": False},
            })
            t0 = time.perf_counter()
            res = train(recipe, model=base, tokenizer=tok)
            log = [json.loads(x) for x in open(f"{tmp}/{method}/train_log.jsonl")]
            # Skip step 1 (allocator and kernel warm-up).
            tokens = log[-1]["tokens"] - log[0]["tokens"]
            secs = log[-1]["elapsed"] - log[0]["elapsed"]
            rows.append((method, res.trainable_params, res.total_params, tokens / secs, secs / args.steps,
                         time.perf_counter() - t0))
    full = rows[0][3]
    print(f"\nSmolLM2-135M-Instruct, {args.steps} steps x {args.batch} seqs (<= {args.max_length} tokens), "
          f"fp32, {args.threads} thread(s) on {os.cpu_count()} CPUs\n")
    print("| method | trainable params | tokens/s | s/step | vs full | wall incl. setup (s) |")
    print("|---|---:|---:|---:|---:|---:|")
    for m, tr, tot, tps, sps, wall in rows:
        print(f"| {m} | {tr:,} ({100 * tr / tot:.2f}%) | {tps:.0f} | {sps:.2f} | {tps / full:.2f}x | {wall:.0f} |")


if __name__ == "__main__":
    main()
