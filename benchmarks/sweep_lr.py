"""Domain learnability and the learning-rate rule of ``retain demo``, measured on a *dev* split.

    python benchmarks/sweep_lr.py [--domain skills] [--methods full,lora,loramoe] [--out runs/sweep]

Not part of ``make bench`` (about 30 minutes on 2 CPU cores). It produced the numbers behind the
default demo profile (``docs/domain.md``). The rule, fixed before any run:

- **Budget**: the demo's own (``retain.demo.text.PROFILES["default"]``): same steps, batch, max length,
  warmup and schedule for every method; the training examples are the demo's (``builtin:<domain>``,
  first ``domain_examples`` of the seeded shuffle of the train split).
- **Dev split**: the last ``--dev`` items of that same shuffled train split. The demo never reports on
  them, they are disjoint from the held-out items that the demo scores, and (like all training data)
  from every knowledge probe. No probe is ever read by this script.
- **Grid**: full ∈ {3e-5, 1e-4, 3e-4}; lora and loramoe ∈ {3e-4, 1e-3, 3e-3} (half-decade steps
  around each method kind's usual value).
- **Choice** (round 3 on, ``docs/domain.md``): per method kind, the learning rate with the highest dev
  *balanced* accuracy (mean per-class recall, which a one-label collapse cannot raise); a run that
  gives one answer on more than 80 % of the dev items is disqualified; a rate within 1 point of the
  best loses to the lower one (less drift for the same learning).
- **Learnability** of the domain: full fine-tuning at its chosen rate vs the base, per task, with a
  paired bootstrap 95 % interval.

Writes ``<out>/sweep.json`` (one row per run, resumable: finished runs are skipped) and prints a table.
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import json
import os
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

GRID = {"full": [3e-5, 1e-4, 3e-4], "lora": [3e-4, 1e-3, 3e-3], "loramoe": [3e-4, 1e-3, 3e-3]}


def per_task(items: list[dict], results: list[dict]) -> dict[str, float]:
    by: dict[str, list[bool]] = collections.defaultdict(list)
    for it, r in zip(items, results):
        by[it.get("task", "all")].append(bool(r["correct"]))
    return {k: sum(v) / len(v) for k, v in sorted(by.items())}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--domain", default="skills")
    ap.add_argument("--methods", default="full,lora,loramoe")
    ap.add_argument("--dev", type=int, default=None, help="dev items (default: the demo profile's dev_items)")
    ap.add_argument("--out", default="runs/sweep")
    ap.add_argument("--steps", type=int, default=None, help="override the demo profile's steps")
    ap.add_argument("--grid", default=None, help="comma-separated learning rates replacing the grid of every method")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1 is robust on a shared 2-core box)")
    args = ap.parse_args()

    import torch

    from retain.demo import DemoConfig
    from retain.demo.text import PROFILES, build_recipe
    from retain.evaluation.probes import Probe, score_probe
    from retain.evaluation.stats import fmt_interval, paired_bootstrap
    from retain.evaluation.suite import label_balance
    from retain.models import load_model
    from retain.evaluation.report import COLLAPSE_SHARE
    from retain.data.formats import load_examples
    from retain.data.olmo_eval import dev_split, domain_split, format_mc_prompt
    from retain.training.run import train
    from retain.training.trainer import read_log
    from retain.utils.io import write_json_atomic

    torch.set_num_threads(args.threads)
    if args.grid:
        for m in GRID:
            GRID[m] = [float(x) for x in args.grid.split(",")]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    state_file = out / "sweep.json"
    state = json.loads(state_file.read_text()) if state_file.exists() else {"runs": {}}
    prof = dataclasses.replace(PROFILES["default"])
    if args.steps:
        prof.steps = args.steps
    if args.dev is None:
        args.dev = prof.dev_items
    prof.dev_items = args.dev  # build_recipe keeps this dev tail out of the training data
    cfg = DemoConfig(out=str(out), domain=args.domain)
    base, tok = load_model("smollm2", device="cpu")
    dev = Probe(f"dev:{args.domain}", "letter", dev_split(args.domain, args.dev))
    dev_prompts = {format_mc_prompt(it) for it in dev.items}  # label items included (SST-2)
    n_train = len(domain_split(args.domain, "train"))

    if "base" not in state:
        t = time.perf_counter()
        res = score_probe(base, tok, dev, batch_size=32)
        state["base"] = {"correct": [bool(r["correct"]) for r in res], "per_task": per_task(dev.items, res),
                         "pred": [r["pred"] for r in res], "gold": [r["gold"] for r in res],
                         "seconds": round(time.perf_counter() - t, 1)}
        write_json_atomic(state_file, state)
    print(f"base dev accuracy: {sum(state['base']['correct']) / len(dev.items):.3f} {state['base']['per_task']}",
          flush=True)

    for method in args.methods.split(","):
        for lr in GRID[method]:
            key = f"{method}@{lr:g}"
            if key in state["runs"]:
                continue
            p = dataclasses.replace(prof, lr={**prof.lr, method: lr})
            name = {"full": "full", "lora": "lora", "loramoe": "loramoe_tg"}[method]
            recipe = build_recipe(cfg, p, name, Path("-"), out / "runs")
            recipe.datasets = recipe.datasets[:1]  # domain only: the sweep never sees a TG corpus
            recipe.datasets[0].weight = 1.0
            # build_recipe already keeps the dev tail of the shuffle out (the demo trains on these examples).
            assert recipe.datasets[0].limit <= n_train - args.dev
            recipe.train.output_dir = str(out / "runs" / key)
            recipe.train.save_every = 0
            # The dev items must never be trained on.
            seen = {e["messages"][0]["content"] for e in load_examples(recipe.datasets[0].path,
                                                                         limit=recipe.datasets[0].limit)}
            assert not seen & dev_prompts, "dev item in the training data"
            t = time.perf_counter()
            result = train(recipe, model=base, tokenizer=tok)
            train_s = time.perf_counter() - t
            res = score_probe(result.model, tok, dev, batch_size=32)
            log = read_log(Path(recipe.train.output_dir) / "train_log.jsonl")
            state["runs"][key] = {
                "method": method, "lr": lr, "correct": [bool(r["correct"]) for r in res],
                "pred": [r["pred"] for r in res], "gold": [r["gold"] for r in res],
                "per_task": per_task(dev.items, res), "final_loss": result.final_loss,
                "loss_curve": [r["lm_loss"] for r in log], "train_seconds": round(train_s, 1),
                "tokens_per_s": result.tokens_per_s,
            }
            write_json_atomic(state_file, state)
            acc = sum(state["runs"][key]["correct"]) / len(dev.items)
            bal = label_balance(state["runs"][key]["pred"], state["runs"][key]["gold"])
            print(f"{key}: dev {acc:.3f} balanced {bal['balanced_accuracy']:.3f} majority {bal['majority_share']:.2f} loss {result.final_loss:.3f} ({train_s:.0f}s) {state['runs'][key]['per_task']}",
                  flush=True)
            del result

    base_c = state["base"]["correct"]
    def balance(r: dict) -> dict[str, float]:
        return label_balance(r["pred"], r["gold"]) if "pred" in r else {"balanced_accuracy": float("nan"),
                                                                          "majority_share": float("nan")}

    def eligible(r: dict) -> bool:
        return "pred" not in r or balance(r)["majority_share"] < COLLAPSE_SHARE

    def score(r: dict) -> float:  # balanced accuracy where predictions were saved (round 3 on), else accuracy
        return balance(r)["balanced_accuracy"] if "pred" in r else sum(r["correct"]) / len(r["correct"])

    b = balance(state["base"])
    print("\n| run | dev acc % | vs base (95 % CI, points) | balanced % | majority % | final loss | train s |"
          "\n|---|---|---|---|---|---|---|")
    print(f"| base | {100 * sum(base_c) / len(base_c):.1f} | – | {100 * b['balanced_accuracy']:.1f} | "
          f"{100 * b['majority_share']:.0f} | – | – |")
    chosen = {}
    for method in GRID:
        rows = [(lr, state["runs"][f"{method}@{lr:g}"]) for lr in GRID[method] if f"{method}@{lr:g}" in state["runs"]]
        for lr, r in rows:
            iv = paired_bootstrap(r["correct"], base_c)
            b = balance(r)
            print(f"| {method} lr {lr:g} | {100 * sum(r['correct']) / len(r['correct']):.1f} | {fmt_interval(iv, 100)} | "
                  f"{100 * b['balanced_accuracy']:.1f} | {100 * b['majority_share']:.0f} | "
                  f"{r['final_loss']:.3f} | {r['train_seconds']:.0f} |")
        rows = [(lr, r) for lr, r in rows if eligible(r)]
        if rows:
            best = max(score(r) for _, r in rows)
            # Lowest rate within 1 point of the best (rows are in increasing lr order).
            chosen[method] = next(lr for lr, r in rows if score(r) >= best - 0.01)
    print(f"\nchosen learning rates (rule: best dev balanced accuracy, one-answer runs (>= {COLLAPSE_SHARE:.0%}) "
          f"excluded, ties within 1 point -> lower): {chosen}")
    if "full" in chosen:
        r = state["runs"][f"full@{chosen['full']:g}"]
        print("\nlearnability, full FT at its chosen rate vs base, per task (points, 95 % CI):")
        tasks = sorted({it.get("task", "all") for it in dev.items})
        for task in tasks:
            idx = [i for i, it in enumerate(dev.items) if it.get("task", "all") == task]
            iv = paired_bootstrap([r["correct"][i] for i in idx], [base_c[i] for i in idx])
            print(f"  {task:20s} n={len(idx):4d} base {100 * sum(base_c[i] for i in idx) / len(idx):5.1f} "
                  f"full {100 * sum(r['correct'][i] for i in idx) / len(idx):5.1f}  diff {fmt_interval(iv, 100)}")
    state["chosen"] = chosen
    write_json_atomic(state_file, state)


if __name__ == "__main__":
    main()
