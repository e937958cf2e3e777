"""One interface over the ways retain fine-tunes, dispatched through the registry (:mod:`.registry`).

- ``prepare_model`` returns the module to train; ``save_finetuned`` writes a method's folder;
  ``folder_kind`` names the method of a saved folder; ``trainable_parameters`` counts what the optimizer
  will see. Loading is :func:`retain.models.load_model` (``load_finetuned`` is it, on the CPU).
- The built-in methods, one small class each: :class:`FullMethod` (every weight trains; a plain
  ``save_pretrained`` safetensors folder), :class:`LoRAMethod` (PEFT's LoRA, unchanged: ``LoraConfig`` +
  ``get_peft_model``, PEFT's save format, ``PeftModel.from_pretrained`` to load) and
  ``LoRAMoEMethod`` (:mod:`retain.adapters.loramoe.model`).
- LoRAMoE saves ``adapter_config.json`` (``{"method": "loramoe", "base_model": ..., "config": {...}}``) and
  ``adapter_model.safetensors`` (adapter and router weights only), PEFT's file names. It is not registered
  as a PEFT method: PEFT 0.21's ``register_peft_method`` accepts only names already in its closed
  ``PeftType`` enum ("Unknown PEFT type LORAMOE, please add an entry to peft.utils.peft_types.PeftType"),
  so registering means patching PEFT, which retain never does.
- Every save is atomic (temp dir + rename); the tokenizer is saved beside the weights so a folder carries
  its chat template.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from retain.adapters import check
from retain.adapters.config import LoRAConfig, LoRAMoEConfig
from retain.adapters.registry import AdapterMethod, claimant, get_method, register_method
from retain.adapters.targets import find_targets, resolve_target_modules
from retain.errors import RetainError
from retain.utils.io import atomic_path, read_json

ADAPTER_CONFIG = check.ADAPTER_CONFIG
ADAPTER_WEIGHTS = check.ADAPTER_WEIGHTS


@register_method
class FullMethod(AdapterMethod):
    """Full fine-tuning: every parameter trains; the folder is a whole model (``config.json`` + weights)."""

    name = "full"
    fallback = True

    def prepare(self, model: nn.Module, config: Any = None, scope: str | None = None) -> nn.Module:
        for p in model.parameters():
            p.requires_grad_(True)
        return model

    def owns(self, model: nn.Module) -> bool:
        return True  # the fallback: every other method is asked first

    def save(self, model: nn.Module, folder: Path, base_model: str) -> None:
        model.save_pretrained(str(folder), safe_serialization=True)

    def detects(self, folder: Path, meta: dict | None) -> bool:
        return meta is None and (folder / "config.json").exists()  # asked last (fallback)

    def check(self, folder: Path, meta: dict | None, base_model: str | None, allow_pickle: bool,
              opt_in: str | None, trust_remote_code: bool) -> None:
        check.check_model_config(folder, trust_remote_code)
        check.check_weights(folder, allow_pickle, opt_in)


@register_method
class LoRAMethod(AdapterMethod):
    """PEFT LoRA (the baseline); options: :class:`retain.adapters.config.LoRAConfig`."""

    name = "lora"
    config_class = LoRAConfig
    is_adapter = True

    def prepare(self, model: nn.Module, config: LoRAConfig | None = None, scope: str | None = None) -> nn.Module:
        from peft import LoraConfig, get_peft_model

        cfg = config or LoRAConfig()
        # With a scope, PEFT gets the full module names inside it (its list form matches exact names too).
        targets = (find_targets(model, cfg.target_modules, scope) if scope
                   else resolve_target_modules(model, cfg.target_modules))
        peft_cfg = LoraConfig(
            r=cfg.r, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout, bias="none", task_type="CAUSAL_LM",
            target_modules=targets,
            # GPT-2-style Conv1D stores (d_in, d_out); PEFT needs to know (it would warn and flip it anyway).
            fan_in_fan_out=_has_conv1d(model),
        )
        return get_peft_model(model, peft_cfg)

    def owns(self, model: nn.Module) -> bool:
        from peft import PeftModel

        return isinstance(model, PeftModel)

    def save(self, model: nn.Module, folder: Path, base_model: str) -> None:
        # PEFT inspects the base folder while saving: give it the resolved local path (no hub lookup for a
        # short name like "smollm2"), then record the name the caller gave.
        from retain.assets import resolve_model

        model.peft_config["default"].base_model_name_or_path = _resolve_quiet(base_model, resolve_model)
        model.save_pretrained(str(folder))
        meta = read_json(folder / ADAPTER_CONFIG)
        meta["base_model_name_or_path"] = base_model
        (folder / ADAPTER_CONFIG).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")

    def detects(self, folder: Path, meta: dict | None) -> bool:
        return meta is not None and "peft_type" in meta

    def check(self, folder: Path, meta: dict | None, base_model: str | None, allow_pickle: bool,
              opt_in: str | None, trust_remote_code: bool) -> None:
        r = check.check_peft_config(folder, meta or {})
        check.check_weights(folder, allow_pickle, opt_in, stem="adapter_model")
        weights = folder / ADAPTER_WEIGHTS
        if not weights.exists():
            return  # pickle weights the user allowed: PEFT checks them while loading
        base = check.meta_model(self.base_of(folder, meta, base_model), allow_pickle, opt_in, trust_remote_code)
        check.check_lora_tensors(weights, check.safetensors_shapes(weights), base, r)

    def load(self, base: nn.Module, folder: Path) -> nn.Module:
        from peft import PeftModel

        return PeftModel.from_pretrained(base, str(folder))

    def disabled(self, model: nn.Module):
        return model.disable_adapter()

    def base_of(self, folder: Path, meta: dict | None, base_model: str | None = None) -> str:
        return check.recorded_base(folder, "base_model_name_or_path", base_model)


def _has_conv1d(model: nn.Module) -> bool:
    from transformers.pytorch_utils import Conv1D

    return any(isinstance(m, Conv1D) for m in model.modules())


# LoRAMoE registers itself where it is defined, as any further method would.
import retain.adapters.loramoe.model  # noqa: E402, F401


def prepare_model(model: nn.Module, method: str, lora: LoRAConfig | None = None,
                  loramoe: LoRAMoEConfig | None = None, *, config: Any = None, scope: str | None = None) -> nn.Module:
    """The module to train for ``method`` (a registered name): ``full`` -> ``model`` with every parameter
    trainable; ``lora`` -> a ``peft.PeftModel``; ``loramoe`` -> ``model`` with experts injected and the
    backbone frozen. Options: ``config`` (any method), or ``lora`` / ``loramoe`` for those two. ``scope``:
    a module-name prefix the adapter is confined to (see :mod:`retain.adapters.registry`)."""
    chosen = get_method(method)
    if config is None:
        config = {"lora": lora, "loramoe": loramoe}.get(method)
    return chosen.prepare(model, config, scope)


def method_of(model: nn.Module) -> str:
    """Which registered method prepared ``model`` (as returned by :func:`prepare_model`)."""
    return claimant("owns", model).name


def trainable_parameters(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts; tied weights are counted once."""
    params = list(model.parameters())  # parameters() already de-duplicates shared tensors
    return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)


