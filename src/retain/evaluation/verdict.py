"""``retain eval``'s verdict: one plain sentence per axis and tuned model, each with its paired 95 % interval.

- The axes are one table (:data:`AXES`), keyed by the metric names of :func:`retain.evaluation.suite.evaluate`
  and the entries of :func:`retain.evaluation.compare.compare`: *learned* (domain score), *kept knowledge*
  (known-fact retention: multiple-choice and few-shot probes), *kept behaviour* (share of the base's correct
  chat answers still correct) and *drift* (KL). An axis the run did not measure is skipped, so an axis added
  to the metrics (and to ``compare``) gets its sentence, its table row and its gate rule from this table.
- lm-evaluation-harness tasks are axes too (``lm_eval:<task>``), built from the ``vs_base`` entries that
  :mod:`retain.evaluation.harness` pairs item by item.
- The wording follows the one rule of :func:`retain.evaluation.stats.verdict`: a gain or a loss is named only
  when the 95 % interval excludes 0; otherwise the sentence says :data:`~retain.evaluation.stats.NOT_DETECTABLE`.
  Example: ``kept knowledge: lost 2 of 18 known facts (-11.1 [-27.8, +0.0] pts): not detectable at this size;
  add items for power``.
- Units: 0/1 axes in points (percentage points of the difference, ×100); drift in nats/token; a free-form
  domain file (answer log-likelihood) in nats/token.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from retain.evaluation.stats import NOT_DETECTABLE, Interval, fmt_interval, verdict


@dataclass(frozen=True)
class Axis:
    """One measured axis of a fine-tune against its base."""

    metric: str
    """Key of the model's score in an eval row (``domain_score``, ``retention``, ...)."""
    compare_keys: tuple[str, ...]
    """Keys of its paired interval in ``vs_base`` (the first present is used)."""
    label: str
    """Words of the verdict and the tables: learned, kept knowledge, kept behaviour, drift."""
    gate_key: str
    """Name of its rule in a gate file (:mod:`retain.evaluation.gate`)."""
    scale: float = 100.0
    """Shown value = difference × scale (100: fractions as points)."""
    unit: str = "pts"
    digits: int = 1
    items: str = "items"
    """What the items are called in a sentence."""


AXES: tuple[Axis, ...] = (
    Axis("domain_score", ("domain",), "learned", "domain", items="held-out items"),
    Axis("retention", ("retention",), "kept knowledge", "knowledge_retention", items="known facts"),
    Axis("behaviour_retention", ("behaviour_retention", "behaviour"), "kept behaviour", "behaviour_retention",
         items="chat answers the base got right"),
    Axis("kl_drift", ("drift",), "drift", "drift", scale=1.0, unit="nats/token", digits=3, items="chat prompts"),
)
"""The verdict's axes, in the order they are reported."""

LM_EVAL_PREFIX = "lm_eval:"
KL_NOISE = 1e-6
"""KL below this (nats/token) is float rounding, not drift (an untrained adapter measures ~6e-8)."""


def axis_entry(row: dict, axis: Axis) -> dict | None:
    """The ``vs_base`` entry of ``axis`` in an eval row (None when not measured)."""
    vb = row.get("vs_base") or {}
    return next((vb[k] for k in axis.compare_keys if vb.get(k)), None)


def domain_axis(row: dict) -> Axis:
    """The domain axis of this row: points for a 0/1 domain, nats/token for a free-form domain file."""
    dom = row.get("domain") or {}
    if dom.get("metric") == "loglik":
        return Axis("domain_score", ("domain",), "learned", "domain", scale=1.0, unit="nats/token", digits=3,
                    items="held-out replies")
    return AXES[0]


def row_axes(row: dict) -> list[tuple[Axis, dict]]:
    """(axis, its vs_base entry) for every axis this tuned row measured, lm-eval tasks last."""
    out = []
    for axis in AXES:
        axis = domain_axis(row) if axis.metric == "domain_score" else axis
        entry = axis_entry(row, axis)
        if entry is not None:
            out.append((axis, entry))
    for key, entry in sorted((row.get("vs_base") or {}).items()):
        if key.startswith(LM_EVAL_PREFIX) and entry:
            task = key[len(LM_EVAL_PREFIX):]
            scale = 100.0 if entry.get("binary", True) else 1.0
            out.append((Axis(key, (key,), f"lm-eval {task} ({entry.get('metric', '?')})", key, scale=scale,
                             unit="pts" if scale == 100 else entry.get("metric", ""), digits=1 if scale == 100 else 3,
                             items="items"), entry))
    return out


