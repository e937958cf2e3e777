"""The Python evaluation API: ``BaseReference.build`` once on the base model, ``evaluate`` any model.

- **Known-fact retention** (the primary forgetting metric): the base model is *calibrated* on every
  probe item; an item is *known* if the base answers it correctly and robustly (multiple choice: the
  gold choice wins on acc_norm by ``suite.known_margin`` nats/char *and* wins on the raw sum, which
  filters near-ties and length-prior hits; generation: exact match). Retention = share of the known
  items a model still answers correctly (plain correctness, no margin). Pooled over probes
  (Σ retained / Σ known) and per probe. A random guesser keeps about 1/k of known k-choice items, so
  MC retention has a floor near 0.25–0.3, not 0 (reported as ``retention_chance``: the mean 1/k over
  known items); generation retention has no such floor.
- **Behaviour retention** (``behaviour_retention``): the same on the chat-format probes (``chat:*`` and
  user generation files asked in chat): of the questions the base answers correctly *in its own chat
  replies*, the share the model still answers correctly in its replies. ``retention`` is the
  **knowledge** view (multiple choice + few-shot completion, robust to the answer format); behaviour is
  what a user of the tuned model meets. ``behaviour`` also counts ``lost`` (known items now wrong),
  ``gained`` (items the base missed, now right) and ``label_share`` (replies opening with an answer label
  such as "Answer:", the format a domain fine-tune teaches). The base is asked every behaviour question;
  a fine-tune only the ones the base knew (all that retention needs) plus a seeded sample of
  ``suite.behaviour_unknown`` others (:func:`asked_items`, fixed by the calibration alone), so
  ``gained`` counts that sample and ``accuracy`` is estimated per stratum (known, sampled unknown).
- **Reply change** (``reply_change``, a drift view): the share of the asked behaviour questions whose
  reply text differs from the base's reply to the same question (after normalization). 0 for the base.
- **Probe accuracy**: raw accuracy per probe (acc_norm for MC, EM for generation) and their mean over the
  knowledge probes.
- **Domain score**: held-out accuracy of the domain set in the training chat format (letter scoring), or
  for your own data file (:mod:`retain.evaluation.domain_file`) accuracy on choice items or the mean
  log-likelihood of free-form replies (nats/token).
- **Margin change** (the continuous retention measure): on the known multiple-choice items, the mean
  change of the gold choice's margin (its acc_norm score minus the best wrong choice's, nats/char)
  from the base to the model. It moves before an item flips, and it does not churn at chance the
  way a 0/1 outcome near a coin flip does, so it separates methods with fewer items.
- **Drift**: mean per-token KL(base ‖ model) on the built-in chat prompts, and the opening KL on their
  first tokens (``kl_opening``; see :mod:`.drift`).
- **Per-item outcomes** (``items``: per probe the ids, 0/1 correctness and margins; ``drift_prompts``:
  per-prompt KL and token counts) are kept in every metrics dict, so that any two models scored
  with the same suite can be compared item by item with confidence intervals
  (:mod:`retain.evaluation.compare`).
- The reference (calibration + base drift distributions) is saved as ``calibration.json`` +
  ``base_reference.safetensors``; loading it checks that the suite selects the same items.
"""

from __future__ import annotations

import dataclasses
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

from retain.errors import RetainError
from retain.evaluation.config import EvalSuite
from retain.evaluation.domain_file import score_domain_items
from retain.evaluation.drift import DriftReference, drift_reference, kl_means, kl_opening, kl_positions, weighted_mean
from retain.evaluation.probes import (Probe, behaviour_probe, builtin_probe, domain_probe, has_label, load_probe_file,
                                      normalize_answer, score_probe)
from retain.utils.io import atomic_path, read_json, write_json_atomic

