"""LoRAMoE (Dou et al., arXiv 2312.09979): LoRA experts + per-token router + localized balancing constraint.

One folder per method, as PEFT's tuners:

- :mod:`.config` (torch-free): :class:`LoRAMoEConfig`, old ``blc_*`` keys mapped to ``lbc_*``;
- :mod:`.layer`: the fused layer :class:`LoRAMoELinear`;
- :mod:`.lbc`: the constraint as pure functions (importance matrix, router mass, one layer's term);
- :mod:`.model`: injection, :func:`sample_types` (context manager), :func:`lbc_loss`, and
  ``LoRAMoEMethod``, the method's entry in the adapter registry (:mod:`retain.adapters.registry`).

Typical training step::

    with sample_types(model, batch["sample_type"]):
        out = model(input_ids=ids, attention_mask=mask, labels=labels)
    aux = lbc_loss(model)
    loss = out.loss + (aux if aux is not None else 0)

Importing this package stays torch-free (so ``retain --help`` and recipe parsing stay fast): the config is
imported at once, everything else on first use.
"""

from __future__ import annotations

import importlib
from typing import Any

from retain.adapters.loramoe.config import LoRAMoEConfig

_LAZY = {
    "LoRAMoELinear": "layer",
    **{name: "model" for name in (
        "LoRAMoEMethod", "LoRAMoEState", "adapter_state_dict", "adapters_disabled", "inject_loramoe",
        "last_router_mass", "lbc_loss", "load_adapter_state_dict", "loramoe_config", "loramoe_layers",
        "sample_types")},
}

__all__ = ["LoRAMoEConfig", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
