"""One interface over the three ways retain fine-tunes: full, LoRA (through PEFT) and LoRAMoE.

- ``prepare_model`` returns the module to train; ``save_finetuned`` / ``load_finetuned`` write and read
  each method's folder; ``trainable_parameters`` counts what the optimizer will see.
- LoRA is PEFT's, unchanged: ``LoraConfig`` + ``get_peft_model``, PEFT's save format, and
  ``PeftModel.from_pretrained`` to load. Full fine-tuning saves a plain ``save_pretrained`` safetensors folder.
- LoRAMoE saves ``adapter_config.json`` (``{"method": "loramoe", "base_model": ..., "config": {...}}``) and
  ``adapter_model.safetensors`` (adapter and router weights only), PEFT's file names. It is not registered
  as a PEFT method: PEFT 0.21's ``register_peft_method`` accepts only names already in its closed
  ``PeftType`` enum ("Unknown PEFT type LORAMOE, please add an entry to peft.utils.peft_types.PeftType"),
  so registering means patching PEFT, which retain never does. The LBC itself would fit (the
  ``sample_types`` context works around a ``PeftModel`` too); porting upstream is a matter of a PeftType
  entry plus PEFT's multi-adapter layer bookkeeping.
- The folder kind is detected from its files: ``adapter_config.json`` with ``"method": "loramoe"`` ->
  LoRAMoE; with ``"peft_type"`` -> PEFT; ``config.json`` + weights -> full model.
- Every save is atomic (temp dir + rename); the tokenizer is saved beside the weights so a folder carries
  its chat template.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Literal

import torch
import torch.nn as nn

from retain.adapters.config import LoRAConfig, LoRAMoEConfig
from retain.adapters.loramoe import adapter_state_dict, inject_loramoe, load_adapter_state_dict, loramoe_config
from retain.adapters.targets import resolve_target_modules
from retain.errors import RetainError
from retain.utils.io import atomic_path, read_json

Method = Literal["full", "lora", "loramoe"]
ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"


def prepare_model(model: nn.Module, method: Method, lora: LoRAConfig | None = None,
                  loramoe: LoRAMoEConfig | None = None) -> nn.Module:
    """The module to train: ``full`` -> ``model`` with every parameter trainable; ``lora`` -> a
    ``peft.PeftModel``; ``loramoe`` -> ``model`` with experts injected and the backbone frozen."""
    if method == "full":
        for p in model.parameters():
            p.requires_grad_(True)
        return model
    if method == "lora":
        from peft import LoraConfig, get_peft_model

        cfg = lora or LoRAConfig()
        peft_cfg = LoraConfig(
            r=cfg.r, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout, bias="none", task_type="CAUSAL_LM",
            target_modules=resolve_target_modules(model, cfg.target_modules),
            # GPT-2-style Conv1D stores (d_in, d_out); PEFT needs to know (it would warn and flip it anyway).
            fan_in_fan_out=_has_conv1d(model),
        )
        return get_peft_model(model, peft_cfg)
    if method == "loramoe":
        return inject_loramoe(model, loramoe or LoRAMoEConfig())
    raise RetainError(f"method={method!r}: use 'full', 'lora' or 'loramoe'")


def _has_conv1d(model: nn.Module) -> bool:
    from transformers.pytorch_utils import Conv1D

    return any(isinstance(m, Conv1D) for m in model.modules())


def method_of(model: nn.Module) -> Method:
    """Which kind of fine-tune ``model`` is (as returned by :func:`prepare_model`)."""
    from peft import PeftModel

    if isinstance(model, PeftModel):
        return "lora"
    if loramoe_config(model) is not None:
        return "loramoe"
    return "full"


def trainable_parameters(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts; tied weights are counted once."""
    params = list(model.parameters())  # parameters() already de-duplicates shared tensors
    return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)


def save_finetuned(model: nn.Module, out_dir: str | Path, base_model: str, tokenizer=None) -> None:
    """Write ``model`` to ``out_dir`` in its method's format (atomically; an existing folder is replaced).

    base_model: the base model's name or folder, recorded for :func:`load_finetuned`. tokenizer: saved
    beside the weights (default: the base model's tokenizer, when it can be loaded offline).
    """
    from safetensors.torch import save_file

    method = method_of(model)
    tokenizer = tokenizer if tokenizer is not None else _try_tokenizer(base_model)
    with atomic_path(out_dir) as tmp:
        tmp.mkdir(parents=True)
        if method == "lora":
            # PEFT inspects the base folder while saving: give it the resolved local path (no hub
            # lookup for a short name like "smollm2"), then record the name the caller gave.
            from retain.assets import resolve_model

            model.peft_config["default"].base_model_name_or_path = _resolve_quiet(base_model, resolve_model)
            model.save_pretrained(str(tmp))
            meta = read_json(tmp / ADAPTER_CONFIG)
            meta["base_model_name_or_path"] = base_model
            (tmp / ADAPTER_CONFIG).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
        elif method == "loramoe":
            cfg = loramoe_config(model)
            meta = {"method": "loramoe", "base_model": base_model, "config": dataclasses.asdict(cfg)}
            (tmp / ADAPTER_CONFIG).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
            tensors = {k: v.contiguous().cpu() for k, v in adapter_state_dict(model).items()}
            save_file(tensors, str(tmp / ADAPTER_WEIGHTS), metadata={"format": "pt", "method": "loramoe"})
        else:
            model.save_pretrained(str(tmp), safe_serialization=True)
        if tokenizer is not None:
            tokenizer.save_pretrained(str(tmp))


def _resolve_quiet(name: str, resolve) -> str:
    try:
        return resolve(name)
    except RetainError:
        return name


def _try_tokenizer(name: str):
    from transformers import AutoTokenizer

    from retain.assets import resolve_model

    try:
        return AutoTokenizer.from_pretrained(resolve_model(name))
    except (OSError, ValueError, RetainError):
        return None  # e.g. a hub id while offline: the folder is still loadable with the base's tokenizer


def folder_kind(folder: str | Path) -> Method:
    """Detect the kind of a fine-tuned folder from its files."""
    from retain.adapters.check import folder_kind as kind_of

    return kind_of(folder)  # type: ignore[return-value]


def load_finetuned(folder: str | Path, base_model: str | None = None, dtype: torch.dtype = torch.float32,
                   allow_pickle: bool = False, trust_remote_code: bool = False):
    """A folder written by :func:`save_finetuned` -> ``(model, tokenizer)`` on the CPU, in eval mode: the
    same as :func:`retain.models.load_model` (the one loader) with ``device="cpu"``."""
    from retain.models import load_model

    return load_model(folder, device="cpu", dtype=dtype, base_model=base_model, allow_pickle=allow_pickle,
                      trust_remote_code=trust_remote_code, key="folder")


def load_adapter(base: nn.Module, folder: Path, kind: Method) -> nn.Module:
    """Put the adapter saved in ``folder`` (checked by :func:`retain.adapters.check.check_finetuned_folder`)
    on the loaded ``base`` model; returns the model to use."""
    if kind == "lora":
        from peft import PeftModel

        return PeftModel.from_pretrained(base, str(folder))
    from safetensors.torch import load_file

    from retain.adapters.check import loramoe_config_of

    inject_loramoe(base, loramoe_config_of(folder, read_json(folder / ADAPTER_CONFIG)))
    weights = folder / ADAPTER_WEIGHTS
    load_adapter_state_dict(base, load_file(str(weights)), source=str(weights))
    return base