CALIBRATION_FILE = "calibration.json"
DOMAIN_FILE_KINDS = ("label", "loglik")
"""Probe kinds of a domain data file (scored by :func:`retain.evaluation.domain_file.score_domain_items`)."""
REFERENCE_TENSORS = "base_reference.safetensors"


def build_probes(suite: EvalSuite) -> list[Probe]:
    """Probes of a suite: knowledge built-ins, behaviour built-ins (``chat:*``), then user files (in
    ``suite.probe_prompt``)."""
    probes = [builtin_probe(name, n, suite.seed, suite.max_item_chars) for name, n in suite.probes.items() if n > 0]
    probes += [behaviour_probe(name, n, suite.seed, suite.max_item_chars, suite.behaviour_instruction)
               for name, n in (suite.behaviour or {}).items() if n > 0]
    return probes + load_probe_files(suite.probe_files, suite.probe_prompt)


def load_probe_files(paths: list[str], prompt: str = "chat") -> list[Probe]:
    """User probe files, each checked (:func:`load_probe_file`, asked in ``prompt``); results are keyed by
    probe name (``file:<file name>``), so two files with one name are refused."""
    probes, first = [], {}
    for path in paths:
        p = load_probe_file(path, prompt)  # type: ignore[arg-type]
        if p.name in first:
            raise RetainError(f"--probe_files: {first[p.name]} and {path} are both probe '{p.name}'; give each file "
                              "once, under its own name")
        first[p.name] = path
        probes.append(p)
    return probes


def probe_kinds(probes: list[Probe]) -> dict[str, str]:
    """Probe name -> kind (``mc``, ``gen``, ``chat``)."""
    return {p.name: p.kind for p in probes}


def _kind(name: str, kinds: dict[str, str]) -> str:
    return kinds.get(name) or ("chat" if name.startswith("chat:") else "?")


def suite_domain(suite: EvalSuite) -> Probe | None:
    """The suite's domain probe: a built-in set's held-out split, or a data file / folder of your own
    (:mod:`retain.evaluation.domain_file`); None without a domain."""
    if not suite.domain:
        return None
    from retain.evaluation.domain_file import is_domain_path, load_domain_file

    if is_domain_path(suite.domain):
        return load_domain_file(suite.domain, suite.domain_items, suite.seed)
    return domain_probe(suite.domain, suite.domain_items, suite.seed)


def is_known(result: dict, kind: str, margin: float) -> bool:
    """Calibration criterion for one base result (see module docstring)."""
    if kind in ("gen", "chat"):
        return bool(result["correct"])
    if kind == "mc":
        return bool(result["correct"] and result["correct_raw"] and result["margin"] >= margin)
    return bool(result["correct"] and result["margin"] >= margin)


