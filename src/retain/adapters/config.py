"""Adapter options (torch-free, so ``retain routing --help`` and YAML parsing stay fast).

- ``LoRAMoEConfig`` lives in :mod:`retain.adapters.loramoe.config` (the method's own folder) and is
  importable from here as before.
- ``LoRAConfig``: the LoRA baseline; mapped one to one onto ``peft.LoraConfig``.
- ``RoutingReportConfig``: the ``retain routing`` command.
- ``target_modules=None`` means "the FFN projections of this architecture", resolved at injection time
  (see :mod:`retain.adapters.targets`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from retain.adapters.loramoe.config import LoRAMoEConfig
from retain.errors import RetainError

__all__ = ["LoRAConfig", "LoRAMoEConfig", "RoutingReportConfig"]


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


@dataclass
class RoutingReportConfig:
    """Where a trained LoRAMoE adapter routes tokens: router mass per expert group and layer, by sample type."""

    adapter_dir: str
    """Folder written by training with method loramoe (adapter_config.json + adapter_model.safetensors)."""
    data: Optional[str] = None
    """JSONL file of {"messages": [...], "sample_type": 1|0|-1} rows (required; an option, not a positional,
    so the command reads `retain routing ADAPTER --data FILE`)."""
    out: str = "routing_report"
    """Output folder: routing.json, routing.md and routing.png."""
    base_model: Optional[str] = None
    """Base model folder or id; None = the one recorded in adapter_config.json."""
    max_examples: int = 256
    """Use at most this many rows of --data (in file order)."""
    batch_size: int = 8
    """Sequences per forward pass."""
    max_length: int = 512
    """Truncate each chat-formatted example to this many tokens."""
    device: str = "auto"
    """'auto' (cuda, else mps, else cpu), 'cpu', 'cuda', 'cuda:N' or 'mps'."""

    def __post_init__(self) -> None:
        if not self.data:
            raise RetainError("--data: required; give a JSONL file of {'messages': [...], 'sample_type': 1|0|-1}")
        if self.max_examples < 1 or self.batch_size < 1 or self.max_length < 2:
            raise RetainError(f"--max_examples {self.max_examples}, --batch_size {self.batch_size}, --max_length "
                              f"{self.max_length}: need max_examples >= 1, batch_size >= 1 and max_length >= 2")
