"""One interface over the ways retain fine-tunes, dispatched through the registry (:mod:`.registry`).

- ``prepare_model`` returns the module to train; ``save_finetuned`` writes a method's folder;
  ``folder_kind`` names the method of a saved folder and ``check_finetuned_folder`` runs that method's
  checks (:mod:`.check`) before any weight loads; ``trainable_parameters`` counts what the optimizer will
  see. Loading is :func:`retain.models.load_model` (``retain.models.load_finetuned`` is it, on the CPU),
  which uses this module; nothing in ``retain.adapters`` imports ``retain.models``.
- This is the top of ``retain.adapters``' method layer: every built-in method is registered once it is
  imported (``full`` and ``lora`` here, ``loramoe`` from :mod:`.loramoe.model`), so ask for a method
  through its ``get_method`` / ``all_methods`` (the registry's own, re-exported).
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

import torch.nn as nn

from retain.adapters import check
from retain.adapters.config import LoRAConfig, LoRAMoEConfig
from retain.adapters.loramoe.model import LoRAMoEMethod
from retain.adapters.registry import AdapterMethod, all_methods, claimant, get_method, register_method
from retain.adapters.targets import find_targets, resolve_target_modules
from retain.errors import RetainError
from retain.utils.io import atomic_path, read_json

ADAPTER_CONFIG = check.ADAPTER_CONFIG
ADAPTER_WEIGHTS = check.ADAPTER_WEIGHTS
__all__ = ["ADAPTER_CONFIG", "ADAPTER_WEIGHTS", "FullMethod", "LoRAMethod", "LoRAMoEMethod", "all_methods",
           "check_finetuned_folder", "folder_kind", "get_method", "method_of", "prepare_model", "save_finetuned",
           "trainable_parameters"]


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

    base_model: the base model's name or folder, recorded for loading (the bundled model as ``smollm2``,
    even when given as its cache folder: :func:`retain.assets.model_name`). tokenizer: saved beside the
    weights (default: the base model's tokenizer, when it can be loaded offline).
    """
    from retain.assets import model_name

    base_model = model_name(base_model)
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
    """The registered method (``full``, ``lora``, ``loramoe``, ...) a saved folder belongs to, from its files."""
    folder = Path(folder)
    if not folder.is_dir():
        raise RetainError(f"{folder}: no such folder; give a folder written by `retain train`")
    meta = check.adapter_meta(folder)
    method = claimant("detects", folder, meta)
    if method is not None:
        return method.name
    if meta is not None:
        raise RetainError(f"{folder / ADAPTER_CONFIG}: no known adapter method (neither 'method': 'loramoe' nor a "
                          "PEFT 'peft_type')")
    raise RetainError(f"{folder}: no adapter_config.json or config.json; not a fine-tuned model folder")


def check_finetuned_folder(folder: str | Path, base_model: str | None = None, allow_pickle: bool = False,
                           opt_in: str | None = "--allow_pickle true", trust_remote_code: bool = False) -> str:
    """Everything :func:`retain.models.load_model` needs for a fine-tuned folder, checked without loading
    weights (its method's own ``check``); returns the method's name. ``base_model``: the base an adapter
    goes on (default: the recorded one)."""
    folder = Path(folder)
    kind = folder_kind(folder)
    get_method(kind).check(folder, check.adapter_meta(folder), base_model, allow_pickle, opt_in, trust_remote_code)
    return kind

