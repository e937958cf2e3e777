"""Check a model folder or a fine-tuned folder completely *before* any model runs.

One small function per question, each raising one :class:`RetainError` line that names the file, the
key or the tensor at fault; :func:`check_finetuned_folder` runs them all for a folder that
:func:`retain.models.load_model` will read. Cheap by construction: it reads JSON files,
safetensors *headers* (names and shapes, no tensor data) and builds the base model on the ``meta``
device (shapes only, no memory, no weights), so ``retain eval`` can check every ``--tuned`` folder in
about a second before calibrating the base model.

- **Weights**: safetensors only. A folder whose only weights are pickles (``pytorch_model.bin``,
  ``adapter_model.bin``, ``*.pt``) is refused, since unpickling can run code, unless the caller opts in
  (``allow_pickle``; the message names the command's own switch).
- **Configs**: readable JSON; for LoRA every key must be a field of PEFT's config class for its
  ``peft_type`` (PEFT itself only warns and drops unknown keys); for LoRAMoE the top level holds exactly
  ``method``, ``base_model``, ``config`` and ``config`` holds only ``LoRAMoEConfig`` fields.
- **Tensors**: every adapter tensor must belong to a module of the base and have the shape that
  module implies (LoRA: ``lora_A`` (r, d_in), ``lora_B`` (d_out, r); LoRAMoE: exactly the names and
  shapes an injection into the base creates).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from retain.errors import RetainError
from retain.utils.io import read_json

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
LORAMOE_KEYS = ("method", "base_model", "config")


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


def folder_kind(folder: str | Path) -> str:
    """The registered method (``full``, ``lora``, ``loramoe``, ...) a folder belongs to, from its files."""
    from retain.adapters.registry import claimant

    folder = Path(folder)
    if not folder.is_dir():
        raise RetainError(f"{folder}: no such folder; give a folder written by `retain train`")
    meta = adapter_meta(folder)
    method = claimant("detects", folder, meta)
    if method is not None:
        return method.name
    if meta is not None:
        raise RetainError(f"{folder / ADAPTER_CONFIG}: no known adapter method (neither 'method': 'loramoe' nor a "
                          "PEFT 'peft_type')")
    raise RetainError(f"{folder}: no adapter_config.json or config.json; not a fine-tuned model folder")


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


def check_finetuned_folder(folder: str | Path, base_model: str | None = None, allow_pickle: bool = False,
                           opt_in: str | None = "--allow_pickle true", trust_remote_code: bool = False) -> str:
    """Everything :func:`retain.models.load_model` needs for a fine-tuned folder, checked without loading
    weights (each method's own ``check``); returns the method's name. ``base_model``: the base an adapter
    goes on (default: the recorded one)."""
    from retain.adapters.registry import get_method

    folder = Path(folder)
    kind = folder_kind(folder)
    get_method(kind).check(folder, adapter_meta(folder), base_model, allow_pickle, opt_in, trust_remote_code)
    return kind


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


def loramoe_config_of(folder: Path, meta: dict):
    """The ``LoRAMoEConfig`` a LoRAMoE ``adapter_config.json`` holds; unknown keys at either level refused,
    old ``blc_*`` keys read as their ``lbc_*`` names (one warning line each)."""
    from retain.adapters.loramoe.config import LoRAMoEConfig

    where = folder / ADAPTER_CONFIG
    unknown = sorted(set(meta) - set(LORAMOE_KEYS))
    if unknown:
        raise RetainError(f"{where}: unknown key '{unknown[0]}'; a LoRAMoE adapter_config.json holds only "
                          f"{', '.join(LORAMOE_KEYS)}")
    raw = meta.get("config") or {}
    if not isinstance(raw, dict):
        raise RetainError(f"{where}: 'config' must be an object of LoRAMoE options")
    return LoRAMoEConfig.from_dict(raw, where=f"{where}: config")


def meta_model(base_model: str, allow_pickle: bool, opt_in: str | None, trust_remote_code: bool = False):
    """The base model with every tensor on the ``meta`` device: module names and shapes, no weights
    (an image-text-to-text folder builds as such)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForImageTextToText

    from retain.assets import resolve_model
    from retain.multimodal.model import is_mllm_folder

    path = resolve_model(base_model)
    if Path(path).is_dir():
        check_weights(path, allow_pickle, opt_in)
    try:
        config = AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as e:
        raise RetainError(f"base model {base_model}: cannot read its config ({str(e).splitlines()[0][:160]})") from None
    auto = AutoModelForImageTextToText if is_mllm_folder(path) else AutoModelForCausalLM
    with torch.device("meta"):
        return auto.from_config(config, trust_remote_code=trust_remote_code)


def _shape_error(weights: Path, name: str, got: tuple, want: tuple) -> RetainError:
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
                raise _shape_error(weights, name, shape, want)


def check_loramoe_tensors(weights: Path, shapes: dict[str, tuple[int, ...]], base, cfg) -> None:
    """The file holds exactly the tensors, with the shapes, that injecting ``cfg`` into ``base`` creates."""
    from retain.adapters.loramoe import adapter_state_dict, inject_loramoe

    inject_loramoe(base, cfg)
    want = {k: tuple(v.shape) for k, v in adapter_state_dict(base).items()}
    missing, unexpected = sorted(set(want) - set(shapes)), sorted(set(shapes) - set(want))
    if missing or unexpected:
        raise RetainError(
            f"{weights}: adapter weights do not fit this base model (missing {missing[:3]}, unexpected "
            f"{unexpected[:3]}); load it onto the base model it was trained on"
        )
    for k, shape in want.items():
        if shapes[k] != shape:
            raise _shape_error(weights, k, shapes[k], shape)
