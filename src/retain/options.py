"""The one options parser: a config dataclass is ``--help``, the flags, the YAML file and the Python API.

- Every command's options are the fields of one dataclass (attribute docstrings are the help).
  jsonargparse (as in litgpt) turns it into a parser, reads flags and YAML files (``--config FILE``) into
  the same typed namespace, and instantiates the nested dataclasses. The checks of each config live in
  its ``__post_init__``, so Python callers get the same errors as the command line.
- ``retain train recipe.yaml`` is ``retain train --config recipe.yaml``: the recipe is read first and
  flags override it (``--optim.lr 1e-4``), whatever their order on the line.
- What this module adds to jsonargparse, all by rewriting argv before the parse (nothing is patched):
  a bool flag alone means true (``--resume``); a list option given one plain value is a one-item list
  (``--probe_files facts.jsonl``; repeat the flag for more items); deprecated spellings still work with a
  one-line notice (``--set key=value``, renamed keys); and errors become one ``RetainError`` line that
  names the file or flag, the key, what is wrong and how to fix it (a misspelt key gets the closest one).
- Renames are declared on the config class: ``RENAMED`` (ClassVar, old key -> new key, in YAML files
  and as flags, for any section; one logged warning line per old key) and ``deprecated_flags`` (old flag
  -> new dotted key, one notice).
- A config file is checked before jsonargparse sees it: a missing file, a folder, bad UTF-8 or bad YAML
  is named with its line; an unknown key is named with its full path (``datasets[1].wieght``).
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import logging
import re
import types
import typing
from functools import lru_cache
from pathlib import Path
from typing import Any, Sequence, Union

from retain.errors import RetainError
from retain.utils.console import warn

log = logging.getLogger(__name__)

# ---------------------------------------------------------------- schema walking


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _strip_optional(tp: Any) -> Any:
    if typing.get_origin(tp) in (Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return args[0] if len(args) == 1 else tp
    return tp


def _dataclass_of(tp: Any) -> type | None:
    tp = _strip_optional(tp)
    return tp if dataclasses.is_dataclass(tp) else None


def _list_item(tp: Any) -> Any | None:
    """The item type of a ``list[X]`` (or ``list[X] | None``) field, else None."""
    tp = _strip_optional(tp)
    return typing.get_args(tp)[0] if typing.get_origin(tp) is list else None


def schema_keys(cls: type, prefix: str = "") -> dict[str, Any]:
    """Every dotted key of a dataclass tree and its type: ``{"optim": OptimConfig, "optim.lr": float, ...}``."""
    out: dict[str, Any] = {}
    for name, tp in _hints(cls).items():
        if name not in {f.name for f in dataclasses.fields(cls)}:
            continue
        out[prefix + name] = tp
        sub = _dataclass_of(tp)
        if sub is not None:
            out.update(schema_keys(sub, f"{prefix}{name}."))
    return out


def suggest_key(key: str, valid: Sequence[str]) -> str | None:
    """The valid (dotted) key ``key`` most likely meant: a key of the same section named by the
    initials of the last part (``optim.learnin_rate`` -> ``optim.lr``, ``lora.rank`` -> ``lora.r``),
    else the closest by spelling over the whole dotted key (difflib)."""
    section, _, leaf = key.rpartition(".")
    initials = "".join(part[:1] for part in leaf.lower().split("_") if part)
    if len(leaf) > len(initials):
        same = [v for v in valid if v.rpartition(".") == (section, ".", initials) or (not section and v == initials)]
        if same:
            return same[0]
    close = difflib.get_close_matches(key, list(valid), n=1, cutoff=0.6)
    return close[0] if close else None


# ---------------------------------------------------------------- config files


@lru_cache(maxsize=None)
def unique_key_loader() -> type:
    """``yaml.SafeLoader`` that refuses a mapping holding the same key twice (plain ``safe_load`` keeps the
    last one silently): a ``ConstructorError`` at the second key's line. Everything else is ``safe_load``."""
    import yaml

    class UniqueKeyLoader(yaml.SafeLoader):
        def construct_mapping(self, node, deep=False):
            if isinstance(node, yaml.MappingNode):
                first: dict = {}
                for key_node, _ in node.value:
                    if key_node.tag == "tag:yaml.org,2002:merge":
                        continue
                    key = self.construct_object(key_node, deep=deep)
                    try:
                        seen = first.setdefault(key, key_node.start_mark.line + 1)
                    except TypeError:  # an unhashable key: SafeLoader's own error follows
                        continue
                    if seen != key_node.start_mark.line + 1:
                        raise yaml.constructor.ConstructorError(
                            None, None, f"key '{key}' given twice (first on line {seen}); keep one",
                            key_node.start_mark)
            return super().construct_mapping(node, deep=deep)

    return UniqueKeyLoader


