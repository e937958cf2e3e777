"""The ``retain`` command line: one table maps command names to (config dataclass, run function).

- Each command's options are the fields of one typed dataclass, parsed by :mod:`retain.options`
  (jsonargparse): its field types and attribute docstrings are ``--help``, nested dataclasses are
  ``--section.key`` flags, ``--config FILE`` reads the same keys from YAML, and fields without a default
  are positional arguments. One source of truth: the dataclass is also the Python API.
- ``--quiet`` (anywhere on the line) keeps only results (stdout) and warnings/errors (stderr); the
  output rule is in :mod:`retain.utils.console`, set up once here, with the warning filters
  (:func:`quiet_library_warnings`).
- Config classes live in torch-free ``config.py`` modules so ``--help`` is fast; the run function is
  imported only when its command runs.
- A :class:`~retain.errors.RetainError` prints as one line ``error: ...`` and exits with status 2; so does
  an ``OSError`` about a path (a file where a folder goes, no permission, a full disk) that no check
  caught first. Other exceptions are bugs and keep their traceback.

To add a command: write ``FooConfig`` and ``run_foo(cfg) -> int | None``, add one row to ``COMMANDS``.
"""

from __future__ import annotations

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
        "retain.evaluation.config:RoutingReportConfig",
        "retain.evaluation.routing:run_routing_report",
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
    """The top-level parser (``retain --help``): one subcommand per row of ``COMMANDS``."""
    from jsonargparse import ArgumentParser

    from retain.options import new_parser

    parser = ArgumentParser(prog="retain", description="Fine-tune without forgetting.", exit_on_error=False)
    parser.add_argument("-q", "--quiet", action="store_true",
                        help="Only results on stdout and errors/warnings on stderr (no progress or status).")
    sub = parser.add_subcommands(dest="command", required=True)
    for name in commands or COMMANDS:
        cfg_spec, _, help_text = COMMANDS[name]
        cfg_cls = _load(cfg_spec)  # a broken module is an error, never a silently missing command
        sub.add_subcommand(name, new_parser(cfg_cls, f"retain {name}", name not in CONFIG_POSITIONAL), help=help_text)
    return parser


LIBRARY_MODULES = r"(transformers|peft|trl|accelerate|datasets|huggingface_hub|torch|jsonargparse)(\.|$)"
"""Libraries whose ``FutureWarning`` about their own calls into each other the user cannot act on (seen:
PEFT asks a transformers model for ``is_gradient_checkpointing``, renamed in transformers, on every LoRA
load: ``retain train``, ``eval``, ``serve``, ``decompress`` of a LoRA folder). A warning that retain's own
code causes names a retain module and still shows."""


def quiet_library_warnings() -> None:
    """The one place warning filters are set: once, at CLI entry (a library never sets them)."""
    import warnings

    warnings.filterwarnings("ignore", category=FutureWarning, module=LIBRARY_MODULES)


CONFIG_POSITIONAL = {"train"}
"""Commands whose first positional argument is their config file (``retain train recipe.yaml``)."""

ML_COMMANDS = {"train", "serve", "routing", "demo", "decompress"}
"""Commands that always load a model: the ML stack is imported first with the collector paused
(:func:`retain.utils.startup.import_ml_stack`, about 2 s sooner). ``retain eval`` does it itself once it knows
it will load one (reading or gating a saved evaluation loads none, and stays a 0.2 s command)."""


def main(argv: Sequence[str] | None = None) -> int:
    from retain.options import parse
    from retain.utils import console

    argv = list(sys.argv[1:] if argv is None else argv)
    quiet_library_warnings()
    console.configure(quiet=any(a in ("-q", "--quiet") for a in argv))
    # Only the requested command's parser is built: faster, and one broken module cannot break the others.
    name = next((a for a in argv if not a.startswith("-")), None)
    try:
        if name not in COMMANDS:
            try:
                build_parser().parse_args(argv)  # prints the help, or says which command is unknown
            except jsonargparse_error() as e:  # type: ignore[misc]
                raise RetainError(" ".join(str(e).split())) from None
            return 2
        args = [a for i, a in enumerate(argv) if i != argv.index(name)]
        cfg = parse(_load(COMMANDS[name][0]), args, prog=f"retain {name}", config_positional=name in CONFIG_POSITIONAL)
        if name in ML_COMMANDS:  # before the run function's module, which may import torch
            from retain.utils.startup import import_ml_stack

            import_ml_stack()
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


def jsonargparse_error():
    from jsonargparse import ArgumentError

    return ArgumentError


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
