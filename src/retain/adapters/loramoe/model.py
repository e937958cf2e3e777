"""Injecting LoRAMoE into any Hugging Face causal LM, and getting sample types in and the LBC out.

- Injection is module replacement: each target ``nn.Linear``/``Conv1D`` (see :mod:`retain.adapters.targets`)
  becomes a :class:`LoRAMoELinear` holding it as ``base_layer``. No transformers code is copied or patched;
  the model's forward signature is unchanged, so ``generate``, ``Trainer`` and PEFT-style tooling work.
- One :class:`LoRAMoEState` per model, shared by its layers (a plain object, not a submodule, so it never
  reaches ``state_dict``). :func:`sample_types` turns recording on and registers a forward pre-hook
  (``with_kwargs=True``) on the model it is given; the hook takes ``attention_mask`` from the forward's
  arguments (keyword or positional, bound to the forward's signature) and clears the previous forward's records. Each layer then keeps a reference to its router
  probabilities g (B, T, E) (small: E numbers per token); :func:`lbc_loss` reduces them to Q (E, B) after
  the forward. Reducing outside the forward keeps non-reentrant gradient checkpointing valid (its
  recomputation replays the same ops); reentrant checkpointing runs the forward without grad, so the
  LBC would get no gradient there: use ``use_reentrant=False``.
- :func:`lbc_loss` combines the per-layer terms by their **mean** (``lbc_reduction="mean"``, default): the
  authors' code sums over layers and projections, which makes the effective beta grow with depth (x90 on
  SmolLM2's 30 layers x 3 projections) so the same beta would mean different things on different models.
  ``lbc_reduction="sum"`` reproduces the authors' scale.
- Inference needs no sample types: outside :func:`sample_types` nothing is recorded.
"""

from __future__ import annotations

import contextlib
import dataclasses
import inspect
import json
from pathlib import Path
from typing import Iterator, Sequence

import torch
import torch.nn as nn

from retain.adapters import check
from retain.adapters.check import ADAPTER_CONFIG, ADAPTER_WEIGHTS
from retain.adapters.loramoe.config import LoRAMoEConfig
from retain.adapters.loramoe.layer import LoRAMoELinear
from retain.adapters.loramoe.lbc import check_types, lbc_term, router_mass
from retain.adapters.registry import AdapterMethod, register_method
from retain.adapters.targets import find_targets, resolve_target_modules
from retain.errors import RetainError
from retain.utils.io import read_json

LORAMOE_KEYS = ("method", "base_model", "config")
"""The top-level keys of a LoRAMoE ``adapter_config.json``, all required."""


class LoRAMoEState:
    """Per-model recording state shared by all LoRAMoE layers of one model."""

    def __init__(self, config: LoRAMoEConfig):
        self.config = config
        self.recording = False
        self.disabled = False  # :func:`adapters_disabled`: every layer returns its base layer's output
        self.types: torch.Tensor | None = None  # (B,) long
        self.mask: torch.Tensor | None = None  # (B, T) from the latest forward's kwargs
        # (layer name, g (B, T, E) fp32, attention mask (B, T) or None) of the latest forward
        self.records: list[tuple[str, torch.Tensor, torch.Tensor | None]] = []

    def record(self, layer: LoRAMoELinear, gates: torch.Tensor) -> None:
        if gates.dim() != 3:
            raise RetainError(
                f"{layer.name}: LoRAMoE expects (batch, seq, hidden) inputs when sample types are given, "
                f"got shape {tuple(gates.shape[:-1])}"
            )
        mask = self.mask
        if mask is not None and tuple(mask.shape) != tuple(gates.shape[:2]):
            raise RetainError(
                f"{layer.name}: attention_mask shape {tuple(mask.shape)} does not match the layer input "
                f"{tuple(gates.shape[:2])}; pass a 2-D (batch, seq) attention_mask"
            )
        if self.types is not None and self.types.shape[0] != gates.shape[0]:
            raise RetainError(
                f"sample_types: got {self.types.shape[0]} types for a batch of {gates.shape[0]}; "
                "give one type per sequence"
            )
        # Keep g itself and reduce it to Q later, outside the forward: under non-reentrant gradient
        # checkpointing the recomputation must replay exactly the original forward's ops.
        self.records.append((layer.name, gates, mask))

    def router_masses(self) -> list[tuple[str, torch.Tensor]]:
        return [(name, router_mass(g, mask)) for name, g, mask in self.records]


def loramoe_layers(model: nn.Module) -> list[LoRAMoELinear]:
    return [m for m in model.modules() if isinstance(m, LoRAMoELinear)]


def _state(model: nn.Module) -> LoRAMoEState | None:
    for m in model.modules():
        if isinstance(m, LoRAMoELinear):
            return m.state
    return None


