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
- LoRA and LoRAMoE find their targets by the automatic FFN rule (:mod:`retain.adapters.targets`): the
  tower (EfficientNet convolutions) and the projector (``linear_1``/``linear_2``) have no
  ``gate_proj``/``up_proj``/``down_proj``, so only the language model is adapted (tested). The projector
  stays as stage 1 left it: an adapter folder then holds only the adapter, on top of the stage-1 model.
- A ``projector`` or ``full`` fine-tune saves as a complete MLLM folder (``save_pretrained`` + the processor),
  which :func:`retain.multimodal.model.load_mllm` reads back.
"""

from __future__ import annotations

import torch.nn as nn

from retain.errors import RetainError

PROJECTOR = "multi_modal_projector"
MLLM_METHODS = ("projector", "full", "lora", "loramoe")


def is_multimodal(model: nn.Module) -> bool:
    """True for an image-text-to-text model (its config has a ``vision_config``), PEFT-wrapped or not."""
    cfg = getattr(model, "config", None)
    return getattr(cfg, "vision_config", None) is not None


def _core(model: nn.Module) -> nn.Module:
    """The ``...ForConditionalGeneration`` inside a PEFT wrapper (or the model itself)."""
    from peft import PeftModel

    return model.get_base_model() if isinstance(model, PeftModel) else model


def projector_of(model: nn.Module) -> nn.Module:
    """The multimodal projector module (LLaVA's ``model.multi_modal_projector``)."""
    inner = getattr(_core(model), "model", None)
    proj = getattr(inner, PROJECTOR, None)
    if proj is None:
        raise RetainError(f"{type(model).__name__}: no {PROJECTOR}; method 'projector' needs a LLaVA-family model")
    return proj


def prepare_mllm(model: nn.Module, method: str, lora=None, loramoe=None) -> nn.Module:
    """The module to train for ``method`` (table above); the vision tower is frozen in every case."""
    from retain.adapters.methods import prepare_model
    from retain.multimodal.model import freeze_vision_tower

    if method not in MLLM_METHODS:
        raise RetainError(f"method={method!r}: for an image-text-to-text model use one of {', '.join(MLLM_METHODS)}")
    core = model
    if method == "projector":
        proj = projector_of(model)
        model.requires_grad_(False)
        proj.requires_grad_(True)
        trainee = model
    else:
        trainee = prepare_model(model, method, lora=lora, loramoe=loramoe)  # type: ignore[arg-type]
    freeze_vision_tower(core)
    return trainee
