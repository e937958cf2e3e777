"""Generation backends: one protocol (:class:`Backend`), a registry, two implementations."""

from retain.generation.backends.base import Backend, Completion, SamplingParams, get_backend, register_backend
from retain.generation.backends.config import BackendConfig, make_backend

__all__ = [
    "Backend", "BackendConfig", "Completion", "SamplingParams", "get_backend", "make_backend", "register_backend",
]