def loramoe_config(model: nn.Module) -> LoRAMoEConfig | None:
    """The config a model was injected with (target_modules resolved), or None for a plain model."""
    state = _state(model)
    return None if state is None else state.config


def inject_loramoe(model: nn.Module, config: LoRAMoEConfig) -> nn.Module:
    """Freeze ``model`` and wrap its target layers (inside ``config.scope`` when set) with LoRAMoE experts,
    in place; returns ``model``."""
    if loramoe_layers(model):
        raise RetainError("inject_loramoe: the model already has LoRAMoE layers; load a fresh base model")
    suffixes = resolve_target_modules(model, config.target_modules, config.scope)
    config = dataclasses.replace(config, target_modules=suffixes)  # record what was resolved
    state = LoRAMoEState(config)
    for p in model.parameters():
        p.requires_grad_(False)
    for name in find_targets(model, suffixes, config.scope):
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        base = getattr(parent, child)
        layer = LoRAMoELinear(base, config.num_experts, config.rank, config.alpha, config.dropout,
                              name=name, state=state, dropout_per_expert=config.dropout_per_expert)
        layer.train(base.training)
        setattr(parent, child, layer)
    return model


@contextlib.contextmanager
def sample_types(model: nn.Module, types: torch.Tensor | Sequence[int] | None) -> Iterator[None]:
    """Record the LBC inputs of the forwards run inside this block.

    types: (B,) with 1 = world knowledge, 0 = task, -1 = unknown (excluded from the LBC); None records
    nothing. A no-op on models without LoRAMoE layers. Use one block per forward (each forward replaces
    the previous records); :func:`lbc_loss` reads them after the block.
    """
    state = _state(model)
    if state is None or types is None:
        if state is not None:
            state.types, state.records = None, []
        yield
        return
    types = torch.as_tensor(types, dtype=torch.long).reshape(-1)
    check_types(types)

    try:  # attention_mask may come positionally (model(ids, mask)): map args to the forward's names
        signature = inspect.signature(model.forward)
    except (TypeError, ValueError):
        signature = None

    def capture(_module, args, kwargs):
        mask = kwargs.get("attention_mask")
        if mask is None and args and signature is not None:
            try:
                mask = signature.bind_partial(*args, **kwargs).arguments.get("attention_mask")
            except TypeError:
                mask = None
        if mask is not None and mask.dim() != 2:
            raise RetainError(f"sample_types: attention_mask must be (batch, seq), got shape {tuple(mask.shape)}")
        state.mask = mask
        state.records = []

    handle = model.register_forward_pre_hook(capture, with_kwargs=True)
    state.types, state.records, state.mask, state.recording = types, [], None, True
    try:
        yield
    finally:
        handle.remove()
        state.recording, state.mask = False, None


@contextlib.contextmanager
def adapters_disabled(model: nn.Module) -> Iterator[None]:
    """Inside this block every LoRAMoE layer returns its frozen base layer's output (no router, no
    record): the model is exactly the base model, as PEFT's ``disable_adapter()`` for LoRA."""
    state = _state(model)
    if state is None:
        yield
        return
    before = state.disabled
    state.disabled = True
    try:
        yield
    finally:
        state.disabled = before


def lbc_loss(model: nn.Module) -> torch.Tensor | None:
    """beta * LBC of the latest forward inside :func:`sample_types` (a scalar with grad), combined over
    layers by mean (default) or sum, see ``LoRAMoEConfig.lbc_reduction``.

    None when the model has no LoRAMoE layers, no sample types were given, or beta is 0.
    """
    state = _state(model)
    if state is None or state.types is None or not state.records or state.config.lbc_beta == 0:
        return None
    cfg = state.config
    masses = state.router_masses()
    device = masses[0][1].device
    types = state.types.to(device)
    terms = torch.stack([
        lbc_term(q.to(device), types, cfg.num_world_experts, cfg.lbc_delta, cfg.lbc_eps, cfg.lbc_paper_sign)
        for _, q in masses
    ])
    total = terms.mean() if cfg.lbc_reduction == "mean" else terms.sum()
    return cfg.lbc_beta * total


def last_router_mass(model: nn.Module) -> list[tuple[str, torch.Tensor]]:
    """(layer name, Q (E, B)) of the latest recorded forward: router mass per expert and sample."""
    state = _state(model)
    return [] if state is None else state.router_masses()


def adapter_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """Adapter and router weights only: ``{layer_name}.lora_A|lora_B|router`` -> tensor."""
    return {f"{layer.name}.{k}": p.detach() for layer in loramoe_layers(model)
            for k, p in layer.adapter_parameters().items()}


