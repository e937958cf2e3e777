"""TG self-decompression: a model turns its own knowledge into a deduplicated dialogue corpus.

- ``config``   DecompressConfig / ExportConfig and the tree presets (torch-free)
- ``prompts``  every prompt sent, and the parser of the model's question lists
- ``tree``     level-synchronous, batched expansion over crash-safe journals
- ``dedup``    exact hash + blockwise greedy cosine dedup (MiniLM embeddings)
- ``filters``  empty / repetition-loop answers
- ``export``   sft.jsonl (TRL messages), sharegpt.json, pt.jsonl (TG-PT)
- ``run``      ``retain decompress`` / ``retain export`` and :func:`decompress`
- ``backends`` hf (transformers) and openai (any OpenAI-compatible server); ``serve``

Python API::

    from retain.generation import DecompressConfig, decompress
    run_dir = decompress(DecompressConfig("runs/tg", levels=[[3, 96], [2, 96]]))

Names are imported lazily so that ``import retain.generation.config`` (CLI ``--help``) stays torch-free.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "DecompressConfig": "retain.generation.config",
    "ExportConfig": "retain.generation.config",
    "PRESETS": "retain.generation.config",
    "Prompts": "retain.generation.prompts",
    "decompress": "retain.generation.run",
    "run_decompress": "retain.generation.run",
    "run_export": "retain.generation.run",
    "export": "retain.generation.export",
}
__all__ = list(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'retain.generation' has no attribute {name!r}")
