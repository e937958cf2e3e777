"""LoRAMoE (Dou et al., arXiv 2312.09979): LoRA experts + per-token router + localized balancing constraint.

- :mod:`.layer`: the fused layer; :mod:`.lbc`: the constraint as a pure function; :mod:`.model`:
  injection, :func:`sample_types` (context manager) and :func:`lbc_loss`.

Typical training step::

    with sample_types(model, batch["sample_type"]):
        out = model(input_ids=ids, attention_mask=mask, labels=labels)
    aux = lbc_loss(model)
    loss = out.loss + (aux if aux is not None else 0)
"""

from retain.adapters.loramoe.layer import LoRAMoELinear
from retain.adapters.loramoe.model import (
    LoRAMoEState,
    adapter_state_dict,
    adapters_disabled,
    inject_loramoe,
    last_router_mass,
    lbc_loss,
    load_adapter_state_dict,
    loramoe_config,
    loramoe_layers,
    sample_types,
)

__all__ = [
    "LoRAMoELinear", "LoRAMoEState", "adapter_state_dict", "adapters_disabled", "inject_loramoe", "last_router_mass", "lbc_loss",
    "load_adapter_state_dict", "loramoe_config", "loramoe_layers", "sample_types",
]
