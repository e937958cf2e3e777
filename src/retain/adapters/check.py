"""The checks of a model folder or a fine-tuned folder's files, made *before* any model runs.

One small function per question, each raising one :class:`RetainError` line that names the file, the
key or the tensor at fault. The methods call them from their own ``check`` (:mod:`.registry`), and
:func:`retain.adapters.methods.check_finetuned_folder` asks the registry which method's ``check`` a folder
gets before :func:`retain.models.load_model` reads it. This module knows no method: it sits under them. Cheap by construction: it reads JSON files,
safetensors *headers* (names and shapes, no tensor data) and builds the base model on the ``meta``
device (shapes only, no memory, no weights), so ``retain eval`` can check every ``--tuned`` folder in
about a second before calibrating the base model.

- **Weights**: safetensors only. A folder whose only weights are pickles (``pytorch_model.bin``,
  ``adapter_model.bin``, ``*.pt``) is refused, since unpickling can run code, unless the caller opts in
  (``allow_pickle``; the message names the command's own switch).
- **Configs**: readable JSON; for LoRA every key must be a field of PEFT's config class for its
  ``peft_type`` (PEFT itself only warns and drops unknown keys); LoRAMoE's own keys are checked in
  :mod:`retain.adapters.loramoe.model`.
- **Tensors**: every adapter tensor must belong to a module of the base and have the shape that
  module implies (LoRA: ``lora_A`` (r, d_in), ``lora_B`` (d_out, r); LoRAMoE, in its module: exactly the
  names and shapes an injection into the base creates).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from retain.errors import RetainError
from retain.utils.io import read_json

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")


def check_weights(folder: str | Path, allow_pickle: bool = False, opt_in: str | None = "--allow_pickle true",
                  stem: str = "") -> None:
    """``folder`` has safetensors weights (files starting with ``stem``, e.g. ``adapter_model``); pickle-only
    weights are refused unless ``allow_pickle``. ``opt_in``: how the user allows them, for the message
    (None: the command has no such switch)."""
    folder = Path(folder)
    safe = sorted(folder.glob(f"{stem}*.safetensors"))
    if safe:
        return
    pickles = sorted(p.name for p in folder.iterdir() if p.name.startswith(stem) and p.suffix in PICKLE_SUFFIXES)
    if pickles and allow_pickle:
        return
    if pickles:
        allow = f", or pass {opt_in} if you trust this folder" if opt_in else ""
        raise RetainError(
            f"{folder}: weights only as pickle ({', '.join(pickles[:3])}), which can run code when loaded; retain "
            f"loads safetensors only: convert them (save_pretrained(..., safe_serialization=True)){allow}"
        )
    raise RetainError(f"{folder}: no {stem or 'model'} weights (*.safetensors); the folder is incomplete")


def safetensors_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    """Tensor name -> shape, read from the file's header only."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    except Exception as e:  # noqa: BLE001 - safetensors raises its own error types for a damaged file
        raise RetainError(f"{path}: not a readable safetensors file ({str(e).splitlines()[0][:120]}); "
                          "the folder is damaged, save it again") from None


def adapter_meta(folder: Path) -> dict | None:
    """The folder's ``adapter_config.json`` as a dict (None when it has none)."""
    if not (folder / ADAPTER_CONFIG).exists():
        return None
    meta = read_json(folder / ADAPTER_CONFIG)
    if not isinstance(meta, dict):
        raise RetainError(f"{folder / ADAPTER_CONFIG}: expected a JSON object")
    return meta


def recorded_base(folder: Path, key: str, base_model: str | None = None) -> str:
    """The base model an adapter folder goes on: ``base_model`` if given, else the one its
    ``adapter_config.json`` records under ``key``."""
    if base_model:
        return base_model
    base = read_json(folder / ADAPTER_CONFIG).get(key)
    if not base:
        raise RetainError(f"{folder / ADAPTER_CONFIG}: no base model recorded; pass the base model explicitly")
    inside = folder / base
    if not Path(base).is_absolute() and not Path(base).exists() and inside.is_dir():
        return str(inside)  # a base kept inside the folder (save_language_model of a LoRAMoE MLLM)
    return base