@dataclass
class BaseReference:
    """What is computed once on the base model: known items per probe and the drift reference."""

    suite: dict
    """The suite it was built with (``asdict(EvalSuite)``)."""
    items: dict[str, list[str]]
    """Probe name -> ids of the items evaluated, in order."""
    known: dict[str, list[str]]
    """Probe name -> ids of the items the base knows."""
    asked: dict[str, list[str]] = field(default_factory=dict)
    """Behaviour probe name -> ids a fine-tuned model is asked: the known ones plus a seeded sample of
    ``suite.behaviour_unknown`` unknown ones (empty: every item)."""
    base_metrics: dict = field(default_factory=dict)
    """The base model's own :func:`evaluate` result (domain score, accuracies; retention 1, KL 0)."""
    drift: DriftReference | None = None
    probes: list[Probe] = field(default_factory=list, repr=False)
    domain: Probe | None = field(default=None, repr=False)

    @property
    def mc_probes(self) -> set[str]:
        """Names of the multiple-choice probes (the ones with margins)."""
        return {p.name for p in self.probes if p.kind == "mc"}

    @classmethod
    def build(cls, base_model, tokenizer, suite: EvalSuite) -> "BaseReference":
        probes = build_probes(suite)
        domain = suite_domain(suite)
        drift = None
        if suite.drift_prompts > 0:
            drift = drift_reference(base_model, tokenizer, n_prompts=suite.drift_prompts,
                                    new_tokens=suite.drift_new_tokens, batch_size=suite.batch_size)
        # Score the base without the drift reference (its KL to itself is 0 by construction).
        ref = cls(asdict(suite), {p.name: [it["id"] for it in p.items] for p in probes}, {}, probes=probes, domain=domain)
        results: dict[str, list[dict]] = {}
        metrics = evaluate(base_model, tokenizer, suite, ref, _results=results)
        metrics["kl_drift"] = metrics["kl_opening"] = 0.0 if drift is not None else None
        ref.drift = drift
        timings, seconds = metrics["timings"], metrics["seconds"]
        ref.known = {p.name: [r["id"] for r in results[p.name] if is_known(r, p.kind, suite.known_margin)] for p in probes}
        ref.asked = {p.name: asked_items(ref.items[p.name], ref.known[p.name], suite.behaviour_unknown, suite.seed)
                     for p in probes if p.kind == "chat"}
        ref.base_metrics = {"items": compact_results(results)}  # the base's own margins: margin_change 0
        ref.base_metrics = evaluate_from_results(results, ref, suite, metrics)
        ref.base_metrics.update(seconds=seconds, timings=timings, drift_prompts=None)
        return ref

    def save(self, folder: str | Path) -> None:
        from safetensors.torch import save_file

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        meta = {"suite": self.suite, "items": self.items, "known": self.known, "asked": self.asked,
                "base_metrics": self.base_metrics,
                "drift": None if self.drift is None else {"seqs": self.drift.seqs, "n_reply": self.drift.n_reply}}
        if self.drift is not None:
            with atomic_path(folder / REFERENCE_TENSORS) as tmp:
                save_file({k: v.contiguous() for k, v in self.drift.tensors().items()}, str(tmp))
        write_json_atomic(folder / CALIBRATION_FILE, meta)

    @classmethod
    def load(cls, folder: str | Path, suite: EvalSuite) -> "BaseReference":
        from safetensors.torch import load_file

        folder = Path(folder)
        meta = read_json(folder / CALIBRATION_FILE)
        probes = build_probes(suite)
        items = {p.name: [it["id"] for it in p.items] for p in probes}
        same = all(meta["suite"].get(k) == getattr(suite, k)
                   for k in ("drift_prompts", "chat_new_tokens", "probe_prompt", "behaviour_unknown",
                             "behaviour_instruction") if k in meta["suite"])
        if meta.get("items") != items or not same:
            raise RetainError(f"{folder / CALIBRATION_FILE}: built for a different suite (probes, items, prompt format "
                              "or drift prompts differ); drop --reference to recompute it")
        drift = None
        if meta.get("drift"):
            tensors = load_file(str(folder / REFERENCE_TENSORS))
            drift = DriftReference.from_saved(meta["drift"], tensors)
        domain = suite_domain(suite)
        return cls(meta["suite"], meta["items"], meta["known"], asked=meta.get("asked", {}),
                   base_metrics=meta.get("base_metrics", {}), drift=drift, probes=probes, domain=domain)


def asked_items(ids: list[str], known: list[str], n_unknown: int, seed: int) -> list[str]:
    """Ids a fine-tuned model is asked on a behaviour probe, in item order: every known id plus a seeded
    sample of ``n_unknown`` of the others (all when ``n_unknown`` is -1 or not smaller than their number).
    Fixed by the base's calibration alone, before any fine-tune is scored."""
    import random

    k = set(known)
    unknown = [i for i in ids if i not in k]
    if 0 <= n_unknown < len(unknown):
        unknown = random.Random(seed + 104729).sample(unknown, n_unknown)
    keep = k | set(unknown)
    return [i for i in ids if i in keep]


