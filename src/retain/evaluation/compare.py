"""Item-by-item comparison of two evaluated models, with 95 % confidence intervals.

Both models must have been scored with the same suite and base reference (the demo and
``retain eval`` guarantee it), so their per-item outcomes line up. Seven paired differences:

==================  ============================================  ================================  ==========
metric              per-item outcome                              items                             unit
==================  ============================================  ================================  ==========
``domain``          correct (0/1), or the answer's mean log-lik   held-out domain items             fraction or
                    (free-form domain files: ``score``)                                             nats/token
``retention``       correct (0/1)                                 known knowledge-probe items       fraction
``behaviour``       correct in its own chat reply (0/1)           known behaviour-probe items       fraction
``reply_change``    reply differs from the base's (0/1)           asked behaviour-probe items       fraction
``margin``          gold margin (acc_norm gold − best wrong)      known multiple-choice items       nats/char
``drift``           mean KL(base ‖ model) over the reply          drift prompts, token-weighted     nats/token
``kl_opening``      mean KL over the reply's first 4 tokens       drift prompts                     nats/token
==================  ============================================  ================================  ==========

The base model's own outcomes are: its domain results, 1 on every known item (that is what "known"
means), its calibration margins, 0 reply change and 0 KL. So "vs base" intervals read as: domain gain, retention
loss (retention − 100 %), margin change and drift; "vs full FT" intervals compare two fine-tunes.
Intervals are paired percentile bootstraps (:func:`retain.evaluation.stats.paired_bootstrap`);
0/1 metrics also get an exact McNemar p-value and the counts of items ``lost`` (right under b, wrong
under a) and ``gained`` (the reverse).
"""

from __future__ import annotations

from typing import Any

from retain.errors import RetainError
from retain.evaluation.stats import Interval, mcnemar_exact, paired_bootstrap

METRICS = ("domain", "retention", "behaviour", "reply_change", "margin", "drift", "kl_opening")
BINARY = ("domain", "retention", "behaviour")


def outcomes(metrics: dict[str, Any], known: dict[str, list[str]], mc_probes: set[str]
             ) -> dict[str, tuple[dict[str, float], dict[str, float]]]:
    """Per metric: ({item key: outcome}, {item key: weight}) of one evaluated model.

    metrics: an :func:`retain.evaluation.suite.evaluate` result (its ``items`` and ``drift_prompts``).
    known: probe name -> ids the base knows. mc_probes: names of the multiple-choice probes.
    """
    items = metrics.get("items") or {}
    out: dict[str, tuple[dict[str, float], dict[str, float]]] = {m: ({}, {}) for m in METRICS}
    for name, rec in items.items():
        if len(set(rec["ids"])) != len(rec["ids"]):  # keyed by id below: a repeated id would overwrite
            dup = next(i for i in rec["ids"] if rec["ids"].count(i) > 1)
            raise RetainError(f"probe {name}: item id {dup!r} appears twice in the results; ids must be unique")
        pairs = list(zip(rec["ids"], rec["correct"], rec["margin"]))
        if name.startswith("domain:"):
            scores = rec.get("score") or [float(c) for c in rec["correct"]]  # free-form: nats/token per item
            for i, v in zip(rec["ids"], scores):
                out["domain"][0][i] = float(v)
            continue
        k = set(known.get(name, ()))
        view = "behaviour" if rec.get("view") == "behaviour" else "retention"
        for i, c, m in pairs:
            if i in k:
                out[view][0][f"{name}/{i}"] = float(c)
                if name in mc_probes:
                    out["margin"][0][f"{name}/{i}"] = float(m)
        if view == "behaviour" and rec.get("changed") is not None:
            for i, ch in zip(rec["ids"], rec["changed"]):
                out["reply_change"][0][f"{name}/{i}"] = float(ch)
    drift = metrics.get("drift_prompts")
    if drift:
        for j, (kl, n) in enumerate(zip(drift["kl"], drift["tokens"])):
            out["drift"][0][str(j)] = float(kl)
            out["drift"][1][str(j)] = float(n)
        for j, kl in enumerate(drift.get("kl_opening") or []):
            out["kl_opening"][0][str(j)] = float(kl)
    return out


def compare(a: dict[str, Any], b: dict[str, Any], known: dict[str, list[str]], mc_probes: set[str], *,
            b_is_base: bool = False, n_boot: int = 2000, seed: int = 0) -> dict[str, dict | None]:
    """Paired differences a − b per metric: ``{metric: {"diff", "lo", "hi", "n", "level", ["p_mcnemar"]}}``
    (None where either side lacks the items). ``b_is_base``: b is the base model (its known items count
    as 1 and its drift as 0, whatever its metrics dict holds)."""
    oa, ob = outcomes(a, known, mc_probes), outcomes(b, known, mc_probes)
    if b_is_base:
        for m in ("retention", "behaviour"):
            ob[m] = ({k: 1.0 for k in oa[m][0]}, {})
        for m in ("reply_change", "kl_opening"):
            ob[m] = ({k: 0.0 for k in oa[m][0]}, {})
        ob["drift"] = ({k: 0.0 for k in oa["drift"][0]}, dict(oa["drift"][1]))
    result: dict[str, dict | None] = {}
    for m in METRICS:
        va, vb = oa[m][0], ob[m][0]
        keys = [k for k in va if k in vb]
        if not keys:
            result[m] = None
            continue
        w = [oa[m][1].get(k, 1.0) for k in keys] if m == "drift" else None
        iv: Interval = paired_bootstrap([va[k] for k in keys], [vb[k] for k in keys], weights=w,
                                        n_boot=n_boot, seed=seed)
        row = iv.to_json()
        if m in BINARY and all(va[k] in (0.0, 1.0) and vb[k] in (0.0, 1.0) for k in keys):
            row.update(binary_counts([va[k] for k in keys], [vb[k] for k in keys]))
        result[m] = row
    return result


def binary_counts(a: list[float], b: list[float]) -> dict:
    """``{"p_mcnemar", "lost", "gained"}`` of paired 0/1 outcomes a (the model) against b (the reference):
    lost = right under b and wrong under a; gained = the reverse."""
    return {"p_mcnemar": mcnemar_exact([x > 0.5 for x in a], [y > 0.5 for y in b]),
            "lost": sum(1 for x, y in zip(a, b) if y > 0.5 >= x),
            "gained": sum(1 for x, y in zip(a, b) if x > 0.5 >= y)}


def interval(row: dict | None) -> Interval | None:
    """The :class:`Interval` of one ``compare`` entry (None stays None)."""
    return None if row is None else Interval.from_json(row)
