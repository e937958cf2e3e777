"""YAML recipe -> :class:`~retain.training.config.Recipe`, through the one options parser (torch-free).

- The recipe goes through the same jsonargparse path as ``retain train``'s flags (:mod:`retain.options`):
  ``yaml.safe_load``, a key the schema does not have is an error naming the key path and the closest
  valid key, a value of the wrong type is an error naming the key, the expected type and the value.
- Overrides are flags (``--optim.lr 1e-4``), applied after the file; in Python, ``load_recipe(path,
  ["optim.lr=1e-4"])`` gives them as ``key=value`` items, checked the same way and blamed on the flag.
- YAML 1.1 reads ``2e-4`` (no dot) as a string; a float field accepts such strings, so recipes can be
  written the way people write learning rates.
- Renamed keys (``loramoe.blc_weight`` -> ``loramoe.lbc_beta``) still read, in the file and as flags, with
  one warning line each: the config class lists them (``RENAMED``) and the parser maps them.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import yaml

from retain.errors import RetainError
from retain.training.config import Recipe


def load_recipe(path: str | Path, overrides: list[str] | None = None) -> Recipe:
    """Read a recipe file, apply ``key=value`` overrides (values are YAML), check everything."""
    from retain.options import parse

    flags = []
    for item in overrides or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise RetainError(f"{item!r}: expected key.path=value, e.g. optim.lr=1e-4")
        flags += [f"--{key.strip()}", value]
    return parse(Recipe, ["--config", str(path), *flags])


def recipe_from_dict(data: dict) -> Recipe:
    """Build and check a Recipe from a plain mapping (as read from YAML), as ``retain train`` would."""
    from retain.options import from_mapping

    return from_mapping(Recipe, data)


def to_dict(obj: Any) -> Any:
    """Dataclass tree -> plain YAML-able data (tuples become lists)."""
    if dataclasses.is_dataclass(obj):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    return obj


def dump_recipe(recipe: Recipe) -> str:
    """The recipe's keys only (a :class:`TrainCommand`'s ``resume`` is how it ran, not what it is)."""
    data = {f.name: to_dict(getattr(recipe, f.name)) for f in dataclasses.fields(Recipe)}
    return yaml.safe_dump(data, sort_keys=False)
