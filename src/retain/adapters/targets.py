"""Which linear layers an adapter wraps: automatic FFN targets per architecture.

- Targets are module-name *suffixes* matched on a dot boundary (``"mlp.c_proj"`` matches
  ``transformer.h.0.mlp.c_proj`` but not ``transformer.h.0.attn.c_proj``), the same rule as PEFT's list
  form of ``target_modules``, so one resolved list drives both LoRAMoE and the PEFT LoRA baseline.
- ``None`` means "the feed-forward projections" (LoRAMoE adapts the FFN, as in the paper). Known
  ``model_type``s map to their FFN names; an unknown architecture gets the first known name set that
  is fully present, and otherwise a ``RetainError`` listing the candidate Linear names to pass instead.
- ``scope`` (a module-name prefix, e.g. ``model.language_model``) confines the targets to one submodule:
  LoRA / LoRAMoE on an image-text-to-text model adapt its language model, not its vision tower.
- Only ``nn.Linear`` and transformers' ``Conv1D`` (GPT-2 family; weight stored transposed, (d_in, d_out))
  are adaptable; ``lm_head`` is never a target.
"""

from __future__ import annotations

import torch.nn as nn
from transformers.pytorch_utils import Conv1D

from retain.errors import RetainError

_LLAMA_FFN = ["gate_proj", "up_proj", "down_proj"]

FFN_TARGETS: dict[str, list[str]] = {
    **{t: _LLAMA_FFN for t in (
        "llama", "mistral", "mixtral", "qwen2", "qwen3", "gemma", "gemma2", "gemma3", "gemma3_text",
        "olmo", "olmo2", "granite", "cohere", "smollm3", "deepseek_v3", "internlm2",
    )},
    "phi3": ["gate_up_proj", "down_proj"],
    "gpt2": ["mlp.c_fc", "mlp.c_proj"],
    "starcoder2": ["mlp.c_fc", "mlp.c_proj"],
    "gpt_bigcode": ["mlp.c_fc", "mlp.c_proj"],
    "gpt_neox": ["dense_h_to_4h", "dense_4h_to_h"],
    "falcon": ["dense_h_to_4h", "dense_4h_to_h"],
    "bloom": ["dense_h_to_4h", "dense_4h_to_h"],
    "opt": ["fc1", "fc2"],
    "phi": ["fc1", "fc2"],
    "gptj": ["fc_in", "fc_out"],
}


def is_adaptable(module: nn.Module) -> bool:
    return isinstance(module, (nn.Linear, Conv1D))


def linear_shape(module: nn.Module) -> tuple[int, int]:
    """(d_in, d_out) of a Linear or Conv1D (Conv1D stores its weight as (d_in, d_out))."""
    if isinstance(module, Conv1D):
        return int(module.weight.shape[0]), int(module.weight.shape[1])
    return int(module.in_features), int(module.out_features)


def _matches(name: str, suffix: str) -> bool:
    return name == suffix or name.endswith("." + suffix)


def _adaptable_names(model: nn.Module, scope: str | None = None) -> list[str]:
    if scope:
        try:
            model.get_submodule(scope)
        except AttributeError:
            raise RetainError(f"scope {scope!r}: the model has no such submodule; give a module-name prefix such "
                              "as 'model.language_model'") from None
    return [n for n, m in model.named_modules() if is_adaptable(m) and not _matches(n, "lm_head")
            and (not scope or n.startswith(scope + "."))]


def resolve_target_modules(model: nn.Module, target_modules: list[str] | None, scope: str | None = None) -> list[str]:
    """Return the suffix list to adapt (validated: each suffix matches at least one Linear/Conv1D inside
    ``scope``, a module-name prefix; None = the whole model)."""
    names = _adaptable_names(model, scope)
    if target_modules is None:
        owner = model.get_submodule(scope) if scope else model
        model_type = getattr(getattr(owner, "config", None), "model_type", None)
        suffixes = FFN_TARGETS.get(model_type or "")
        if suffixes is None:  # unknown architecture: first known FFN name set present in full
            for cand in dict.fromkeys(tuple(v) for v in FFN_TARGETS.values()):
                if all(any(_matches(n, s) for n in names) for s in cand):
                    suffixes = list(cand)
                    break
        if suffixes is None:
            leaves = sorted({n.rsplit(".", 1)[-1] for n in names})
            raise RetainError(
                f"target_modules: no automatic FFN targets for model_type={model_type!r}; "
                f"set target_modules to some of the Linear layers: {leaves}"
            )
    else:
        suffixes = list(target_modules)
    for s in suffixes:
        if not any(_matches(n, s) for n in names):
            leaves = sorted({n.rsplit(".", 1)[-1] for n in names})
            raise RetainError(
                f"target_modules: {s!r} matches no Linear/Conv1D layer; candidates: {leaves}"
            )
    return suffixes


def find_targets(model: nn.Module, target_modules: list[str] | None, scope: str | None = None) -> list[str]:
    """Full names of the modules to adapt (inside ``scope`` when given), in model order."""
    suffixes = resolve_target_modules(model, target_modules, scope)
    return [n for n in _adaptable_names(model, scope) if any(_matches(n, s) for s in suffixes)]
