"""Generation backends: one protocol (:class:`Backend`), a registry, two implementations."""

from retain.generation.backends.base import Backend, Completion, SamplingParams, get_backend, register_backend

__all__ = ["Backend", "Completion", "SamplingParams", "get_backend", "register_backend"]