def _counts(entry: dict, n: int) -> str:
    if "lost" not in entry:
        return f"{n} items"
    return f"{entry['gained']} gained, {entry['lost']} lost of {n}"


def sentence(row: dict, axis: Axis, entry: dict) -> str:
    """The verdict sentence of one axis of one tuned row (see the module docstring)."""
    iv = Interval.from_json(entry)
    n = iv.n
    shown = f"{fmt_interval(iv, axis.scale, axis.digits)} {axis.unit}"
    if math.isnan(iv.diff):
        return f"{axis.label}: not measured (no paired items)"
    if axis.metric == "kl_drift":
        words = verdict(iv, more="detectable", less="detectable", same="none detectable")
        if iv.hi < KL_NOISE:
            words = "none (float rounding only)"
        kl = row.get("kl_drift")
        return (f"drift: KL(base ‖ tuned) {kl if kl is not None else iv.diff:.{axis.digits}f} nats/token, interval "
                f"[{iv.lo:.{axis.digits}f}, {iv.hi:.{axis.digits}f}] over {n} {axis.items}: {words}")
    if axis.metric in ("retention", "behaviour_retention"):
        lost = entry.get("lost", round(-iv.diff * n))
        if iv.lo == iv.hi == 0:
            return f"{axis.label}: lost 0 of {n} {axis.items} ({shown}): none lost on these items"
        words = verdict(iv, more="a detectable gain", less="a detectable loss", same=NOT_DETECTABLE)
        return f"{axis.label}: lost {lost} of {n} {axis.items} ({shown}): {words}"
    words = verdict(iv, more="a detectable gain", less="a detectable loss", same=NOT_DETECTABLE)
    if iv.lo == iv.hi == 0:
        words = "no item changed"
    if axis.metric == "domain_score":
        dom = row.get("domain") or {}
        name = dom.get("name", "domain")
        if dom.get("metric") == "loglik":
            return (f"learned: {name}, mean answer log-likelihood {shown} vs the base over {n} {axis.items}: "
                    f"{words}")
        return f"learned: {name} {shown} vs the base ({_counts(entry, n)} {axis.items}): {words}"
    return f"{axis.label}: {shown} vs the base ({_counts(entry, n)}): {words}"


def verdict_lines(rows: list[dict]) -> list[str]:
    """``model: sentence`` lines, every measured axis of every tuned row (base rows have no ``vs_base``)."""
    out = []
    for r in rows:
        if r.get("model") == "base" or not r.get("vs_base"):
            continue
        out += [f"{r.get('model', '?')}: {sentence(r, a, e)}" for a, e in row_axes(r)]
    return out


def legend() -> list[str]:
    """The meaning of every column and bracket in eval.md (markdown bullet lines)."""
    return [
        "- **score**: the model's own value. **learned**: held-out domain accuracy % (or, for a free-form domain "
        "file, the mean log-likelihood of the gold reply, nats/token). **kept knowledge**: share % of the probe "
        "items the base knows (answered correctly with a margin) that the model still answers correctly. "
        "**kept behaviour**: the same over the chat answers the base got right. **margins**: mean change of the "
        "known multiple-choice items' gold margin (nats/char). **drift**: mean KL(base ‖ model) per token of the "
        "base's own replies to chat prompts (nats/token; 0 = identical).",
        "- **vs base [95 %]**: the paired difference model − base, item by item, with its bootstrap 95 % interval "
        "`[lo, hi]` (2,000 resamples). Points (pts) for % axes. Intervals are not symmetric around the "
        "difference; read both bounds.",
        "- **items**: paired items behind the interval. A difference is called a gain or a loss only when its "
        "interval excludes 0; otherwise it is '" + NOT_DETECTABLE + "'.",
        "- **kept / known** (per probe): known items still answered correctly / items the base knows; "
        "'–' where the base knows none.",
    ]