def evaluate(model, tokenizer, suite: EvalSuite, ref: BaseReference | None = None, *,
             _results: dict | None = None) -> dict:
    """Metrics of ``model``: domain score, per-probe accuracy, retention (needs ``ref``), KL drift.

    Returns ``{"domain_score", "retention", "probe_accuracy", "kl_drift", "probes": {name: {...}},
    "domain": {...}, "seconds"}``; ``retention`` / ``kl_drift`` are None without a reference.
    """
    t0 = time.perf_counter()
    probes = ref.probes if ref is not None and ref.probes else build_probes(suite)
    domain = ref.domain if ref is not None else suite_domain(suite)
    results = {} if _results is None else _results
    timings: dict[str, float] = {}
    for p in [*probes, *([domain] if domain is not None else [])]:
        if ref is not None and ref.asked.get(p.name) and len(ref.asked[p.name]) < len(p.items):
            ask = set(ref.asked[p.name])  # a fine-tune: the known items and a sample of the others
            p = dataclasses.replace(p, items=[it for it in p.items if it["id"] in ask])
        t = time.perf_counter()
        if p.kind in DOMAIN_FILE_KINDS:
            results[p.name] = score_domain_items(model, tokenizer, p, batch_size=suite.batch_size)
        else:
            results[p.name] = score_probe(model, tokenizer, p, batch_size=suite.batch_size,
                                          max_new_tokens=suite.max_new_tokens, chat_new_tokens=suite.chat_new_tokens)
        timings[p.name] = round(time.perf_counter() - t, 2)
    extra: dict = {"kl_drift": None, "kl_opening": None}
    drift_prompts = None
    if ref is not None and ref.drift is not None:
        t = time.perf_counter()
        pos = kl_positions(model, tokenizer, ref.drift, batch_size=suite.batch_size)
        kls, counts, first = kl_means(pos), list(ref.drift.n_reply), kl_opening(pos)
        drift_prompts = {"kl": kls, "tokens": counts, "kl_opening": first}
        extra = {"kl_drift": weighted_mean(kls, counts), "kl_opening": sum(first) / len(first) if first else None}
        timings["kl_drift"] = round(time.perf_counter() - t, 2)
    out = evaluate_from_results(results, ref, suite, extra)
    out["drift_prompts"] = drift_prompts
    out["seconds"] = round(time.perf_counter() - t0, 2)
    out["timings"] = timings
    return out


def compact_results(results: dict[str, list[dict]]) -> dict[str, dict[str, list]]:
    """Per probe: ``{"ids", "correct" (0/1), "margin"}`` lists in item order (what comparisons need), plus
    what the item-level diff (:mod:`retain.evaluation.flips`) shows as each model's answer: ``"pred"`` (the
    chosen option's index) where results have one, ``"prediction"`` (the generated text) where results
    have one; ``"gold"`` (option indices) for the domain, to tell learning from a label shift; ``"score"``
    (nats/token) for a free-form domain file."""
    out = {}
    for name, rs in results.items():
        rec = {"ids": [r["id"] for r in rs], "correct": [int(bool(r["correct"])) for r in rs],
               "margin": [round(float(r.get("margin", bool(r["correct"]))), 6) for r in rs]}
        if rs and all("pred" in r for r in rs):
            rec["pred"] = [int(r["pred"]) for r in rs]
        if name.startswith("domain:") and rs and all("pred" in r and "gold" in r for r in rs):
            rec["gold"] = [int(r["gold"]) for r in rs]
        if rs and all("prediction" in r for r in rs):
            rec["prediction"] = [str(r["prediction"]) for r in rs]
        if rs and all("score" in r for r in rs):
            rec["score"] = [round(float(r["score"]), 6) for r in rs]
        out[name] = rec
    return out


