"""Sample types for the localized balancing constraint (LBC).

- Every training example carries ``sample_type``: ``WORLD`` (1) for world-knowledge data (e.g. the
  TG self-decompression corpus), ``TASK`` (0) for the downstream task, ``UNKNOWN`` (-1) when the
  recipe does not say. LoRAMoE's LBC routes WORLD samples to the first group of experts and TASK
  samples to the rest; UNKNOWN samples are excluded from the LBC term.
- Plain ints (not an Enum) because they travel as a ``torch.LongTensor`` of shape (B,) in batches.
"""

from __future__ import annotations

from retain.errors import RetainError

WORLD = 1
TASK = 0
UNKNOWN = -1

_NAMES = {"world": WORLD, "task": TASK}


def parse_sample_type(name: str | None) -> int:
    """Map ``"world"`` → 1, ``"task"`` → 0, ``None`` → -1 (case-insensitive); anything else is a RetainError."""
    if name is None:
        return UNKNOWN
    key = str(name).strip().lower()
    if key not in _NAMES:
        raise RetainError(f"sample type {name!r}: expected 'world' or 'task' (or leave it out)")
    return _NAMES[key]

