"""The one way to get a model: :func:`load_model`, the device rule and the tokenizer's padding.

Every command (``train``, ``eval``, ``serve``, ``decompress``, ``routing``, ``demo``) loads through
:func:`load_model`, so each takes every kind of model:

- a base model name: ``smollm2`` (the bundled, converted SmolLM2-135M-Instruct) or a hub id, resolved by
  :func:`retain.assets.resolve_model`;
- a local Hugging Face folder, or a full fine-tune written by ``retain train``;
- a LoRA (PEFT) or LoRAMoE adapter folder: the adapter goes on the base model it records (or
  ``base_model``), through the method's own loader (:mod:`retain.adapters.methods`);
- an image-text-to-text (MLLM) folder (:func:`retain.multimodal.model.is_mllm_folder`): the model and
  its *processor* come back instead of a tokenizer.

Design choices:

- A folder is checked completely before any weight loads (:func:`retain.adapters.methods.check_finetuned_folder`:
  files, config keys, tensor names and shapes), and the device is resolved first, so a bad
  ``--device`` or a pickle-only folder fails in about a second, as one line.
- Every load failure is one :class:`RetainError` line naming the option (``key``) and the cause.
- Safetensors only unless ``allow_pickle``; ``trust_remote_code`` off unless asked. Both reach the
  tokenizer, the model and the config check. MLLM folders load safetensors-only, without remote code,
  whatever is asked (:func:`retain.multimodal.model.load_mllm`).
- The device rule (:func:`resolve_device`): ``auto`` -> cuda, else mps, else cpu; a device this machine
  lacks is an error naming the option, not a CUDA assertion later.
- The padding rule (:func:`pad_token_id`): the tokenizer's pad id, else its EOS. Pads are masked out of
  attention and loss, so which id fills them changes no number.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from retain.errors import RetainError

DTYPES: dict[str, Any] = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16,
                          "auto": "auto"}
"""Weight dtypes by the name the configs use ('auto' = the checkpoint's own)."""


def resolve_device(device: str | torch.device, key: str = "--device") -> torch.device:
    """The one device rule: 'auto' -> cuda when available, else mps when available, else cpu; any other
    name goes to ``torch.device`` and must exist on this machine. ``key`` names the option in the error."""
    if isinstance(device, torch.device):
        return device
    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if _mps_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        dev = torch.device(device)
    except RuntimeError as e:
        raise RetainError(f"{key} {device}: {e}; use auto, cpu, cuda, cuda:N or mps") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RetainError(f"{key} {device}: CUDA is not available on this machine; use auto or cpu")
    if dev.type == "mps" and not _mps_available():
        raise RetainError(f"{key} {device}: MPS is not available on this machine; use auto or cpu")
    return dev


def _mps_available() -> bool:
    mps = getattr(torch.backends, "mps", None)
    return bool(mps is not None and mps.is_available())


def pad_token_id(tokenizer: Any) -> int:
    """The padding rule: the tokenizer's pad id; a tokenizer without one gets its EOS as pad token (so
    ``tokenizer(..., padding=True)`` and ``generate`` use the same id) and that id is returned. Pads are
    masked out of attention and loss. A tokenizer with neither is an error."""
    if tokenizer.pad_token_id is None:
        if tokenizer.eos_token_id is None:
            raise RetainError(f"tokenizer {getattr(tokenizer, 'name_or_path', '')!r} has neither a pad nor an "
                              "eos token; set tokenizer.pad_token")
        tokenizer.pad_token = tokenizer.eos_token
    return int(tokenizer.pad_token_id)


def as_dtype(dtype: str | torch.dtype, key: str = "--dtype") -> Any:
    """A config's dtype name ('float32', 'bfloat16', 'float16', 'auto') or a ``torch.dtype`` -> what
    ``from_pretrained`` takes."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in DTYPES:
        raise RetainError(f"{key} {dtype}: use one of {', '.join(DTYPES)}")
    return DTYPES[dtype]


def load_model(name_or_path: str | Path, *, device: str | torch.device = "auto",
               dtype: str | torch.dtype = "float32", trust_remote_code: bool = False, allow_pickle: bool = False,
               base_model: str | None = None, key: str = "--model", device_key: str = "--device",
               opt_in: str | None = "--allow_pickle true") -> tuple[Any, Any]:
    """``(model, tokenizer)`` in eval mode on ``device``; for an MLLM folder ``(model, processor)``.

    name_or_path: a base model name or hub id, a local model folder, a fine-tuned folder of any method
    (full, LoRA, LoRAMoE) or an MLLM folder (see the module docstring). base_model: the base an adapter
    folder goes on (default: the one it records). key / device_key: the options named in errors. opt_in:
    how the user allows pickle weights, for the message (None: the command has no such switch).
    """
    target = resolve_device(device, key=device_key)  # a bad device fails before any weight loads
    torch_dtype = as_dtype(dtype)
    p = Path(str(name_or_path)).expanduser()
    try:
        if p.is_dir():
            model, tok = _load_folder(p, torch_dtype, trust_remote_code, allow_pickle, base_model, opt_in)
        else:
            model, tok = _load_named(str(name_or_path), torch_dtype, trust_remote_code, allow_pickle, opt_in)
    except RetainError as e:
        msg = str(e)  # already one line; name the option unless the message names the model itself
        named = msg.startswith(key) or str(name_or_path) in msg or str(p) in msg
        raise RetainError(msg if named else f"{key} {name_or_path}: {msg}") from None
    except (OSError, ValueError, KeyError, RuntimeError, ImportError) as e:  # what transformers raises
        raise RetainError(f"{key} {name_or_path}: cannot load ({_first_line(e)}); give 'smollm2', a local model "
                          "folder or a folder written by `retain train`") from None
    if hasattr(tok, "pad_token_id"):  # a processor pads through its own tokenizer
        pad_token_id(tok)
    return model.to(target).eval(), tok


def load_finetuned(folder: str | Path, base_model: str | None = None, dtype: str | torch.dtype = torch.float32,
                   allow_pickle: bool = False, trust_remote_code: bool = False) -> tuple[Any, Any]:
    """A folder written by :func:`retain.adapters.methods.save_finetuned` (or ``retain train``) ->
    ``(model, tokenizer)`` on the CPU, in eval mode: :func:`load_model` with ``device="cpu"``."""
    return load_model(folder, device="cpu", dtype=dtype, base_model=base_model, allow_pickle=allow_pickle,
                      trust_remote_code=trust_remote_code, key="folder")


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0][:200] if text else type(e).__name__


def _load_named(name: str, dtype, trust_remote_code: bool, allow_pickle: bool, opt_in: str | None):
    from transformers import AutoTokenizer

    from retain.adapters.check import check_weights
    from retain.assets import resolve_model

    path = resolve_model(name)
    if Path(path).is_dir():
        check_weights(path, allow_pickle, opt_in)
    tok = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    return _causal_lm(path, dtype, trust_remote_code, allow_pickle), tok


def _load_folder(folder: Path, dtype, trust_remote_code: bool, allow_pickle: bool, base_model: str | None,
                 opt_in: str | None):
    from transformers import AutoTokenizer

    from retain.adapters.check import adapter_meta, check_weights
    from retain.adapters.methods import check_finetuned_folder, get_method
    from retain.assets import resolve_model
    from retain.multimodal.model import is_mllm_folder

    if is_mllm_folder(folder):
        from retain.multimodal.model import load_mllm

        check_weights(folder, False, None)  # MLLM folders: safetensors only
        return load_mllm(folder, dtype=torch.float32 if dtype == "auto" else dtype)
    method = get_method(check_finetuned_folder(folder, base_model, allow_pickle, opt_in, trust_remote_code))
    if not method.is_adapter:  # a whole model (full fine-tune or any HF folder)
        model = _causal_lm(str(folder), dtype, trust_remote_code, allow_pickle)
        tok_src = str(folder) if _has_tokenizer(folder) else resolve_model(base_model or str(folder))
    else:  # an adapter: onto the base model it records (or ``base_model``)
        base_path = resolve_model(method.base_of(folder, adapter_meta(folder), base_model))
        if is_mllm_folder(base_path):  # e.g. LoRA on an MLLM's language model: the base's processor
            from retain.multimodal.model import load_mllm

            base, processor = load_mllm(base_path, dtype=torch.float32 if dtype == "auto" else dtype)
            return method.load(base, folder), processor
        model = method.load(_causal_lm(base_path, dtype, trust_remote_code, allow_pickle), folder)
        tok_src = str(folder) if _has_tokenizer(folder) else base_path
    return model, AutoTokenizer.from_pretrained(tok_src, trust_remote_code=trust_remote_code)


def _causal_lm(path: str, dtype, trust_remote_code: bool, allow_pickle: bool):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path, dtype=dtype, trust_remote_code=trust_remote_code,
                                                use_safetensors=None if allow_pickle else True)


def _has_tokenizer(folder: Path) -> bool:
    return (folder / "tokenizer_config.json").exists()
