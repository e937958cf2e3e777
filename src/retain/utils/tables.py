"""Tables: one markdown renderer and one rich renderer for every report (demo, eval, routing)."""

from __future__ import annotations


def md_table(header: list[str], cells: list[list[str]]) -> str:
    """A GitHub markdown table."""
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(c) + " |" for c in cells]
    return "\n".join(lines) + "\n"


def print_rich_table(title: str, header: list[str], cells: list[list[str]], console=None) -> None:
    """The same table in the terminal (first column left-aligned, numbers right-aligned)."""
    from rich.table import Table

    from retain.utils.console import stdout_console

    t = Table(title=title)
    for i, h in enumerate(header):
        t.add_column(h, justify="left" if i == 0 else "right")
    for c in cells:
        t.add_row(*c)
    (console or stdout_console()).print(t)
