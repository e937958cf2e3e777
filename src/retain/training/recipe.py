"""YAML recipe → :class:`~retain.training.config.Recipe`, strictly (torch-free).

- ``yaml.safe_load`` only. The dataclass tree in :mod:`retain.training.config` is the schema: a key
  it does not have is an error that names the key path and suggests the closest valid key (difflib);
  a value of the wrong type is an error naming the key, the expected type and the value.
- YAML 1.1 reads ``2e-4`` (no dot) as a string; a float field accepts such strings, so recipes can be
  written the way people write learning rates.
- Renamed keys (``loramoe.blc_weight`` -> ``loramoe.lbc_beta``) still read, in the file and in ``--set``,
  with one warning line each: the config class lists them (``RENAMED``), and
  :func:`retain.adapters.loramoe.config.renamed_keys` maps them before the keys are checked.
- Overrides (``--set optim.lr=1e-4``) are parsed as YAML values and applied to the raw mapping before
  validation, so they get the same checks as the file; an unknown key or a bad value given with
  ``--set`` is reported against ``--set``, not the recipe file.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from pathlib import Path
from typing import Any, Literal, Union

import yaml

from retain.adapters.loramoe.config import renamed_keys
from retain.errors import RetainError
from retain.training.config import Recipe


def load_recipe(path: str | Path, overrides: list[str] | None = None) -> Recipe:
    """Read, override, type-check and validate a recipe file."""
    from retain.utils.io import read_text

    path = Path(path)
    text = read_text(path, "recipe")
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = f":{mark.line + 1}" if mark is not None else ""
        raise RetainError(f"{path}{line}: invalid YAML ({getattr(e, 'problem', e)})") from None
    if not isinstance(data, dict):
        raise RetainError(f"{path}: a recipe is a mapping of keys (model, method, datasets, ...)")
    for item in overrides or []:
        apply_override(data, item)
    try:
        return recipe_from_dict(data)
    except RetainError as e:
        bad = _override_at_fault(str(e), overrides or [])
        raise RetainError(f"--set {bad}: {e}" if bad else f"{path}: {e}") from None


def _override_at_fault(message: str, overrides: list[str]) -> str | None:
    """The ``--set`` item whose key the error names (so the recipe file is not blamed for it)."""
    for item in overrides:
        key = item.partition("=")[0].strip()
        if message.startswith((f"{key}:", f"{key}[")) or f"'{key}'" in message:
            return item
    return None


def recipe_from_dict(data: dict) -> Recipe:
    """Build and validate a Recipe from a plain mapping (as read from YAML)."""
    return from_dict(Recipe, data, "").validate()


def apply_override(data: dict, item: str) -> None:
    """Apply ``"a.b.c=value"`` (value parsed as YAML) to the nested mapping ``data`` in place."""
    key, sep, raw = item.partition("=")
    if not sep or not key.strip():
        raise RetainError(f"--set {item!r}: expected key.path=value, e.g. optim.lr=1e-4")
    key = key.strip()
    valid = schema_keys(Recipe)
    if key not in valid and key not in schema_keys(Recipe, renamed=True):
        close = suggest_key(key, valid)
        hint = f"did you mean '{close}'?" if close else "see the recipe keys in retain.training.config"
        raise RetainError(f"--set {item}: unknown key '{key}'; {hint}")
    parts = key.split(".")
    node = data
    for p in parts[:-1]:
        node = node.setdefault(p, {})
        if not isinstance(node, dict):
            raise RetainError(f"--set {item!r}: {p} is not a section")
    node[parts[-1]] = yaml.safe_load(raw)


def to_dict(obj: Any) -> Any:
    """Dataclass tree → plain YAML-able data (tuples become lists)."""
    if dataclasses.is_dataclass(obj):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    return obj


def dump_recipe(recipe: Recipe) -> str:
    return yaml.safe_dump(to_dict(recipe), sort_keys=False)


def _where(path: str) -> str:
    return path or "recipe"


def from_dict(cls: type, data: Any, path: str) -> Any:
    """Instantiate dataclass ``cls`` from ``data`` checking keys and types; ``path`` names the location."""
    if not isinstance(data, dict):
        raise RetainError(f"{_where(path)}: expected a mapping, got {type(data).__name__} {data!r}")
    data = renamed_keys(cls, data, _where(path))
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key in data:
        if key not in fields:
            close = _suggest(str(key), list(fields))
            hint = f"; did you mean '{_join(path, close[0])}'?" if close else f"; valid keys: {', '.join(fields)}"
            raise RetainError(f"unknown key '{_join(path, key)}'{hint}")
    kwargs = {}
    for name, f in fields.items():
        if name in data:
            kwargs[name] = _convert(hints[name], data[name], _join(path, name))
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:  # type: ignore[misc]
            raise RetainError(f"missing key '{_join(path, name)}'")
    try:
        return cls(**kwargs)
    except RetainError as e:  # a config's own __post_init__ check: prefix where it happened
        msg = str(e)
        raise RetainError(msg if msg.startswith(path) else f"{_where(path)}: {msg}") from None


def _suggest(key: str, valid: list[str]) -> list[str]:
    close = suggest_key(key, valid)
    return [close] if close else []


def suggest_key(key: str, valid: list[str]) -> str | None:
    """The valid (dotted) key ``key`` most likely meant: a key of the same section named by the
    initials of the last part (``optim.learnin_rate`` -> ``optim.lr``, ``lora.rank`` -> ``lora.r``),
    else the closest by spelling over the whole dotted key (difflib)."""
    section, _, leaf = key.rpartition(".")
    initials = "".join(part[:1] for part in leaf.lower().split("_") if part)
    if len(leaf) > len(initials):
        same = [v for v in valid if v.rpartition(".") == (section, ".", initials) or (not section and v == initials)]
        if same:
            return same[0]
    close = difflib.get_close_matches(key, valid, n=1, cutoff=0.6)
    return close[0] if close else None


def schema_keys(cls: type, prefix: str = "", renamed: bool = False) -> list[str]:
    """Every dotted key of a dataclass tree (``optim``, ``optim.lr``, ...): what ``--set`` may name.
    ``renamed``: the old names of renamed keys instead (``loramoe.blc_weight``, ...)."""
    hints = typing.get_type_hints(cls)
    out = [prefix + old for old in getattr(cls, "RENAMED", {})] if renamed else []
    for f in dataclasses.fields(cls):
        if not renamed:
            out.append(prefix + f.name)
        if dataclasses.is_dataclass(hints[f.name]):
            out += schema_keys(hints[f.name], f"{prefix}{f.name}.", renamed)
    return out


def _join(path: str, key: Any) -> str:
    return f"{path}.{key}" if path else str(key)


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return " | ".join(repr(a) for a in typing.get_args(tp))
    if origin in (Union, types.UnionType):
        return " | ".join(_type_name(a) for a in typing.get_args(tp))
    if tp is type(None):
        return "null"
    return getattr(tp, "__name__", str(tp))


def _convert(tp: Any, value: Any, path: str) -> Any:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    bad = RetainError(f"{path}: expected {_type_name(tp)}, got {type(value).__name__} {value!r}")
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _convert(a, value, path)
            except RetainError as e:
                errors.append(e)
        raise errors[0] if len(errors) == 1 else bad
    if origin is Literal:
        if value in args:
            return value
        close = difflib.get_close_matches(str(value), [str(a) for a in args], n=1)
        hint = f"; did you mean '{close[0]}'?" if close else ""
        raise RetainError(f"{path}: {value!r} is not one of {_type_name(tp)}{hint}")
    if origin is list:
        if not isinstance(value, list):
            raise bad
        return [_convert(args[0], v, f"{path}[{i}]") for i, v in enumerate(value)]
    if origin is tuple:
        if not isinstance(value, (list, tuple)) or len(value) != len(args):
            raise bad
        return tuple(_convert(a, v, f"{path}[{i}]") for i, (a, v) in enumerate(zip(args, value)))
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, path)
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise bad
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise bad
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1: "2e-4" is a string
            try:
                return float(value)
            except ValueError:
                pass
        raise bad
    if tp is str:
        if isinstance(value, str):
            return value
        raise bad
    if tp is Any:
        return value
    raise RetainError(f"{path}: unsupported field type {tp!r}")  # a schema bug, not user input
