"""Sample types for the localized balancing constraint (LBC).

- Every training example carries ``sample_type``: ``WORLD`` (1) for world-knowledge data (e.g. the
  TG self-decompression corpus), ``TASK`` (0) for the downstream task, ``UNKNOWN`` (-1) when the
  recipe does not say. LoRAMoE's LBC routes WORLD samples to the first group of experts and TASK
  samples to the rest; UNKNOWN samples are excluded from the LBC term.
- Plain ints (not an Enum) because they travel as a ``torch.LongTensor`` of shape (B,) in batches.
- :func:`as_sample_type` is the one check of a value a user wrote (data files, recipes, dataset columns,
  ``retain routing`` rows); tensors of types are checked against :data:`SAMPLE_TYPES` by the LBC.
"""

from __future__ import annotations

from retain.errors import RetainError

WORLD = 1
TASK = 0
UNKNOWN = -1

SAMPLE_TYPES = (WORLD, TASK, UNKNOWN)
_NAMES = {"world": WORLD, "task": TASK}


def as_sample_type(value: object, where: str = "sample_type") -> int:
    """A user's sample type -> 1, 0 or -1: ``"world"`` / ``"task"`` (case-insensitive), the ints 1 / 0 / -1,
    or None (unknown). Anything else (``True``, ``2``, ``"wrld"``) is one RetainError line starting with
    ``where`` (a file:line, a key or a column)."""
    if value is None:
        return UNKNOWN
    if isinstance(value, int) and not isinstance(value, bool):
        if value not in SAMPLE_TYPES:
            raise RetainError(f"{where}: sample_type {value}: expected 1 (world), 0 (task) or -1 (unknown)")
        return value
    key = value.strip().lower() if isinstance(value, str) else None
    if key not in _NAMES:
        raise RetainError(f"{where}: sample_type {value!r}: expected 'world', 'task', 1, 0 or -1 (or leave it out)")
    return _NAMES[key]

