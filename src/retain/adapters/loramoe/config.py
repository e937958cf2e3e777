"""LoRAMoE options (torch-free): the paper's defaults (arXiv 2312.09979): 6 experts of rank 4, alpha 32,
LBC with delta 0.1 and beta 0.1, half the experts in the world-knowledge group.

- The LBC options are ``lbc_*``, with the paper's symbols: ``lbc_beta`` (β, the weight of the term) and
  ``lbc_delta`` (δ, the spread of the importance matrix). Until issue 11 they were ``blc_weight`` /
  ``blc_alpha`` (LBC spelled backwards, and δ called alpha) and ``blc_paper_sign`` / ``blc_eps`` /
  ``blc_reduction``.
- Old names still load (adapter folders, recipes, ``--set``): :meth:`LoRAMoEConfig.from_dict` and
  :func:`renamed_keys` map them, with one logged warning line per old key. A logged line rather than a
  ``DeprecationWarning``: Python hides ``DeprecationWarning`` outside ``__main__``, so a user running an
  old recipe through the CLI would never see it, while a ``logging`` warning prints exactly one line on
  stderr (through the CLI's handler, or logging's last-resort handler when none is configured).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, ClassVar, Optional

from retain.errors import RetainError

log = logging.getLogger(__name__)


@dataclass
class LoRAMoEConfig:
    """LoRAMoE: E LoRA experts per target linear, a per-token softmax router, and the LBC."""

    RENAMED: ClassVar[dict[str, str]] = {
        "blc_weight": "lbc_beta", "blc_alpha": "lbc_delta", "blc_paper_sign": "lbc_paper_sign",
        "blc_eps": "lbc_eps", "blc_reduction": "lbc_reduction",
    }
    """Old key -> new key (old adapter folders and recipes still load; see the module docstring)."""

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
    scope: Optional[str] = None
    """Module-name prefix the experts are confined to (e.g. 'model.language_model', the language model of
    an image-text-to-text model); None = the whole model. Recorded so loading injects the same layers."""
    world_experts: Optional[int] = None
    """Experts in the world-knowledge group (the first ones); the rest form the task group. None = E // 2."""
    lbc_beta: float = 0.1
    """β: weight of the localized balancing constraint in the training loss (0 disables it)."""
    lbc_delta: float = 0.1
    """δ (in [0, 1)): the importance matrix I holds 1-δ and 1+δ (which goes where: lbc_paper_sign)."""
    lbc_paper_sign: bool = False
    """False (default): I = 1-δ where the expert's group matches the sample type, 1+δ elsewhere, so
    minimizing Var(Z)/Mean(Z)^2 (which drives Q towards 1/I) sends world samples to the world experts.
    True: the paper's/authors' literal I (1+δ on the matching group), under which the matching group
    receives *less* mass (Ablustrund/LoRAMoE issue 22); with equal groups the two differ only by which
    experts are called 'world'."""
    lbc_eps: float = 1e-10
    """ε in Var(Z) / (Mean(Z)^2 + ε) (1e-10 as in the authors' code)."""
    lbc_reduction: str = "mean"
    """How per-layer LBC terms combine: 'mean' (default; β does not grow with depth) or 'sum' (the
    authors' code: sum over layers and projections)."""

    def __post_init__(self) -> None:
        if self.num_experts < 1:
            raise RetainError(f"loramoe.num_experts={self.num_experts}: must be >= 1")
        if self.rank < 1:
            raise RetainError(f"loramoe.rank={self.rank}: must be >= 1")
        if not 0.0 <= self.dropout < 1.0:
            raise RetainError(f"loramoe.dropout={self.dropout}: must be in [0, 1)")
        if not 0.0 <= self.lbc_delta < 1.0:
            raise RetainError(f"loramoe.lbc_delta={self.lbc_delta}: must be in [0, 1)")
        if self.lbc_beta < 0:
            raise RetainError(f"loramoe.lbc_beta={self.lbc_beta}: must be >= 0")
        if self.lbc_reduction not in ("mean", "sum"):
            raise RetainError(f"loramoe.lbc_reduction={self.lbc_reduction!r}: use 'mean' or 'sum'")
        w = self.num_world_experts
        if not 0 <= w <= self.num_experts:
            raise RetainError(
                f"loramoe.world_experts={self.world_experts}: must be between 0 and num_experts={self.num_experts}"
            )

    @property
    def num_world_experts(self) -> int:
        """Size of the world-knowledge group (the first ``num_world_experts`` experts)."""
        return self.num_experts // 2 if self.world_experts is None else int(self.world_experts)

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str = "loramoe") -> "LoRAMoEConfig":
        """A config from plain data (an ``adapter_config.json``'s ``config``, a recipe section), old keys
        renamed (:func:`renamed_keys`); an unknown key is one RetainError line starting with ``where``."""
        data = renamed_keys(cls, data, where)
        fields = set(cls.__dataclass_fields__)
        unknown = sorted(set(data) - fields)
        if unknown:
            raise RetainError(f"{where}: unknown LoRAMoE key '{unknown[0]}'; valid keys: {', '.join(sorted(fields))}")
        try:
            return cls(**data)
        except TypeError as e:  # a value of the wrong type reaches a comparison in __post_init__
            raise RetainError(f"{where}: a value has the wrong type ({e})") from None


def renamed_keys(cls: type, data: dict[str, Any], where: str) -> dict[str, Any]:
    """``data`` with ``cls.RENAMED``'s old keys under their new names (one logged warning line per old key).
    Both spellings at once is an error. Classes without ``RENAMED`` get ``data`` back unchanged."""
    renamed = getattr(cls, "RENAMED", None)
    if not renamed or not any(k in renamed for k in data):
        return data
    out = dict(data)
    for old, new in renamed.items():
        if old not in out:
            continue
        if new in out:
            raise RetainError(f"{where}: both '{old}' and its new name '{new}' are set; keep only '{new}'")
        out[new] = out.pop(old)
        log.warning("%s: '%s' is deprecated; it is now '%s' (the old name still works)", where, old, new)
    return out
