"""Mix several example sources by weight. The rule, stated once:

**A weight is a source's share of the final mixture** (after normalisation), not a sampling
probability per step and not a repeat factor.

1. Weights must be finite and ``>= 0`` with a positive sum. If they do not sum to 1 they are divided by
   their sum (a warning says so): ``[3, 1]`` means ``[0.75, 0.25]``. A weight of 0 drops the source.
   If *no* source has a weight, every example is used once (plain concatenation).
2. The mixture size ``N`` is ``size`` when given; otherwise the largest ``N`` for which no source has
   to repeat an example: ``N = floor(min_i n_i / w_i)`` over sources with ``w_i > 0``.
3. Source ``i`` contributes ``c_i = w_i * N`` examples, rounded by largest remainder so that the
   counts sum to exactly ``N``.
4. Each source is shuffled (seeded) and its first ``c_i`` examples are taken: sampling *without
   replacement*. If ``c_i > n_i`` that is an error unless ``allow_repeat``; then the source is used
   in whole shuffled passes plus a partial pass, so every example appears ``floor`` or ``ceil`` of
   ``c_i / n_i`` times.
5. The mixture is shuffled once more (same seed) so sources interleave.
6. When the size is derived (no ``size``) and the weights leave out more than :data:`DROP_WARNING_SHARE`
   (25 %) of a source's examples, one warning line names the source, how many of its examples are used,
   and the ``mixture.size`` (with ``allow_repeat``) that would use all of them at the same shares.

Worked example: MedMCQA has 2,000 examples with weight 3, the TG corpus 300 with weight 1. Shares are
0.75 / 0.25; ``N = floor(min(2000/0.75, 300/0.25)) = 1200``: 900 MedMCQA + all 300 TG examples.
With ``size: 2000`` the TG share needs 500 > 300 examples: an error, or with ``allow_repeat: true``
every TG example is used once and 200 of them twice.
"""

from __future__ import annotations

import logging
import math
import random
from dataclasses import dataclass, field

from retain.errors import RetainError

log = logging.getLogger(__name__)


DROP_WARNING_SHARE = 0.25
"""A derived mixture that leaves out more than this share of a source's examples says so (one warning line)."""


@dataclass
class Source:
    """One named list of examples and its (unnormalised) weight; ``weight=None`` = not given."""

    name: str
    examples: list[dict]
    weight: float | None = None


@dataclass
class Mixture:
    examples: list[dict]
    """The mixed, shuffled examples."""
    counts: dict[str, int] = field(default_factory=dict)
    """Examples taken from each source (by name)."""
    shares: dict[str, float] = field(default_factory=dict)
    """Normalised weights (the target shares)."""


def normalise_weights(sources: list[Source]) -> list[float] | None:
    """Shares summing to 1, or None when no source has a weight (concatenate). Raises on bad weights."""
    given = [s.weight is not None for s in sources]
    if not any(given):
        return None
    if not all(given):
        missing = [s.name for s in sources if s.weight is None]
        raise RetainError(f"datasets {missing}: weight missing; give every dataset a weight or none of them")
    for s in sources:
        w = s.weight
        if isinstance(w, bool) or not isinstance(w, (int, float)) or not math.isfinite(w) or w < 0:
            raise RetainError(f"dataset {s.name}: weight {w!r} must be a finite number >= 0")
    total = float(sum(s.weight for s in sources))  # type: ignore[misc]
    if total <= 0:
        raise RetainError("datasets: all weights are 0; give at least one dataset a positive weight")
    if abs(total - 1.0) > 1e-6:
        log.warning("dataset weights sum to %g, not 1; using them as proportions (each divided by %g)", total, total)
    return [float(s.weight) / total for s in sources]  # type: ignore[arg-type]


def _counts(shares: list[float], size: int) -> list[int]:
    """Largest-remainder rounding of ``shares * size`` so the counts sum to ``size``."""
    raw = [w * size for w in shares]
    counts = [math.floor(r) for r in raw]
    order = sorted(range(len(raw)), key=lambda i: (raw[i] - counts[i], -i), reverse=True)
    for i in order[: size - sum(counts)]:
        counts[i] += 1
    return counts


def _warn_dropped(sources: list[Source], shares: list[float], counts: list[int]) -> None:
    """One warning line per source whose weight leaves out more than DROP_WARNING_SHARE of its examples."""
    for s, w, c in zip(sources, shares, counts):
        n = len(s.examples)
        if w > 0 and c < n and (n - c) / n > DROP_WARNING_SHARE:
            keep_all = math.ceil(n / w - 1e-9)
            log.warning("dataset %s: the weights use %d of its %d examples (%.0f %% left out); to train on all of "
                        "them at the same shares set mixture.size: %d with mixture.allow_repeat: true (the other "
                        "datasets then repeat examples), or raise its weight",
                        s.name, c, n, 100 * (n - c) / n, keep_all)


def mix(sources: list[Source], size: int | None = None, allow_repeat: bool = False, seed: int = 0) -> Mixture:
    """Mix ``sources`` by the rule in the module docstring. Deterministic for a given ``seed``."""
    if not sources:
        raise RetainError("datasets: empty; list at least one dataset")
    for s in sources:
        if not s.examples:
            raise RetainError(f"dataset {s.name}: has no examples")
    if size is not None and size < 1:
        raise RetainError(f"mixture.size={size}: must be >= 1 (or leave it out)")
    shares = normalise_weights(sources)
    if shares is None:  # no weights anywhere: concatenation (shares are the natural proportions)
        n_all = sum(len(s.examples) for s in sources)
        shares = [len(s.examples) / n_all for s in sources]
        if size is None:
            counts = [len(s.examples) for s in sources]
        else:
            counts = _counts(shares, size)
    else:
        derived = size is None
        if derived:
            size = math.floor(min(len(s.examples) / w for s, w in zip(sources, shares) if w > 0) + 1e-9)
        counts = _counts(shares, size)
        if derived:
            _warn_dropped(sources, shares, counts)
    rng = random.Random(seed)
    out: list[dict] = []
    for s, c in zip(sources, counts):
        n = len(s.examples)
        if c > n and not allow_repeat:
            raise RetainError(
                f"dataset {s.name}: its share needs {c} examples but it has {n}; lower its weight or "
                "mixture.size, or set mixture.allow_repeat: true"
            )
        picked: list[dict] = []
        while len(picked) < c:  # whole shuffled passes, then a partial one: without replacement per pass
            idx = list(range(n))
            rng.shuffle(idx)
            picked.extend(s.examples[i] for i in idx[: c - len(picked)])
        out.extend(picked)
    rng.shuffle(out)
    return Mixture(
        examples=out,
        counts={s.name: c for s, c in zip(sources, counts)},
        shares={s.name: w for s, w in zip(sources, shares)},
    )