def load_adapter_state_dict(model: nn.Module, tensors: dict[str, torch.Tensor], source: str = "adapter") -> None:
    """Copy saved adapter weights into an injected model; every key must match exactly."""
    own = {f"{layer.name}.{k}": p for layer in loramoe_layers(model) for k, p in layer.adapter_parameters().items()}
    missing, unexpected = sorted(set(own) - set(tensors)), sorted(set(tensors) - set(own))
    if missing or unexpected:
        raise RetainError(
            f"{source}: adapter weights do not fit this base model (missing {missing[:3]}, unexpected "
            f"{unexpected[:3]}); load it onto the base model it was trained on"
        )
    with torch.no_grad():
        for k, p in own.items():
            t = tensors[k]
            if tuple(t.shape) != tuple(p.shape):
                raise RetainError(f"{source}: {k} has shape {tuple(t.shape)}, the model expects {tuple(p.shape)}")
            p.copy_(t.to(p.dtype))


def loramoe_config_of(folder: Path, meta: dict) -> LoRAMoEConfig:
    """The ``LoRAMoEConfig`` a LoRAMoE ``adapter_config.json`` holds; unknown keys at either level refused,
    old ``blc_*`` keys read as their ``lbc_*`` names (one warning line each)."""
    where = folder / ADAPTER_CONFIG
    unknown = sorted(set(meta) - set(LORAMOE_KEYS))
    if unknown:
        raise RetainError(f"{where}: unknown key '{unknown[0]}'; a LoRAMoE adapter_config.json holds only "
                          f"{', '.join(LORAMOE_KEYS)}")
    raw = meta.get("config") or {}
    if not isinstance(raw, dict):
        raise RetainError(f"{where}: 'config' must be an object of LoRAMoE options")
    return LoRAMoEConfig.from_dict(raw, where=f"{where}: config")


def check_loramoe_tensors(weights: Path, shapes: dict[str, tuple[int, ...]], base: nn.Module,
                          cfg: LoRAMoEConfig) -> None:
    """The file holds exactly the tensors, with the shapes, that injecting ``cfg`` into ``base`` (a model on
    the ``meta`` device, :func:`retain.adapters.check.meta_model`) creates."""
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
            raise check.shape_error(weights, k, shapes[k], shape)


@register_method
class LoRAMoEMethod(AdapterMethod):
    """LoRAMoE + LBC: experts and router injected, backbone frozen; the folder holds ``adapter_config.json``
    (``{"method": "loramoe", "base_model": ..., "config": {...}}``) and ``adapter_model.safetensors``
    (adapter and router weights only)."""

    name = "loramoe"
    config_class = LoRAMoEConfig
    is_adapter = True

    def prepare(self, model: nn.Module, config: LoRAMoEConfig | None = None, scope: str | None = None) -> nn.Module:
        config = config or LoRAMoEConfig()
        if scope is not None:
            config = dataclasses.replace(config, scope=scope)
        return inject_loramoe(model, config)

    def owns(self, model: nn.Module) -> bool:
        return loramoe_config(model) is not None

    def save(self, model: nn.Module, folder: Path, base_model: str) -> None:
        from safetensors.torch import save_file

        meta = {"method": self.name, "base_model": base_model, "config": dataclasses.asdict(loramoe_config(model))}
        (folder / ADAPTER_CONFIG).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
        tensors = {k: v.contiguous().cpu() for k, v in adapter_state_dict(model).items()}
        save_file(tensors, str(folder / ADAPTER_WEIGHTS), metadata={"format": "pt", "method": self.name})

    def detects(self, folder: Path, meta: dict | None) -> bool:
        return meta is not None and meta.get("method") == self.name

    def check(self, folder: Path, meta: dict | None, base_model: str | None, allow_pickle: bool,
              opt_in: str | None, trust_remote_code: bool) -> None:
        cfg = loramoe_config_of(folder, meta or {})
        check.check_weights(folder, allow_pickle, opt_in, stem="adapter_model")
        weights = folder / ADAPTER_WEIGHTS
        if not weights.exists():
            raise RetainError(f"{weights}: missing; LoRAMoE adapters are read from safetensors only")
        base = check.meta_model(self.base_of(folder, meta, base_model), allow_pickle, opt_in, trust_remote_code)
        check_loramoe_tensors(weights, check.safetensors_shapes(weights), base, cfg)

    def load(self, base: nn.Module, folder: Path) -> nn.Module:
        from safetensors.torch import load_file

        inject_loramoe(base, loramoe_config_of(folder, read_json(folder / ADAPTER_CONFIG)))
        weights = folder / ADAPTER_WEIGHTS
        load_adapter_state_dict(base, load_file(str(weights)), source=str(weights))
        return base

    def disabled(self, model: nn.Module):
        return adapters_disabled(model)

    def base_of(self, folder: Path, meta: dict | None, base_model: str | None = None) -> str:
        return check.recorded_base(folder, "base_model", base_model)
