"""MkDocs hook: the option tables of the command pages, generated at build time from the CLI itself.

A page writes ``<!-- retain:options eval -->`` where the table of ``retain eval``'s options goes. The hook
builds that command's parser exactly as ``retain eval --help`` does (``retain.cli.COMMANDS`` ->
``retain.options.new_parser`` on the command's config dataclass) and renders one table per section
(flag, type, default, the field's docstring), so the docs cannot drift from the dataclasses.
``<!-- retain:commands -->`` (on ``commands/index.md``) is the table of every command and its one-line help. An unknown command
name fails the build. The module imports only torch-free config modules (fast).
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
if str(SRC) not in sys.path:  # `make docs` runs from the checkout; the package may not be installed
    sys.path.insert(0, str(SRC))

MARKER = re.compile(r"<!--\s*retain:(options|commands)\s*([\w-]*)\s*-->")
TYPE_DEFAULT = re.compile(r"\s*\((?P<required>required, )?type: (?P<type>.*?)(?:, default: (?P<default>.*))?\)\s*$", re.S)
HEADER = ["| option | type | default | description |", "|---|---|---|---|"]


def _cell(text: str) -> str:
    """One Markdown table cell: one line, pipes escaped."""
    text = " ".join(str(text).split()).replace("|", "\\|")
    return text.replace("<", "&lt;").replace(">", "&gt;")  # `<output_dir>` is text, not an HTML tag


def _code(text: str) -> str:
    """A code cell: one line; a pipe inside backticks does not split a Python-Markdown table cell."""
    text = " ".join(str(text).split())
    return f"`{text}`" if text else ""


def _row(action, fmt, command: str, positional_config: bool) -> str | None:
    """The table row of one parser action, or None for parser plumbing (``--help``, ``--model.help``, ...)."""
    if action.help == argparse.SUPPRESS or action.dest in ("help", "print_config") or action.dest.endswith(".help"):
        return None
    if type(action).__name__ == "_ActionConfigLoad":  # `--model CONFIG`: a section read from its own file
        return None
    helptext = fmt._expand_help(action) if action.help else ""
    m = TYPE_DEFAULT.search(helptext)
    doc = helptext[:m.start()] if m else helptext
    typ, default = (m["type"], "required" if m["required"] else (m["default"] or "")) if m else ("", "")
    if action.option_strings:
        flag = f"`{action.option_strings[0].rstrip('+')}`"
    else:  # a positional argument: `retain routing ADAPTER_DIR`
        flag = f"`{action.dest.upper()}` (positional)"
    if action.dest == "config":
        typ, default = "path", ""
        if positional_config:
            flag, doc = f"`RECIPE.yaml` or {flag}", f"{doc} The first argument: `retain {command} RECIPE.yaml`."
    return f"| {flag} | {_code(typ)} | {_code(default)} | {_cell(doc)} |"


def options_table(command: str) -> str:
    """Markdown tables of ``retain <command>``'s options: the command's own, then one per section (the
    ``--help`` groups, e.g. ``--optim.*``)."""
    from retain.cli import COMMANDS, CONFIG_POSITIONAL, _load
    from retain.options import new_parser

    if command not in COMMANDS:
        raise ValueError(f"<!-- retain:options {command} -->: no such command; choose one of {', '.join(COMMANDS)}")
    cls = _load(COMMANDS[command][0])
    parser = new_parser(cls, f"retain {command}", command not in CONFIG_POSITIONAL)
    fmt = parser._get_formatter()
    top: list[str] = []
    sections: list[str] = []
    for i, group in enumerate(parser._action_groups):
        rows = [r for a in group._group_actions
                if (r := _row(a, fmt, command, command in CONFIG_POSITIONAL)) is not None]
        if not rows:
            continue
        if i <= 2:  # positional arguments, options (--config), the command's own fields
            top += rows
        else:
            sections += [f"**{_cell(group.title)}**", "", *HEADER, *rows, ""]
    return "\n".join([*HEADER, *top, "", *sections, *_item_tables(cls, command)])


def _item_tables(cls: type, command: str) -> list[str]:
    """A table per option that is a list of dataclasses (``retain train``'s ``datasets``): the keys of one item."""
    import dataclasses
    import typing

    from retain.options import new_parser

    out: list[str] = []
    for name, tp in typing.get_type_hints(cls).items():
        args = typing.get_args(tp) if typing.get_origin(tp) is list else ()
        if not (args and dataclasses.is_dataclass(args[0])):
            continue
        parser = new_parser(args[0], f"retain {command} --{name}", False)
        fmt = parser._get_formatter()
        rows = [r for g in parser._action_groups for a in g._group_actions
                if a.dest != "config" and (r := _row(a, fmt, command, False)) is not None]
        rows = [r.replace("| `--", "| `", 1) for r in rows]  # keys of a YAML item, not flags
        out += [f"**Each item of `{name}`** (`{args[0].__name__}`)", "", HEADER[0].replace("option", "key"), HEADER[1],
                *rows, ""]
    return out


def commands_table() -> str:
    from retain.cli import COMMANDS

    rows = [f"| [`retain {name}`]({name}.md) | {_cell(help_text)} |" for name, (_, _, help_text) in COMMANDS.items()]
    return "\n".join(["| command | what it does |", "|---|---|", *rows, ""])


def on_page_markdown(markdown: str, page, config, files) -> str:
    def render(m: re.Match) -> str:
        if m[1] == "options":
            return options_table(m[2])
        return commands_table()

    return MARKER.sub(render, markdown)
