"""The backend protocol every generator implements.

A backend turns a batch of chat conversations into one assistant reply each. It owns batching,
padding, concurrency and retries; callers hand it *all* the work of a tree level at once.

- ``messages`` follow the OpenAI / HF chat format: ``[{"role": "user", "content": "..."}, ...]``.
- ``SamplingParams.seed`` makes a call reproducible; backends derive a per-conversation seed from it
  and the conversation's index so that results do not depend on batch composition where possible.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Callable, Protocol, Sequence, runtime_checkable

Messages = list[dict[str, str]]


@dataclass(frozen=True)
class SamplingParams:
    max_new_tokens: int = 256
    """Generation budget in tokens (L_i for a tree level)."""
    temperature: float = 0.7
    """Softmax temperature; 0 means greedy."""
    top_p: float = 0.95
    """Nucleus sampling mass."""
    seed: int | None = 0
    """Base seed; None for non-deterministic sampling."""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class Completion:
    text: str
    """The assistant reply, special tokens stripped."""
    prompt_tokens: int = 0
    completion_tokens: int = 0
    finish_reason: str = "stop"
    """'stop' (EOS / stop string) or 'length' (hit max_new_tokens)."""


@runtime_checkable
class Backend(Protocol):
    name: str
    """Model identifier recorded in outputs (e.g. 'HuggingFaceTB/SmolLM2-135M-Instruct')."""

    def chat(self, conversations: Sequence[Messages], params: SamplingParams) -> list[Completion]:
        """One completion per conversation, in input order."""
        ...


_REGISTRY: dict[str, Callable[..., Backend]] = {}


def register_backend(kind: str) -> Callable[[Callable[..., Backend]], Callable[..., Backend]]:
    def deco(factory: Callable[..., Backend]) -> Callable[..., Backend]:
        _REGISTRY[kind] = factory
        return factory

    return deco


def get_backend(kind: str, **kwargs: Any) -> Backend:
    """Instantiate a registered backend ('hf', 'openai', or one a plugin registered)."""
    import importlib

    if kind not in _REGISTRY:
        module = f"retain.generation.backends.{kind}_backend"
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as e:
            if e.name != module:  # the module exists but a dependency is missing: say which
                raise
    if kind not in _REGISTRY:
        from retain.errors import RetainError

        raise RetainError(f"unknown backend '{kind}'; choose one of: {', '.join(sorted(_REGISTRY) or ['hf', 'openai'])}")
    return _REGISTRY[kind](**kwargs)
