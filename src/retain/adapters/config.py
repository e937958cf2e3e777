"""Adapter options (torch-free, so ``retain train --help`` and YAML parsing stay fast).

- ``LoRAMoEConfig`` lives in :mod:`retain.adapters.loramoe.config` (the method's own folder) and is
  importable from here as before.
- ``LoRAConfig``: the LoRA baseline; mapped one to one onto ``peft.LoraConfig``.
- ``target_modules=None`` means "the FFN projections of this architecture", resolved at injection time
  (see :mod:`retain.adapters.targets`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from retain.adapters.loramoe.config import LoRAMoEConfig
from retain.errors import RetainError

__all__ = ["LoRAConfig", "LoRAMoEConfig"]


@dataclass
class LoRAConfig:
    """Plain LoRA through PEFT (the baseline)."""

    r: int = 8
    """LoRA rank."""
    alpha: float = 16.0
    """lora_alpha: the update is scaled by alpha / r."""
    dropout: float = 0.05
    """lora_dropout."""
    target_modules: Optional[list[str]] = None
    """Module-name suffixes to adapt; None = the FFN projections of the architecture (same as LoRAMoE)."""

    def __post_init__(self) -> None:
        if self.r < 1:
            raise RetainError(f"lora.r={self.r}: must be >= 1")
        if not 0.0 <= self.dropout < 1.0:
            raise RetainError(f"lora.dropout={self.dropout}: must be in [0, 1)")
