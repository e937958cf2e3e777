"""The two wastes of the demo's training loops, and what removing each saves, measured in one run.

    python benchmarks/bench_train_waste.py [--steps 6] [--micro 8 4 2] [--arms lora full_tg] [--threads 2]
                                       [--tg_corpus runs/demo/tg/sft.jsonl]

For each demo arm (the default profile's own recipe: same mixture, same seed, same 24 x 8 examples):

1. **Positions.** Over the whole run's stream (``StreamDataset`` order), the positions the forward passes
   run when each optimizer step of 8 examples is cut into passes of ``micro`` examples, sorted by length
   within the step (``train.sort_by_length``; micro 8 = today's unsorted batches), against the real
   tokens. Exact counts, no timing.
2. **LM head.** The share of (position, next token) pairs that carry a label, i.e. where the loss needs
   logits; training asks the model for logits there only (``RetainTrainer.head_on_labels_only``,
   transformers' boolean ``logits_to_keep``). The first row of each arm computes the head everywhere,
   as before that change.
3. **Time.** The first ``--steps`` optimizer steps of that arm trained for real (``retain.training.run.train``
   on the in-memory SmolLM2, fp32), per setting: seconds per step of the training loop (the first step,
   allocator warm-up, excluded) and the ratio to the first row. The loop time comes from
   ``train_log.jsonl``'s ``elapsed``.

Not a test: times depend on the machine and its load; the ratios within one run are what to read.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import tempfile

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=6, help="optimizer steps timed per setting (first one excluded)")
    ap.add_argument("--micro", type=int, nargs="+", default=[8, 4, 2], help="examples per forward pass")
    ap.add_argument("--arms", nargs="+", default=["lora", "full_tg"], help="demo arms (retain.demo.common.METHODS)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--tg_corpus", help="the TG arms' corpus, e.g. a demo run's runs/demo/tg/sft.jsonl "
                    "(default: a small tree made here with the demo's TG stage)")
    args = ap.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from retain.assets import smollm2_path
    from retain.data.collate import encode_examples
    from retain.demo import DemoConfig
    from retain.demo.text import PROFILES, build_recipe
    from retain.training.run import load_mixture, train
    import retain.training.trainer as trainer_mod
    from retain.training.trainer import StreamDataset

    real_accepts = trainer_mod.accepts_logits_to_keep

    path = str(smollm2_path())
    base, tok = AutoModelForCausalLM.from_pretrained(path), AutoTokenizer.from_pretrained(path)
    prof = PROFILES["default"]
    cfg = DemoConfig()
    with tempfile.TemporaryDirectory() as tmp:
        tg = _p(args.tg_corpus) if args.tg_corpus else None
        if tg is None and any("tg" in a for a in args.arms):  # a small TG corpus for the TG arms' mixture
            from retain.demo.common import make_tg_corpus

            tg = make_tg_corpus(cfg, dataclasses.replace(prof, tg_levels=[[4, 64], [2, 64]]), _p(tmp), base, tok)
        print(f"\nSmolLM2-135M-Instruct, default demo profile: {prof.steps} steps x {prof.batch_size} examples, "
              f"<= {prof.max_length} tokens; fp32, {args.threads} thread(s) on {os.cpu_count()} CPUs\n")
        print("| arm | per pass | LM head on | positions run | padding % | s/step | vs first row |")
        print("|---|---:|---|---:|---:|---:|---:|")
        for arm in args.arms:
            recipe = build_recipe(cfg, prof, arm, tg, _p(tmp))
            feats, _ = encode_examples(tok, load_mixture(recipe).examples, recipe.train.max_length)
            g = prof.batch_size
            ref_sps = None
            labelled = (sum(sum(1 for x in f["labels"][1:] if x != -100) for f in feats)
                        / sum(len(f["input_ids"]) for f in feats))
            for row, (micro, head_all) in enumerate([(g, True)] + [(m, False) for m in args.micro]):
                trainer_mod.accepts_logits_to_keep = (lambda m: False) if head_all else real_accepts
                ds = StreamDataset(feats, recipe.train.seed, prof.steps * g, sort_window=g if micro < g else 0)
                lens = [len(ds[p]["input_ids"]) for p in range(len(ds))]
                run = sum(micro * max(lens[k:k + micro]) for k in range(0, len(lens), micro))
                t = dataclasses.replace(recipe.train, output_dir=f"{tmp}/{arm}-{row}", max_steps=args.steps,
                                        batch_size=micro, grad_accum=g // micro, sort_by_length=micro < g,
                                        save_every=0, progress=False)
                train(dataclasses.replace(recipe, train=t), model=base, tokenizer=tok)
                log = [json.loads(x) for x in open(f"{tmp}/{arm}-{row}/train_log.jsonl")]
                sps = (log[-1]["elapsed"] - log[0]["elapsed"]) / (len(log) - 1)
                ref_sps = ref_sps or sps
                head = "every position" if head_all else f"labelled ({100 * labelled:.0f} % of real tokens)"
                print(f"| {arm} | {micro}{' sorted' if micro < g else ''} | {head} | {run:,} | "
                      f"{100 * (1 - sum(lens) / run):.1f} | {sps:.2f} | {sps / ref_sps:.2f}x |", flush=True)


def _p(s: str):
    from pathlib import Path

    return Path(s)


if __name__ == "__main__":
    main()
