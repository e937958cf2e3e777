"""The ``retain`` command line: one table maps command names to (config dataclass, run function).

- Each command's options are the fields of one typed dataclass; jsonargparse turns its field types and
  attribute docstrings into ``--help``. Fields without a default become positional arguments.
  One source of truth: the dataclass is also the Python API and the YAML schema.
- Config classes live in torch-free ``config.py`` modules so ``--help`` is fast; the run function is
  imported only when its command runs.
- A :class:`~retain.errors.RetainError` prints as one line ``error: ...`` and exits with status 2; so does
  an ``OSError`` about a path (a file where a folder goes, no permission, a full disk) that no check
  caught first. Other exceptions are bugs and keep their traceback.

To add a command: write ``FooConfig`` and ``run_foo(cfg) -> int | None``, add one row to ``COMMANDS``.
"""

from __future__ import annotations

import dataclasses
import importlib
import os
import sys
from typing import Any, Callable, Sequence

from retain.errors import RetainError

# name -> ("module:ConfigClass", "module:run_function", one-line help)
COMMANDS: dict[str, tuple[str, str, str]] = {
    "decompress": (
        "retain.generation.config:DecompressConfig",
        "retain.generation.run:run_decompress",
        "TG self-decompression: grow a deduplicated question/answer tree from a model's own knowledge.",
    ),
    "export": (
        "retain.generation.config:ExportConfig",
        "retain.generation.run:run_export",
        "Re-export a decompress run directory (sft / sharegpt / pt) without generating.",
    ),
    "serve": (
        "retain.generation.serve:ServeConfig",
        "retain.generation.serve:run_serve",
        "Serve a model over an OpenAI-compatible /v1/chat/completions endpoint.",
    ),
    "train": (
        "retain.training.config:TrainCommand",
        "retain.training.run:run_train",
        "Fine-tune from a YAML recipe (full | lora | loramoe), with checkpoints and --resume.",
    ),
    "eval": (
        "retain.evaluation.config:EvalConfig",
        "retain.evaluation.run:run_eval",
        "Measure domain score, knowledge probes, known-fact retention and KL drift.",
    ),
    "routing": (
        "retain.adapters.config:RoutingReportConfig",
        "retain.adapters.routing:run_routing_report",
        "LoRAMoE routing report: router mass per expert group and layer, by sample type.",
    ),
    "demo": (
        "retain.demo:DemoConfig",
        "retain.demo:run_demo",
        "The end-to-end experiment: TG corpus, four fine-tunes, forgetting table and report.",
    ),
}


def _load(spec: str) -> Any:
    module, _, attr = spec.partition(":")
    return getattr(importlib.import_module(module), attr)


def build_parser(commands: Sequence[str] | None = None):
    import jsonargparse
    from jsonargparse import ArgumentParser

    jsonargparse.set_parsing_settings(docstring_parse_attribute_docstrings=True)
    parser = ArgumentParser(prog="retain", description="Fine-tune without forgetting.", exit_on_error=False)
    sub = parser.add_subcommands(dest="command", required=True)
    for name in commands or COMMANDS:
        cfg_spec, _, help_text = COMMANDS[name]
        sp = ArgumentParser(description=help_text, exit_on_error=False)
        cfg_cls = _load(cfg_spec)  # a broken module is an error, never a silently missing command
        sp.add_class_arguments(cfg_cls, nested_key=None, as_positional=True, fail_untyped=False)
        sub.add_subcommand(name, sp, help=help_text)
    return parser


def config_from_namespace(cfg_cls: type, ns: Any) -> Any:
    """Instantiate ``cfg_cls`` from a jsonargparse namespace (nested dataclasses included)."""
    values = ns.as_dict() if hasattr(ns, "as_dict") else dict(ns)
    return _from_dict(cfg_cls, values)


def _from_dict(cls: type, values: dict) -> Any:
    import typing

    hints = typing.get_type_hints(cls)
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name not in values:
            continue
        v = values[f.name]
        t = hints.get(f.name)
        if dataclasses.is_dataclass(t) and isinstance(v, dict):
            v = _from_dict(t, v)
        kwargs[f.name] = v
    return cls(**kwargs)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    # Build only the requested subcommand's parser when we can: faster, and one broken module
    # cannot break the others.
    wanted = [a for a in argv if a in COMMANDS][:1] or None
    try:
        if wanted:
            cfg_cls = _load(COMMANDS[wanted[0]][0])
            argv = _bare_bool_flags(argv, cfg_cls)
            _check_config_files(argv, cfg_cls)
        parser = build_parser(wanted)
        try:
            ns = parser.parse_args(argv)
        except jsonargparse_error() as e:  # type: ignore[misc]
            raise RetainError(" ".join(str(e).split())) from None
        name = ns.command
        cfg_cls = _load(COMMANDS[name][0])
        cfg = config_from_namespace(cfg_cls, ns[name])
        run: Callable[[Any], Any] = _load(COMMANDS[name][1])
        rc = run(cfg)
        return int(rc or 0)
    except RetainError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        # A path the command could not use (exists as a file, a folder where a file goes, no permission,
        # full disk) that no RetainError check saw first: still one line naming it, not a traceback.
        from retain.utils.io import is_no_space, no_space

        if is_no_space(e):
            print(f"error: {no_space(e.filename or os.getcwd())}", file=sys.stderr)
            return 2
        if e.filename is None or not e.strerror:
            raise
        print(f"error: {e.filename}: {e.strerror.lower()}; check the path and re-run", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def _bare_bool_flags(argv: list[str], cfg_cls: type) -> list[str]:
    """``--flag`` alone means ``--flag true`` for a bool field (jsonargparse wants a value)."""
    flags = {f"--{f.name}" for f in dataclasses.fields(cfg_cls) if f.type in (bool, "bool")}
    out = []
    for i, a in enumerate(argv):
        out.append(a)
        nxt = argv[i + 1].lower() if i + 1 < len(argv) else ""
        if a in flags and nxt not in ("true", "false"):
            out.append("true")
    return out


def _check_config_files(argv: list[str], cfg_cls: type) -> None:
    """``--prompts x.yaml`` (a nested config given as a file): the file must exist, be UTF-8 and hold a
    YAML mapping; jsonargparse would only say "Unable to load config"."""
    import typing

    import yaml

    from retain.utils.io import read_text

    hints = typing.get_type_hints(cfg_cls)
    nested = {f"--{f.name}": hints[f.name] for f in dataclasses.fields(cfg_cls) if dataclasses.is_dataclass(hints[f.name])}
    for i, arg in enumerate(argv):
        flag, eq, value = arg.partition("=")
        if flag not in nested or (not eq and i + 1 >= len(argv)):
            continue
        value = value if eq else argv[i + 1]
        if value.lstrip().startswith(("{", "[")) or ": " in value or "\n" in value:
            continue  # inline YAML / JSON, parsed by jsonargparse
        keys = ", ".join(f.name for f in dataclasses.fields(nested[flag]))
        try:
            data = yaml.safe_load(read_text(value, "YAML file"))
        except RetainError as e:
            raise RetainError(f"{flag} {e} (a mapping of {keys})") from None
        except yaml.YAMLError as e:
            raise RetainError(f"{flag} {value}: invalid YAML ({getattr(e, 'problem', e)})") from None
        if not isinstance(data, dict):
            raise RetainError(f"{flag} {value}: holds a YAML {type(data).__name__}, expected a mapping of {keys}")


def jsonargparse_error():
    from jsonargparse import ArgumentError

    return ArgumentError


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