def save_finetuned(model: nn.Module, out_dir: str | Path, base_model: str, tokenizer=None) -> None:
    """Write ``model`` to ``out_dir`` in its method's format (atomically; an existing folder is replaced).

    base_model: the base model's name or folder, recorded for loading. tokenizer: saved beside the weights
    (default: the base model's tokenizer, when it can be loaded offline).
    """
    method = get_method(method_of(model))
    tokenizer = tokenizer if tokenizer is not None else _try_tokenizer(base_model)
    with atomic_path(out_dir) as tmp:
        tmp.mkdir(parents=True)
        method.save(model, tmp, base_model)
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


def folder_kind(folder: str | Path) -> str:
    """The registered method a saved folder belongs to, detected from its files."""
    return check.folder_kind(folder)


def load_finetuned(folder: str | Path, base_model: str | None = None, dtype: torch.dtype = torch.float32,
                   allow_pickle: bool = False, trust_remote_code: bool = False):
    """A folder written by :func:`save_finetuned` -> ``(model, tokenizer)`` on the CPU, in eval mode: the
    same as :func:`retain.models.load_model` (the one loader) with ``device="cpu"``."""
    from retain.models import load_model

    return load_model(folder, device="cpu", dtype=dtype, base_model=base_model, allow_pickle=allow_pickle,
                      trust_remote_code=trust_remote_code, key="folder")