def check_model_config(folder: Path, trust_remote_code: bool = False):
    """The folder's ``config.json`` as a transformers config (one line if it cannot be read)."""
    from transformers import AutoConfig

    read_json(folder / "config.json")  # names file:line for bad JSON or bad UTF-8
    try:
        return AutoConfig.from_pretrained(str(folder), trust_remote_code=trust_remote_code)
    except (OSError, ValueError, KeyError) as e:
        raise RetainError(f"{folder / 'config.json'}: not a usable model config ({str(e).splitlines()[0][:160]})") from None


def check_peft_config(folder: Path, meta: dict) -> int:
    """Every key of a PEFT ``adapter_config.json`` is a field of its config class; returns the rank r."""
    from peft.mapping import PEFT_TYPE_TO_CONFIG_MAPPING

    where = folder / ADAPTER_CONFIG
    cls = PEFT_TYPE_TO_CONFIG_MAPPING.get(str(meta.get("peft_type")))
    if cls is None:
        raise RetainError(f"{where}: peft_type {meta.get('peft_type')!r} is not a PEFT method this PEFT knows")
    fields = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(meta) - fields)
    if unknown:
        raise RetainError(f"{where}: unknown key '{unknown[0]}' for a {meta['peft_type']} adapter; remove it or fix "
                          "its spelling (PEFT would ignore it)")
    r = meta.get("r", 8)
    if not isinstance(r, int) or isinstance(r, bool) or r < 1:
        raise RetainError(f"{where}: r={r!r}; the LoRA rank must be an integer >= 1")
    return r


def meta_model(base_model: str, allow_pickle: bool, opt_in: str | None, trust_remote_code: bool = False):
    """The base model with every tensor on the ``meta`` device: module names and shapes, no weights
    (an image-text-to-text folder builds as such)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForImageTextToText

    from retain.assets import resolve_model

    path = resolve_model(base_model)
    if Path(path).is_dir():
        check_weights(path, allow_pickle, opt_in)
    try:
        config = AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as e:
        raise RetainError(f"base model {base_model}: cannot read its config ({str(e).splitlines()[0][:160]})") from None
    multimodal = getattr(config, "vision_config", None) is not None  # an image-text-to-text model
    auto = AutoModelForImageTextToText if multimodal else AutoModelForCausalLM
    with torch.device("meta"):
        return auto.from_config(config, trust_remote_code=trust_remote_code)


def shape_error(weights: Path, name: str, got: tuple, want: tuple) -> RetainError:
    return RetainError(f"{weights}: {name} has shape {got}, the base model expects {want}; load the adapter onto "
                       "the base model it was trained on")


def check_lora_tensors(weights: Path, shapes: dict[str, tuple[int, ...]], base, r: int) -> None:
    """Every ``...<module>.lora_A.weight`` / ``lora_B.weight`` names a module of ``base`` and fits its shape."""
    from retain.adapters.targets import is_adaptable, linear_shape

    modules = dict(base.named_modules())
    if not any(".lora_A." in k or ".lora_B." in k for k in shapes):
        raise RetainError(f"{weights}: holds no lora_A / lora_B tensors; not a LoRA adapter")
    for name, shape in sorted(shapes.items()):
        for part in ("lora_A", "lora_B"):
            if f".{part}." not in name:
                continue
            module = name.split(f".{part}.")[0].removeprefix("base_model.model.")
            if module not in modules:
                raise RetainError(f"{weights}: {name} is for module '{module}', which the base model does not have; "
                                  "load the adapter onto the base model it was trained on")
            if not is_adaptable(modules[module]):
                continue  # e.g. an embedding's LoRA: PEFT checks it while loading
            d_in, d_out = linear_shape(modules[module])
            want = (shape[0], d_in) if part == "lora_A" else (d_out, shape[1])
            if len(shape) != 2 or shape != want:
                raise shape_error(weights, name, shape, want)
