"""What each training method trains in an image-text-to-text (LLaVA-family) model.

=============  =====================================  ======================================
method         trainable                              frozen
=============  =====================================  ======================================
``projector``  the multimodal projector (LLaVA         language model, vision tower
               stage 1, feature alignment)
``full``       language model + projector (stage 2)   vision tower
``lora``       PEFT LoRA on the language model's      everything else (projector included)
               FFN layers
``loramoe``    LoRAMoE experts + routers on the       everything else (projector included)
               language model's FFN layers (+ LBC)
=============  =====================================  ======================================

- The vision tower is always frozen **and kept in eval mode** (:func:`retain.multimodal.model.freeze_vision_tower`),
  so BatchNorm never switches to batch statistics under ``model.train()``.
- ``projector`` is a registered method (:class:`ProjectorMethod`, :mod:`retain.adapters.registry`); LoRA and
  LoRAMoE get the registry's ``scope`` = the language model (``model.language_model``), so only its FFN
  layers are adapted (tested). The projector stays as stage 1 left it: an adapter folder then holds only
  the adapter, on top of the stage-1 model.
- A ``projector`` or ``full`` fine-tune saves as a complete MLLM folder (``save_pretrained`` + the processor),
  which :func:`retain.multimodal.model.load_mllm` reads back.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch.nn as nn

from retain.adapters.methods import prepare_model
from retain.adapters.registry import AdapterMethod, register_method
from retain.errors import RetainError
from retain.multimodal.model import LANGUAGE_SCOPE, core_model, freeze_vision_tower

PROJECTOR = "multi_modal_projector"
MLLM_METHODS = ("projector", "full", "lora", "loramoe")


def is_multimodal(model: nn.Module) -> bool:
    """True for an image-text-to-text model (its config has a ``vision_config``), PEFT-wrapped or not."""
    cfg = getattr(model, "config", None)
    return getattr(cfg, "vision_config", None) is not None


def projector_of(model: nn.Module) -> nn.Module:
    """The multimodal projector module (LLaVA's ``model.multi_modal_projector``)."""
    inner = getattr(core_model(model), "model", None)
    proj = getattr(inner, PROJECTOR, None)
    if proj is None:
        raise RetainError(f"{type(model).__name__}: no {PROJECTOR}; method 'projector' needs a LLaVA-family model")
    return proj


@register_method
class ProjectorMethod(AdapterMethod):
    """LLaVA stage 1: only the multimodal projector trains. The weights themselves change (``is_adapter``
    False) and the run saves a whole MLLM folder, so saving, detecting and loading are full fine-tuning's
    (this method claims no model or folder)."""

    name = "projector"

    def prepare(self, model: nn.Module, config: Any = None, scope: str | None = None) -> nn.Module:
        proj = projector_of(model)
        model.requires_grad_(False)
        proj.requires_grad_(True)
        return model

    def owns(self, model: nn.Module) -> bool:
        return False  # a projector-trained model is a whole model: full fine-tuning's format

    def detects(self, folder: Path, meta: dict | None) -> bool:
        return False


def prepare_mllm(model: nn.Module, method: str, lora=None, loramoe=None) -> nn.Module:
    """The module to train for ``method`` (table above), through the method registry; LoRA / LoRAMoE are
    scoped to the language model; the vision tower is frozen in every case."""
    if method not in MLLM_METHODS:
        raise RetainError(f"method={method!r}: for an image-text-to-text model use one of {', '.join(MLLM_METHODS)}")
    scope = LANGUAGE_SCOPE if method in ("lora", "loramoe") else None
    trainee = prepare_model(model, method, lora=lora, loramoe=loramoe, scope=scope)
    freeze_vision_tower(model)
    return trainee
