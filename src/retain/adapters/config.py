"""Adapter options (torch-free, so ``retain routing --help`` and YAML parsing stay fast).

- ``LoRAMoEConfig``: the paper's defaults (arXiv 2312.09979): 6 experts of rank 4, alpha 32, LBC with
  delta 0.1 and beta 0.1, half the experts in the world-knowledge group.
- ``LoRAConfig``: the LoRA baseline; mapped one to one onto ``peft.LoraConfig``.
- ``RoutingReportConfig``: the ``retain routing`` command.
- ``target_modules=None`` means "the FFN projections of this architecture", resolved at injection time
  (see :mod:`retain.adapters.targets`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from retain.errors import RetainError


@dataclass
class LoRAMoEConfig:
    """LoRAMoE: E LoRA experts per target linear, a per-token softmax router, and the LBC."""

    num_experts: int = 6
    """E: LoRA experts per adapted linear layer."""
    rank: int = 4
    """r: rank of each expert (total adapter rank per layer is E*r)."""
    alpha: float = 32.0
    """LoRA scaling numerator: each expert's update is scaled by alpha / rank."""
    dropout: float = 0.05
    """Dropout on the adapter input (the frozen path sees the undropped input)."""
    dropout_per_expert: bool = False
    """True: each expert draws its own dropout mask, as the authors' code and MoE-PEFT do (one
    ``lora_dropout(x)`` call per expert). False (default): one mask shared by the experts and one stacked
    matmul. Measured on this 2-core CPU, SmolLM2-135M with the default LoRAMoE (6 experts x rank 4 on the
    FFN), batch 8 x 128 tokens: 13.4 vs 8.2 s per training step (1.64x), hence the default. Inference
    is the same either way (no dropout)."""
    target_modules: Optional[list[str]] = None
    """Module-name suffixes to adapt (e.g. [gate_proj, up_proj, down_proj, q_proj]); None = the FFN
    projections of the architecture."""
    world_experts: Optional[int] = None
    """Experts in the world-knowledge group (the first ones); the rest form the task group. None = E // 2."""
    blc_weight: float = 0.1
    """beta: weight of the localized balancing constraint in the training loss (0 disables it)."""
    blc_alpha: float = 0.1
    """delta (in [0, 1)): the importance matrix I holds 1-delta and 1+delta (which goes where: blc_paper_sign)."""
    blc_paper_sign: bool = False
    """False (default): I = 1-delta where the expert's group matches the sample type, 1+delta elsewhere, so
    minimizing Var(Z)/Mean(Z)^2 (which drives Q towards 1/I) sends world samples to the world experts.
    True: the paper's/authors' literal I (1+delta on the matching group), under which the matching group
    receives *less* mass (Ablustrund/LoRAMoE issue 22); with equal groups the two differ only by which
    experts are called 'world'."""
    blc_eps: float = 1e-10
    """epsilon in Var(Z) / (Mean(Z)^2 + epsilon) (1e-10 as in the authors' code)."""
    blc_reduction: str = "mean"
    """How per-layer LBC terms combine: 'mean' (default; beta does not grow with depth) or 'sum' (the
    authors' code: sum over layers and projections)."""

    def __post_init__(self) -> None:
        if self.num_experts < 1:
            raise RetainError(f"loramoe.num_experts={self.num_experts}: must be >= 1")
        if self.rank < 1:
            raise RetainError(f"loramoe.rank={self.rank}: must be >= 1")
        if not 0.0 <= self.dropout < 1.0:
            raise RetainError(f"loramoe.dropout={self.dropout}: must be in [0, 1)")
        if not 0.0 <= self.blc_alpha < 1.0:
            raise RetainError(f"loramoe.blc_alpha={self.blc_alpha}: must be in [0, 1)")
        if self.blc_weight < 0:
            raise RetainError(f"loramoe.blc_weight={self.blc_weight}: must be >= 0")
        if self.blc_reduction not in ("mean", "sum"):
            raise RetainError(f"loramoe.blc_reduction={self.blc_reduction!r}: use 'mean' or 'sum'")
        w = self.num_world_experts
        if not 0 <= w <= self.num_experts:
            raise RetainError(
                f"loramoe.world_experts={self.world_experts}: must be between 0 and num_experts={self.num_experts}"
            )

    @property
    def num_world_experts(self) -> int:
        """Size of the world-knowledge group (the first ``num_world_experts`` experts)."""
        return self.num_experts // 2 if self.world_experts is None else int(self.world_experts)


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


@dataclass
class RoutingReportConfig:
    """Where a trained LoRAMoE adapter routes tokens: router mass per expert group and layer, by sample type."""

    adapter_dir: str
    """Folder written by training with method loramoe (adapter_config.json + adapter_model.safetensors)."""
    data: Optional[str] = None
    """JSONL file of {"messages": [...], "sample_type": 1|0|-1} rows (required)."""
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
    """'auto' (cuda if available), 'cpu' or 'cuda'."""
