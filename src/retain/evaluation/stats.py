"""Confidence intervals for paired per-item comparisons: is model A's score really different from B's?

Every model in a comparison is scored on the *same* items, so differences are paired: item i's
outcome under A is compared with item i's outcome under B. Pairing removes the item-difficulty
variance that dominates an unpaired comparison (two models that are both right on the easy items and
both wrong on the hard ones differ only on the rest).

- :func:`paired_bootstrap`: percentile bootstrap of ``mean(a) - mean(b)``; items are resampled with
  replacement, the same resample for both arms. Works for 0/1 outcomes (accuracy, retention) and for
  continuous ones (log-likelihood margins, per-prompt KL). ``n_boot=2000`` and a fixed seed make the
  interval reproducible; its Monte-Carlo error at 2,000 resamples is about 1 % of its width.
- :func:`mcnemar_exact`: the exact two-sided McNemar test for paired 0/1 outcomes (a binomial test
  on the discordant pairs); reported beside the bootstrap interval for accuracy-type metrics.
- :func:`verdict`: the wording rule of the reports. A difference is called a gain or a loss only
  when its 95 % interval excludes 0; otherwise it is "no detectable difference" (the demo's tables) or
  :data:`NOT_DETECTABLE` (``retain eval``'s verdict, which also says what would settle it).

Units: a difference has the unit of its metric (fraction for accuracy / retention, nats for
margins and KL). Intervals are two-sided 95 % unless ``level`` says otherwise.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np


@dataclass(frozen=True)
class Interval:
    """A paired difference ``mean(a) - mean(b)`` with its bootstrap confidence interval."""

    diff: float
    """Point estimate: mean over items of a_i - b_i (unit of the metric)."""
    lo: float
    """Lower bound of the interval."""
    hi: float
    """Upper bound of the interval."""
    n: int
    """Paired items."""
    level: float = 0.95
    """Two-sided coverage."""

    @property
    def excludes_zero(self) -> bool:
        return self.lo > 0 or self.hi < 0

    @property
    def half_width(self) -> float:
        return (self.hi - self.lo) / 2

    def to_json(self) -> dict:
        return {"diff": self.diff, "lo": self.lo, "hi": self.hi, "n": self.n, "level": self.level}

    @classmethod
    def from_json(cls, row: dict) -> "Interval":
        return cls(row["diff"], row["lo"], row["hi"], row["n"], row.get("level", 0.95))


def paired_bootstrap(a: Sequence[float], b: Sequence[float], *, weights: Sequence[float] | None = None,
                     n_boot: int = 2000, seed: int = 0, level: float = 0.95) -> Interval:
    """Percentile-bootstrap interval of ``mean(a) - mean(b)`` over paired items.

    a, b: per-item outcomes of the two arms, same length and item order (bools count as 0/1).
    weights: optional per-item weights (e.g. tokens per prompt), giving the weighted mean
    ``Σ w (a - b) / Σ w``; a resample draws items, each with its weight.
    Returns an :class:`Interval`; with one item, or identical differences, it collapses to the estimate.
    """
    if len(a) != len(b) or (weights is not None and len(weights) != len(a)):
        raise ValueError(f"paired_bootstrap: a, b (and weights) must be equally long ({len(a)} vs {len(b)})")
    x = np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)
    w = np.ones_like(x) if weights is None else np.asarray(weights, dtype=np.float64)
    n = len(x)
    if n == 0 or w.sum() <= 0:
        return Interval(float("nan"), float("nan"), float("nan"), n, level)
    diff = float((w * x).sum() / w.sum())
    if n == 1 or np.all(x == x[0]):
        return Interval(diff, diff, diff, n, level)
    rng = np.random.default_rng(seed)
    means = np.empty(n_boot)
    # Resample in chunks: memory O(chunk * n) instead of O(n_boot * n).
    chunk = max(1, min(n_boot, 2_000_000 // n))
    for s in range(0, n_boot, chunk):
        k = min(chunk, n_boot - s)
        idx = rng.integers(0, n, size=(k, n))
        ws = w[idx]
        means[s: s + k] = (ws * x[idx]).sum(axis=1) / np.maximum(ws.sum(axis=1), 1e-300)
    alpha = (1 - level) / 2
    lo, hi = np.quantile(means, [alpha, 1 - alpha])
    return Interval(diff, float(lo), float(hi), n, level)


def mcnemar_exact(a: Sequence[bool], b: Sequence[bool]) -> float:
    """Two-sided exact McNemar p-value for paired 0/1 outcomes.

    Only discordant items count: n01 (a right, b wrong) and n10 (a wrong, b right). Under H0 each
    discordant item is a fair coin, so p = min(1, 2 · P[Binomial(n01 + n10, 1/2) <= min(n01, n10)]).
    """
    if len(a) != len(b):
        raise ValueError(f"mcnemar_exact: a and b must be equally long ({len(a)} vs {len(b)})")
    n01 = sum(1 for x, y in zip(a, b) if x and not y)
    n10 = sum(1 for x, y in zip(a, b) if y and not x)
    n = n01 + n10
    if n == 0:
        return 1.0
    k = min(n01, n10)
    tail = sum(math.comb(n, i) for i in range(k + 1)) / 2 ** n
    return min(1.0, 2 * tail)


NOT_DETECTABLE = "not detectable at this size; add items for power"
"""What :func:`verdict` says in ``retain eval``'s sentences when the interval contains 0: the data
neither show a change nor rule one out (a wider item set narrows the interval)."""


def verdict(iv: Interval | None, *, more: str = "higher", less: str = "lower",
            same: str = "no detectable difference") -> str:
    """The report's wording rule: ``more`` (difference > 0) or ``less`` (< 0) only when the 95 %
    interval excludes 0; otherwise ``same``. Callers pass the metric's own words, e.g.
    ``verdict(iv, more="kept more than full FT", less="kept less than full FT")``."""
    if iv is None or math.isnan(iv.diff) or not iv.excludes_zero:
        return same
    return more if iv.diff > 0 else less


def fmt_interval(iv: Interval | None, scale: float = 1.0, digits: int = 1) -> str:
    """``+4.2 [+1.0, +7.5]`` (values times ``scale``); ``–`` for None."""
    if iv is None or math.isnan(iv.diff):
        return "–"
    f = f"{{:+.{digits}f}}"
    return f"{f.format(iv.diff * scale)} [{f.format(iv.lo * scale)}, {f.format(iv.hi * scale)}]"


def fmt_pm(value: float | None, iv: dict | Interval | None, scale: float = 1.0, digits: int = 1) -> str:
    """``value ± half-width`` of the interval ``iv`` (an :class:`Interval` or its ``to_json`` dict),
    both times ``scale``; the bare value without an interval; ``–`` without a value."""
    if value is None:
        return "–"
    text = f"{value * scale:.{digits}f}"
    if isinstance(iv, dict):
        iv = Interval.from_json(iv)
    return text if iv is None else f"{text} ± {iv.half_width * scale:.{digits}f}"
