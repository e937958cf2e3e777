"""The Python evaluation API: ``BaseReference.build`` once on the base model, ``evaluate`` any model.

- **Known-fact retention** (the primary forgetting metric): the base model is *calibrated* on every
  probe item; an item is *known* if the base answers it correctly and robustly (multiple choice: the
  gold choice wins on acc_norm by ``suite.known_margin`` nats/char *and* wins on the raw sum, which
  filters near-ties and length-prior hits; generation: exact match). Retention = share of the known
  items a model still answers correctly (plain correctness, no margin). Pooled over probes
  (Σ retained / Σ known) and per probe. A random guesser keeps about 1/k of known k-choice items, so
  MC retention has a floor near 0.25–0.3, not 0 (reported as ``retention_chance``: the mean 1/k over
  known items); generation retention has no such floor.
- **Probe accuracy**: raw accuracy per probe (acc_norm for MC, EM for generation) and their mean.
- **Domain score**: held-out accuracy of the domain set in the training chat format (letter scoring), or
  for your own data file (:mod:`retain.evaluation.domain_file`) accuracy on choice items or the mean
  log-likelihood of free-form replies (nats/token).
- **Margin change** (the continuous retention measure): on the known multiple-choice items, the mean
  change of the gold choice's margin (its acc_norm score minus the best wrong choice's, nats/char)
  from the base to the model. It moves before an item flips, and it does not churn at chance the
  way a 0/1 outcome near a coin flip does, so it separates methods with fewer items.
- **Drift**: mean per-token KL(base ‖ model) on the built-in chat prompts (see :mod:`.drift`).
- **Per-item outcomes** (``items``: per probe the ids, 0/1 correctness and margins; ``drift_prompts``:
  per-prompt KL and token counts) are kept in every metrics dict, so that any two models scored
  with the same suite can be compared item by item with confidence intervals
  (:mod:`retain.evaluation.compare`).
- The reference (calibration + base drift distributions) is saved as ``calibration.json`` +
  ``base_reference.safetensors``; loading it checks that the suite selects the same items.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

from retain.errors import RetainError
from retain.evaluation.config import EvalSuite
from retain.evaluation.domain_file import score_domain_items
from retain.evaluation.drift import DriftReference, drift_reference, kl_per_prompt, weighted_mean
from retain.evaluation.probes import Probe, builtin_probe, domain_probe, load_probe_file, score_probe
from retain.utils.io import atomic_path, read_json, write_json_atomic

CALIBRATION_FILE = "calibration.json"
DOMAIN_FILE_KINDS = ("label", "loglik")
"""Probe kinds of a domain data file (scored by :func:`retain.evaluation.domain_file.score_domain_items`)."""
REFERENCE_TENSORS = "base_reference.safetensors"


def build_probes(suite: EvalSuite) -> list[Probe]:
    """Knowledge probes of a suite (built-ins in a fixed order, then user files)."""
    probes = [builtin_probe(name, n, suite.seed, suite.max_item_chars) for name, n in suite.probes.items() if n > 0]
    probes += [load_probe_file(p) for p in suite.probe_files]
    return probes


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
    if kind == "gen":
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
        ref = cls(asdict(suite), {p.name: [it["id"] for it in p.items] for p in probes}, {}, {}, None, probes, domain)
        results: dict[str, list[dict]] = {}
        metrics = evaluate(base_model, tokenizer, suite, ref, _results=results)
        metrics["kl_drift"] = 0.0 if drift is not None else None
        ref.drift = drift
        timings, seconds = metrics["timings"], metrics["seconds"]
        ref.known = {p.name: [r["id"] for r in results[p.name] if is_known(r, p.kind, suite.known_margin)] for p in probes}
        ref.base_metrics = {"items": compact_results(results)}  # the base's own margins: margin_change 0
        ref.base_metrics = evaluate_from_results(results, ref, suite, metrics)
        ref.base_metrics.update(seconds=seconds, timings=timings, drift_prompts=None)
        return ref

    def save(self, folder: str | Path) -> None:
        from safetensors.torch import save_file

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        meta = {"suite": self.suite, "items": self.items, "known": self.known, "base_metrics": self.base_metrics,
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
        if meta.get("items") != items or meta["suite"].get("drift_prompts") != suite.drift_prompts:
            raise RetainError(f"{folder / CALIBRATION_FILE}: built for a different suite (probes, items or drift "
                              "prompts differ); drop --reference to recompute it")
        drift = None
        if meta.get("drift"):
            tensors = load_file(str(folder / REFERENCE_TENSORS))
            drift = DriftReference.from_saved(meta["drift"], tensors)
        domain = suite_domain(suite)
        return cls(meta["suite"], meta["items"], meta["known"], meta.get("base_metrics", {}), drift, probes, domain)


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
        t = time.perf_counter()
        if p.kind in DOMAIN_FILE_KINDS:
            results[p.name] = score_domain_items(model, tokenizer, p, batch_size=suite.batch_size)
        else:
            results[p.name] = score_probe(model, tokenizer, p, batch_size=suite.batch_size,
                                          max_new_tokens=suite.max_new_tokens)
        timings[p.name] = round(time.perf_counter() - t, 2)
    kl, drift_prompts = None, None
    if ref is not None and ref.drift is not None:
        t = time.perf_counter()
        kls, counts = kl_per_prompt(model, tokenizer, ref.drift, batch_size=suite.batch_size)
        kl, drift_prompts = weighted_mean(kls, counts), {"kl": kls, "tokens": counts}
        timings["kl_drift"] = round(time.perf_counter() - t, 2)
    out = evaluate_from_results(results, ref, suite, {"kl_drift": kl})
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


def evaluate_from_results(results: dict[str, list[dict]], ref: BaseReference | None, suite: EvalSuite,
                          extra: dict) -> dict:
    """Aggregate per-item results into the metrics dict (retention uses ``ref.known``)."""
    probe_rows: dict[str, dict] = {}
    known_total = retained_total = 0
    chance_total = 0.0
    for name, rs in results.items():
        if name.startswith("domain:"):
            continue
        row = {"n": len(rs), "accuracy": _acc(rs)}
        if rs and "correct_raw" in rs[0]:
            row["acc_raw"] = _acc(rs, "correct_raw")
        if ref is not None and ref.known.get(name) is not None:
            known = set(ref.known[name])
            retained = sum(1 for r in rs if r["id"] in known and r["correct"])
            # expected retention of a model that forgot everything and guesses uniformly (1/k per MC item)
            chance = sum(1 / r["k"] for r in rs if r["id"] in known and r.get("k"))
            row.update(known=len(known), retained=retained, retention=retained / len(known) if known else None,
                       retention_chance=chance / len(known) if known else None)
            known_total += len(known)
            retained_total += retained
            chance_total += chance
        probe_rows[name] = row
    accs = [r["accuracy"] for r in probe_rows.values() if r["accuracy"] is not None]
    dom = next(((k, v) for k, v in results.items() if k.startswith("domain:")), None)
    items = compact_results(results)
    loglik = bool(dom and dom[1] and "score" in dom[1][0])  # a free-form domain file: mean nats/token
    return {
        "domain_score": (sum(r["score"] for r in dom[1]) / len(dom[1]) if loglik else _acc(dom[1])) if dom else None,
        "retention": retained_total / known_total if known_total else None,
        "retention_chance": chance_total / known_total if known_total else None,
        "margin_change": margin_change(items, ref),
        "probe_accuracy": sum(accs) / len(accs) if accs else None,
        "kl_drift": extra.get("kl_drift"),
        "probes": probe_rows,
        "domain": ({"name": dom[0].split(":", 1)[1], "n": len(dom[1]), "accuracy": None if loglik else _acc(dom[1]),
                    **({"metric": "loglik", "loglik": sum(r["score"] for r in dom[1]) / len(dom[1])} if loglik else {}),
                    **(label_balance(items[dom[0]]["pred"], items[dom[0]]["gold"]) if "gold" in items[dom[0]] else {})}
                   if dom else None),
        "known_total": known_total,
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