def load_yaml(text: str):
    """``yaml.safe_load`` semantics, with a key given twice in one mapping refused (:func:`unique_key_loader`)."""
    import yaml

    return yaml.load(text, Loader=unique_key_loader())  # noqa: S506 - a SafeLoader subclass


def read_config_file(path: str | Path, cls: type, what: str = "config") -> dict:
    """Read a YAML config file strictly: a mapping whose keys all exist in ``cls`` (deprecated keys are
    renamed, with a notice), no key given twice. Raises RetainError naming ``path`` (and the line for bad YAML)."""
    import yaml

    from retain.utils.io import read_text

    text = read_text(path, what)
    try:
        data = load_yaml(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = f":{mark.line + 1}" if mark is not None else ""
        raise RetainError(f"{path}{line}: invalid YAML ({getattr(e, 'problem', e)})") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        keys = ", ".join(f.name for f in dataclasses.fields(cls))
        raise RetainError(f"{path}: holds a YAML {type(data).__name__}; a {what} is a mapping of keys ({keys})")
    try:
        check_keys(cls, data)
    except RetainError as e:
        raise RetainError(f"{path}: {e}") from None
    return data


def check_keys(cls: type, data: dict, path: str = "") -> None:
    """Every key of the nested mapping ``data`` is a field of the dataclass tree ``cls`` (lists of
    dataclasses included); a renamed key (``cls.RENAMED``: old -> new) is renamed in place, with one
    logged warning line."""
    hints = _hints(cls)
    fields = [f.name for f in dataclasses.fields(cls)]
    renamed = getattr(cls, "RENAMED", {})
    for key in list(data):
        if key in renamed and key not in fields:
            new = renamed[key]
            if new in data:
                raise RetainError(f"{path or 'config'}: both '{key}' and its new name '{new}' are set; keep only '{new}'")
            log.warning("%s: '%s' is deprecated; it is now '%s' (the old name still works)", path or "config", key, new)
            data[new] = data.pop(key)
            key = new
        if key not in fields:
            valid = [_join(path, k) for k in schema_keys(cls)]
            close = suggest_key(_join(path, key), valid)
            hint = f"did you mean '{close}'?" if close else f"valid keys: {', '.join(fields)}"
            raise RetainError(f"unknown key '{_join(path, key)}'; {hint}")
        sub, item = _dataclass_of(hints[key]), _dataclass_of(_list_item(hints[key]))
        value = data[key]
        if sub is not None and isinstance(value, dict):
            check_keys(sub, value, _join(path, key))
        elif item is not None and isinstance(value, list):
            for i, v in enumerate(value):
                if isinstance(v, dict):
                    check_keys(item, v, f"{_join(path, key)}[{i}]")


def _join(path: str, key: Any) -> str:
    return f"{path}.{key}" if path else str(key)


# ---------------------------------------------------------------- parsing

QUIET_HELP = "-q, --quiet (any command): only results on stdout and warnings/errors on stderr; no progress or status."


def new_parser(cls: type, prog: str | None = None, positional: bool = True):
    """The jsonargparse parser of a config dataclass: its fields (nested ones as ``--a.b``), ``--config``,
    ``--print_config`` (and ``--quiet`` in the epilog: the CLI strips it). Fields without a default are positional when
    ``positional``."""
    import jsonargparse
    from jsonargparse import ActionConfigFile, ArgumentParser

    jsonargparse.set_parsing_settings(docstring_parse_attribute_docstrings=True)
    doc = (cls.__doc__ or "").strip()
    parser = ArgumentParser(prog=prog, description=doc, exit_on_error=False, epilog=QUIET_HELP, allow_abbrev=False)
    parser.add_argument("--config", action=ActionConfigFile,
                        help="A YAML file of these options (the same keys as the flags); flags override it.")
    parser.add_class_arguments(cls, nested_key=None, as_positional=positional, fail_untyped=False)
    return parser


parser_for = lru_cache(maxsize=None)(new_parser)
""":func:`new_parser`, built once per (class, prog, positional)."""


def parse(cls: type, args: Sequence[str], prog: str | None = None, config_positional: bool = False) -> Any:
    """``args`` (flags, positionals, ``--config FILE``) -> an instance of ``cls``; errors are RetainError.

    With ``config_positional`` the first positional argument is the config file (``retain train r.yaml``)."""
    from jsonargparse import ArgumentError

    args = [a for a in args if a not in ("-q", "--quiet")]
    args = _deprecated_aliases(cls, args)
    args = _bare_bools(cls, args)
    args, config = _take_config(args, config_positional)
    args = _plain_list_values(cls, args)
    _check_nested_config_files(cls, args)
    data = read_config_file(config, cls, _file_kind(cls)) if config is not None else None
    if data is not None:
        args = ["--config", json.dumps(data, default=str), *args]
    parser = parser_for(cls, prog, not config_positional)
    try:
        ns = parser.parse_args(args)
        if "print_config" in ns:
            ns.pop("print_config")
        ns.pop("config", None)
        init = parser.instantiate(ns)
        return cls(**{f.name: init[f.name] for f in dataclasses.fields(cls) if f.name in init})
    except ArgumentError as e:
        raise RetainError(explain(str(e), cls, args, config, data, prog)) from None
    except RetainError as e:  # a config's own check: say where the value came from
        raise RetainError(_blame(str(e), args, config)) from None


def from_mapping(cls: type, data: dict, source: str = "") -> Any:
    """A plain mapping (as read from YAML) -> ``cls``, through the same parser and checks as the CLI."""
    from jsonargparse import ArgumentError

    if not isinstance(data, dict):
        raise RetainError(f"{source or cls.__name__}: expected a mapping of keys, got {type(data).__name__}")
    data = json.loads(json.dumps(data, default=str))  # a copy (renames happen in place)
    try:
        check_keys(cls, data)
    except RetainError as e:
        raise RetainError(f"{source}: {e}" if source else str(e)) from None
    parser = parser_for(cls, None, False)
    try:
        init = parser.instantiate(parser.parse_args(["--config", json.dumps(data)]))
        return cls(**{f.name: init[f.name] for f in dataclasses.fields(cls) if f.name in init})
    except ArgumentError as e:
        msg = explain(str(e), cls, [], source or None, data)
    except RetainError as e:
        msg = f"{source}: {e}" if source and not str(e).startswith(source) else str(e)
    raise RetainError(msg)


def _file_kind(cls: type) -> str:
    return getattr(cls, "config_file_kind", "config")


# ---------------------------------------------------------------- argv rewriting


def _flag_name(arg: str) -> str:
    return arg.partition("=")[0][2:] if arg.startswith("--") else ""


def _deprecated_aliases(cls: type, args: list[str]) -> list[str]:
    """``--set a.b=v`` / ``--set+ a.b=v`` -> ``--a.b v``; ``--old`` -> ``--new`` (``deprecated_flags`` and
    ``RENAMED`` of the config classes)."""
    renames = dict(getattr(cls, "deprecated_flags", {}))
    keys = {}
    for section, tp in {"": cls, **schema_keys(cls)}.items():
        sub = _dataclass_of(tp) if section else cls
        for old, new in (getattr(sub, "RENAMED", {}) if sub else {}).items():
            keys[_join(section, old)] = (section, old, new)
    out, i, noted = [], 0, set()
    while i < len(args):
        a = args[i]
        flag, eq, inline = a.partition("=") if a.startswith("--") else (a, "", "")
        if flag in ("--set", "--set+"):
            if eq:
                item = inline
            elif i + 1 < len(args):
                item, i = args[i + 1], i + 1
            else:
                raise RetainError("--set: expected key.path=value, e.g. --set optim.lr=1e-4 (or write --optim.lr 1e-4)")
            key, sep, value = item.partition("=")
            if not sep or not key.strip():
                raise RetainError(f"--set {item}: expected key.path=value, e.g. optim.lr=1e-4 (or write --optim.lr 1e-4)")
            if "--set" not in noted:
                warn(f"--set is deprecated; write the key as a flag: --{key.strip()} {value}")
                noted.add("--set")
            out += _deprecated_aliases(cls, [f"--{key.strip()}", value])
        elif flag[2:] in keys:
            section, old, new = keys[flag[2:]]
            log.warning("%s: '%s' is deprecated; it is now '%s' (the old name still works)", f"--{section}", old, new)
            out.append(f"--{_join(section, new)}" + eq + inline)
        elif flag[2:] in renames:
            new = "--" + renames[flag[2:]]
            if flag not in noted:
                warn(f"{flag} is deprecated; write {new} (same meaning)")
                noted.add(flag)
            out.append(new + eq + inline)
        else:
            out.append(a)
        i += 1
    return out


def _takes_value(arg: str) -> bool:
    return arg.startswith("--") and "=" not in arg and arg not in ("--help", "--print_config")


def _take_config(args: list[str], positional: bool) -> tuple[list[str], str | None]:
    """Remove ``--config FILE`` (and, when ``positional``, the first positional argument) from ``args``."""
    out, config, i = [], None, 0
    while i < len(args):
        a = args[i]
        if a == "--config" or a.startswith("--config="):
            value = a.partition("=")[2] if "=" in a else (args[i + 1] if i + 1 < len(args) else None)
            if value is None:
                raise RetainError("--config: expected the path of a YAML file")
            if config is not None:
                raise RetainError(f"--config {value}: a config file was already given ({config}); give one")
            config, i = value, i + (1 if "=" in a else 2)
            continue
        if a == "-h":
            out.append(a)
        elif _takes_value(a):
            out.append(a)
            if i + 1 < len(args):
                out.append(args[i + 1])
                i += 1
        elif positional and not a.startswith("-") and config is None:
            config = a
        else:
            out.append(a)
        i += 1
    return out, config


def _bare_bools(cls: type, args: list[str]) -> list[str]:
    """``--flag`` alone means ``--flag true`` for a bool field (jsonargparse wants a value)."""
    flags = {f"--{k}" for k, tp in schema_keys(cls).items() if tp in (bool, "bool")}
    out = []
    for i, a in enumerate(args):
        out.append(a)
        nxt = args[i + 1].lower() if i + 1 < len(args) else ""
        if a in flags and nxt not in ("true", "false", "yes", "no"):
            out.append("true")
    return out


def _plain_list_values(cls: type, args: list[str]) -> list[str]:
    """``--probe_files facts.jsonl`` -> a one-item list; a repeated flag adds an item (``--x+``)."""
    lists = {f"--{k}" for k, tp in schema_keys(cls).items() if _list_item(tp) is not None}
    split: list[str] = []
    for a in args:
        flag, eq, value = a.partition("=")
        split += [flag, value] if eq and flag in lists else [a]
    args = split
    out, seen, i = [], set(), 0
    while i < len(args):
        a = args[i]
        if a in lists and i + 1 < len(args):
            value = args[i + 1]
            if value.lstrip().startswith("[") or value in ("null", "None"):
                out += [a, value]
            else:
                out += [a + "+" if a in seen else a, json.dumps([value]) if a not in seen else value]
            seen.add(a)
            i += 2
            continue
        out.append(a)
        i += 1
    return out


def _check_nested_config_files(cls: type, args: list[str]) -> None:
    """``--prompts x.yaml`` (a nested config given as a file): the file must exist, be UTF-8 and hold a
    mapping of that section's keys; jsonargparse would only say "Unable to load config"."""
    nested = {f"--{k}": _dataclass_of(tp) for k, tp in schema_keys(cls).items() if _dataclass_of(tp)}
    for i, arg in enumerate(args):
        flag, eq, value = arg.partition("=")
        if flag not in nested or (not eq and i + 1 >= len(args)):
            continue
        value = value if eq else args[i + 1]
        if value.lstrip().startswith(("{", "[")) or ": " in value or "\n" in value:
            continue  # inline YAML / JSON, parsed by jsonargparse
        keys = ", ".join(f.name for f in dataclasses.fields(nested[flag]))
        try:
            read_config_file(value, nested[flag], "YAML file")
        except RetainError as e:
            msg = str(e)
            if msg.startswith(f"{value}: holds a YAML"):
                kind = msg.split("holds a YAML ", 1)[1].split(";")[0]
                msg = f"{value}: holds a YAML {kind}, expected a mapping of {keys}"
            elif "not found" in msg or "is a folder" in msg:
                msg = f"{msg} (a mapping of {keys})"
            raise RetainError(f"{flag} {msg}") from None


# ---------------------------------------------------------------- errors


_TYPE_NAMES = {"<class 'int'>": "int", "<class 'float'>": "float", "<class 'str'>": "str",
               "<class 'bool'>": "bool (true or false)", "<class 'list'>": "list", "<class 'dict'>": "mapping",
               "<class 'NoneType'>": "null"}


def _type_name(text: str) -> str:
    text = text.strip()
    if text in _TYPE_NAMES:
        return _TYPE_NAMES[text]
    m = re.fullmatch(r"typing\.Literal\[(.*)\]", text)
    if m:
        return "one of " + m.group(1).replace(", ", " | ")
    return re.sub(r"<class '(?:[\w.]+\.)?(\w+)'>", r"\1", text).replace("typing.", "")


def explain(message: str, cls: type, args: list[str], config: str | None, data: dict | None,
            prog: str | None = None) -> str:
    """A jsonargparse error -> ``"<file or --flag>: <key>: what is wrong; how to fix"`` (one line)."""
    valid = list(schema_keys(cls))
    m = re.search(r"unrecognized arguments: (\S+)", message)
    if m:
        flag = m.group(1).partition("=")[0]
        typed = [a.partition("=")[0] for a in args if a.startswith("--") and a.partition("=")[0].endswith(flag.lstrip("-"))]
        flag = typed[0] if typed else flag  # jsonargparse may report only the tail of --datasets.0.path
        close = suggest_key(flag.lstrip("-").rstrip("+"), valid) if flag.startswith("--") else None
        hint = f"did you mean --{close}?" if close else (f"see {prog} --help" if prog else "check the spelling")
        what = "unknown option" if flag.startswith("-") else "unexpected argument"
        return f"{flag}: {what}; {hint}"
    m = re.search(r"the following arguments are required: (.+)", message)
    if m:
        names = m.group(1).strip()
        return f"missing {names}" + (f"; see {prog} --help" if prog else "")
    m = re.search(r"(?:Group '([\w.]+)' does not accept|Option) (?:option )?'([\w.]+)'(?: is not accepted)?", message)
    if m and ("does not accept" in message or "is not accepted" in message):
        key = _join(m.group(1) or "", m.group(2))
        close = suggest_key(key, valid)
        return f"{_source(key, args, config)}unknown key '{key}'" + (f"; did you mean '{close}'?" if close else "")
    keys = re.findall(r'Parser key "([\w.]+)"', message)
    if keys:
        key = ".".join(keys)
        expected = re.findall(r"Expected a (.+?)(?:\. Got value: .*)?$", message, flags=re.M)
        expected = [e for e in expected if "NoneType" not in e] or expected
        got = re.findall(r"(?:Got value|Given value): (.*)$", message, flags=re.M)
        given = got[-1].strip() if got else None
        where = _source(".".join(keys), args, config)
        key = "" if where == f"--{'.'.join(keys)}: " else _index_key(keys, given, data) + ": "
        if expected:
            typ = _type_name(expected[-1])
            hint = ""
            if typ.startswith("one of ") and given is not None:
                options = [o.strip("'\" ") for o in typ[7:].split("|")]
                close = difflib.get_close_matches(given, options, n=1)
                hint = f"; did you mean '{close[0]}'?" if close else ""
            return f"{where}{key}expected {typ}, got {given!r}{hint}"
        detail = " ".join(message.split("\n")[-1].split())
        return f"{where}{key}{detail}"
    return " ".join(message.split())


def _index_key(keys: list[str], given: str | None, data: dict | None) -> str:
    """``datasets.type`` -> ``datasets[1].type`` when the file's list shows which item holds the value."""
    if len(keys) < 2 or data is None or not isinstance(data.get(keys[0]), list):
        return ".".join(keys)
    for i, item in enumerate(data[keys[0]]):
        if isinstance(item, dict) and given is not None and str(item.get(keys[1])) == given:
            return f"{keys[0]}[{i}]." + ".".join(keys[1:])
    return ".".join(keys)


def _source(key: str, args: list[str], config: str | None) -> str:
    """``"--key: "`` when a flag set ``key`` (or its section), else ``"<config file>: "``."""
    top = key.split(".")[0]
    for a in args:
        flag = _flag_name(a).rstrip("+")
        if flag and (flag == key or key.startswith(flag + ".") or flag.startswith(key + ".") or flag == top):
            return f"--{flag}: "
    return f"{config}: " if config and not config.lstrip().startswith("{") else ""


def _blame(message: str, args: list[str], config: str | None) -> str:
    """A config's own check names a key (``train.batch_size=0: ...``): prefix the file it came from
    when no flag set it."""
    key = re.match(r"[\w.\[\]]+", message)
    name = key.group(0).split("=")[0] if key else ""
    flagged = key and any((f := _flag_name(a).rstrip("+")) and (name == f or name.startswith((f + ".", f + "[")))
                          for a in args)
    if config and not flagged and not message.startswith(("--", str(config))):
        return f"{config}: {message}"
    return message