def label_balance(pred: list[int], gold: list[int]) -> dict[str, float]:
    """``balanced_accuracy`` (mean over gold options of the accuracy on that option's items) and
    ``majority_share`` (share of predictions that are the single most frequent option).

    A fine-tune that answers one option everywhere scores its class prior on plain accuracy; its
    balanced accuracy stays at 1/k and its majority share near 1, which the report flags."""
    by_gold: dict[int, list[bool]] = {}
    for p, g in zip(pred, gold):
        by_gold.setdefault(g, []).append(p == g)
    return {"balanced_accuracy": sum(sum(v) / len(v) for v in by_gold.values()) / len(by_gold) if by_gold else 0.0,
            "majority_share": Counter(pred).most_common(1)[0][1] / len(pred) if pred else 0.0}


def _acc(rs: list[dict], key: str = "correct") -> float | None:
    return sum(bool(r[key]) for r in rs) / len(rs) if rs else None


def same_reply(a: str, b: str) -> bool:
    """Two replies say the same (SQuAD-normalized text equal): the unit of ``reply_change``."""
    return normalize_answer(a) == normalize_answer(b)


def evaluate_from_results(results: dict[str, list[dict]], ref: BaseReference | None, suite: EvalSuite,
                          extra: dict) -> dict:
    """Aggregate per-item results into the metrics dict (retention uses ``ref.known``): knowledge
    (``retention``, non-chat probes) and behaviour (``behaviour_retention``, chat probes) kept apart."""
    kinds = probe_kinds(ref.probes) if ref is not None else {}
    base_items = (ref.base_metrics.get("items") or {}) if ref is not None else {}
    probe_rows: dict[str, dict] = {}
    tot = {"knowledge": [0, 0, 0.0], "behaviour": [0, 0, 0.0]}  # known, retained, chance
    beh = {"n": 0, "lost": 0, "gained": 0, "labelled": 0, "changed": 0, "compared": 0}
    items_view: dict[str, list[int] | None] = {}  # chat probe -> per item: reply differs from the base's
    for name, rs in results.items():
        if name.startswith("domain:"):
            continue
        chat = _kind(name, kinds) == "chat"
        row = {"n": len(rs), "accuracy": _acc(rs), "view": "behaviour" if chat else "knowledge"}
        if rs and "correct_raw" in rs[0]:
            row["acc_raw"] = _acc(rs, "correct_raw")
        if ref is not None and ref.known.get(name) is not None:
            known = set(ref.known[name])
            retained = sum(1 for r in rs if r["id"] in known and r["correct"])
            # expected retention of a model that forgot everything and guesses uniformly (1/k per MC item)
            chance = sum(1 / r["k"] for r in rs if r["id"] in known and r.get("k"))
            row.update(known=len(known), retained=retained, retention=retained / len(known) if known else None,
                       retention_chance=chance / len(known) if known else None)
            t = tot["behaviour" if chat else "knowledge"]
            t[0] += len(known)
            t[1] += retained
            t[2] += chance
        if chat and ref is not None and len(rs) < len(ref.items.get(name, rs)) and ref.known.get(name) is not None:
            # asked the known items and a sample of the unknown ones: accuracy estimated per stratum
            n_all, k_all = len(ref.items[name]), len(ref.known[name])
            k_set = set(ref.known[name])
            unk = [r for r in rs if r["id"] not in k_set]
            rate = sum(bool(r["correct"]) for r in unk) / len(unk) if unk else 0.0
            row.update(asked=len(rs), n=n_all,
                       accuracy=(row.get("retained", 0) + rate * (n_all - k_all)) / n_all if n_all else None)
        if chat:
            base = base_items.get(name) or {}
            texts = dict(zip(base.get("ids", []), base.get("prediction", [])))
            items_view[name] = ([int(not same_reply(r["prediction"], texts[r["id"]])) for r in rs]
                                if rs and all(r["id"] in texts for r in rs) else None)
            base_ok = dict(zip(base.get("ids", []), base.get("correct", [])))
            known = set((ref.known.get(name) or []) if ref is not None else [])
            labelled = sum(has_label(r["prediction"]) for r in rs)
            row["label_share"] = labelled / len(rs) if rs else None
            beh["n"] += len(rs)
            beh["labelled"] += labelled
            beh["lost"] += sum(1 for r in rs if r["id"] in known and not r["correct"])
            beh["gained"] += sum(1 for r in rs if r["id"] in base_ok and not base_ok[r["id"]] and r["correct"])
            if items_view[name] is not None:
                beh["compared"] += len(rs)
                beh["changed"] += sum(items_view[name])
        probe_rows[name] = row
    accs = [r["accuracy"] for r in probe_rows.values() if r["accuracy"] is not None and r["view"] == "knowledge"]
    dom = next(((k, v) for k, v in results.items() if k.startswith("domain:")), None)
    items = compact_results(results)
    for name, changed in items_view.items():  # behaviour probes: marked, with their reply changes
        items[name]["view"] = "behaviour"
        if changed is not None:
            items[name]["changed"] = changed
    kn, bh = tot["knowledge"], tot["behaviour"]
    behaviour = None
    if beh["n"]:
        chat_rows = [r for r in probe_rows.values() if r["view"] == "behaviour"]
        n_all = sum(r["n"] for r in chat_rows)
        acc = sum(r["accuracy"] * r["n"] for r in chat_rows if r["accuracy"] is not None) / n_all if n_all else None
        behaviour = {"n": n_all, "asked": beh["n"], "accuracy": acc, "known": bh[0], "retained": bh[1],
                     "lost": beh["lost"], "gained": beh["gained"], "unknown_asked": beh["n"] - bh[0],
                     "label_share": beh["labelled"] / beh["n"],
                     "reply_change": beh["changed"] / beh["compared"] if beh["compared"] else None}
    loglik = bool(dom and dom[1] and "score" in dom[1][0])  # a free-form domain file: mean nats/token
    return {
        "domain_score": (sum(r["score"] for r in dom[1]) / len(dom[1]) if loglik else _acc(dom[1])) if dom else None,
        "retention": kn[1] / kn[0] if kn[0] else None,
        "retention_chance": kn[2] / kn[0] if kn[0] else None,
        "behaviour_retention": bh[1] / bh[0] if bh[0] else None,
        "reply_change": behaviour["reply_change"] if behaviour else None,
        "margin_change": margin_change(items, ref),
        "probe_accuracy": sum(accs) / len(accs) if accs else None,
        "kl_drift": extra.get("kl_drift"),
        "kl_opening": extra.get("kl_opening"),
        "probes": probe_rows,
        "behaviour": behaviour,
        "domain": ({"name": dom[0].split(":", 1)[1], "n": len(dom[1]), "accuracy": None if loglik else _acc(dom[1]),
                    **({"metric": "loglik", "loglik": sum(r["score"] for r in dom[1]) / len(dom[1])} if loglik else {}),
                    **(label_balance(items[dom[0]]["pred"], items[dom[0]]["gold"]) if "gold" in items[dom[0]] else {})}
                   if dom else None),
        "known_total": kn[0],
        "behaviour_known": bh[0],
        "items": items,
    }


def margin_change(items: dict[str, dict[str, list]], ref: "BaseReference | None") -> float | None:
    """Mean over the known multiple-choice items of (model margin - base margin), nats/char; None
    without a reference or without known MC items. 0 for the base model itself."""
    if ref is None or not ref.base_metrics.get("items"):
        return None
    from retain.evaluation.compare import outcomes

    mine = outcomes({"items": items}, ref.known, ref.mc_probes)["margin"][0]
    base = outcomes(ref.base_metrics, ref.known, ref.mc_probes)["margin"][0]
    diffs = [mine[k] - base[k] for k in base if k in mine]
    return sum(diffs) / len(diffs) if diffs else None
