"""The adapter-method registry: one small class per way of fine-tuning, registered by name (as PEFT's tuners).

A method answers five questions, and nothing outside it branches on its name:

- ``prepare(model, config, scope)``: the module to train (parameters to train unfrozen, layers injected);
- ``owns(model)``: is this prepared module one of mine (what :func:`~retain.adapters.methods.save_finetuned`
  asks to pick the format);
- ``save(model, folder, base_model)``: write the weights into an empty ``folder`` (atomicity and the
  tokenizer are the caller's);
- ``detects(folder, meta)``: is this saved folder mine (``meta``: its ``adapter_config.json``, or None);
- ``check(folder, base_model, ...)`` / ``load(base, folder)``: check the folder without loading weights,
  then put the adapter on a loaded base model (a method that saves a whole model has ``is_adapter =
  False`` and :func:`retain.models.load_model` loads its folder as a model);
- ``disabled(model)``: a context in which an adapter method's model computes its base model's outputs
  (the KL anchor's reference; methods that change the base weights keep a copy instead).

The registry is the bottom of ``retain.adapters``: it imports no method. Each method registers itself
where it is defined (subclass :class:`AdapterMethod`, decorate it with :func:`register_method`), so a new
method needs no edit here. :mod:`retain.adapters.methods` defines ``full`` and ``lora`` and imports
``loramoe``, so code that asks for a method by name or asks which method a model or folder belongs to
imports its lookups from there (``get_method``, ``method_of``, ``folder_kind``), where the built-in ones are
always registered. ``config_class`` is the method's options dataclass (None: none).

``scope`` is a module-name prefix that confines an adapter to one submodule: an image-text-to-text model
passes ``"model.language_model"`` so LoRA/LoRAMoE adapt its language model only; a method that trains
one part of a model (e.g. an MLLM's projector) may read it as the part to train.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, ContextManager

from retain.errors import RetainError

if TYPE_CHECKING:
    import torch.nn as nn

METHODS: dict[str, "AdapterMethod"] = {}
"""name -> method instance, in registration order."""
BUILTIN = ("full", "lora", "loramoe")
"""Listed first, in this order, whichever module happened to be imported first."""


class AdapterMethod:
    """Base class of a fine-tuning method; see the module docstring for the contract."""

    name: ClassVar[str] = ""
    config_class: ClassVar[type | None] = None
    fallback: ClassVar[bool] = False
    """True: asked last, when no other method claims a model or a folder (``full``: any plain model)."""
    is_adapter: ClassVar[bool] = False
    """True: the base weights stay frozen and the folder holds only the adapter, which ``load`` puts on the
    base model; ``disabled`` recovers the base. False: the weights themselves change and the folder is a
    whole model."""

    def prepare(self, model: "nn.Module", config: Any = None, scope: str | None = None) -> "nn.Module":
        raise NotImplementedError

    def owns(self, model: "nn.Module") -> bool:
        raise NotImplementedError

    def save(self, model: "nn.Module", folder: Path, base_model: str) -> None:
        raise NotImplementedError

    def detects(self, folder: Path, meta: dict | None) -> bool:
        raise NotImplementedError

    def check(self, folder: Path, meta: dict | None, base_model: str | None, allow_pickle: bool,
              opt_in: str | None, trust_remote_code: bool) -> None:
        """Everything loading needs, checked without loading weights (one RetainError line on a problem)."""
        raise NotImplementedError

    def load(self, base: "nn.Module", folder: Path) -> "nn.Module":
        raise NotImplementedError(f"method {self.name!r} saves whole models; load the folder itself")

    def disabled(self, model: "nn.Module") -> ContextManager[None]:
        """Inside this context ``model`` computes its base model's outputs (adapter methods only)."""
        raise NotImplementedError(f"method {self.name!r} changes the base weights; keep a copy of the base")

    def base_of(self, folder: Path, meta: dict | None, base_model: str | None = None) -> str:
        """The base model name or folder the adapter goes on: ``base_model``, else the one it records."""
        raise NotImplementedError(f"method {self.name!r} saves whole models, not adapters")


def register_method(cls: type[AdapterMethod]) -> type[AdapterMethod]:
    """Class decorator: make ``cls`` available by ``cls.name`` (a later registration of a name replaces it)."""
    if not cls.name:
        raise ValueError(f"{cls.__name__}: set the class attribute 'name' before registering")
    METHODS[cls.name] = cls()
    return cls


def get_method(name: str) -> AdapterMethod:
    """The registered method ``name``; an unknown name is one RetainError line listing the known ones."""
    if name not in METHODS:
        raise RetainError(f"method={name!r}: use one of {', '.join(repr(m.name) for m in all_methods())}")
    return METHODS[name]


def all_methods() -> list[AdapterMethod]:
    """Every registered method: the built-in ones first (in :data:`BUILTIN` order), then the others in
    registration order."""
    rank = {name: i for i, name in enumerate(BUILTIN)}
    return sorted(METHODS.values(), key=lambda m: rank.get(m.name, len(BUILTIN)))


def claimant(question: str, *args: Any) -> AdapterMethod | None:
    """The first method whose ``question`` (``"owns"`` or ``"detects"``) is true for ``args``; fallback
    methods are asked last, so a more specific method registered later still wins."""
    for method in sorted(all_methods(), key=lambda m: m.fallback):
        if getattr(method, question)(*args):
            return method
    return None

