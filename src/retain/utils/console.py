"""Where output goes: one rule for every command (set up once by the CLI, ``retain.cli.main``).

- Results (tables, "wrote ..." lines, the trained model's path) go to **stdout**, so they can be piped.
- Progress bars and status lines go to **stderr** through rich (:func:`status`, :func:`show_progress`);
  ``--quiet`` turns them off. Library code logs through ``logging`` (a module ``log``); the CLI
  configures logging once (INFO to stderr, WARNING with ``--quiet``).
- Warnings and errors go to stderr as one line (``warning: ...`` / ``error: ...``), even with ``--quiet``.
"""

from __future__ import annotations

import logging
import os
import sys

_quiet = False
_QUIET_ENV = ("TQDM_DISABLE", "HF_HUB_DISABLE_PROGRESS_BARS", "HF_DATASETS_DISABLE_PROGRESS_BARS")
_set_env: set[str] = set()  # the variables --quiet set (and will unset)
_applied = False  # whether the library progress bars are switched off


def configure(quiet: bool = False) -> None:
    """Called once at CLI entry: logging to stderr (INFO, or WARNING when quiet), progress on or off."""
    global _quiet, _applied
    _quiet = quiet
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_OneLine())
    logging.basicConfig(handlers=[handler], level=logging.WARNING if quiet else logging.INFO, force=True)
    if quiet == _applied:
        return
    _applied = quiet
    for var in _QUIET_ENV:  # library progress bars (tqdm defaults, hub, datasets) follow suit when imported
        if quiet and var not in os.environ:
            os.environ[var] = "1"
            _set_env.add(var)
        elif not quiet and var in _set_env:  # undo only what --quiet set, never the user's own setting
            os.environ.pop(var, None)
            _set_env.discard(var)
    if "transformers" in sys.modules:  # already imported (a test, a notebook): its bars read the env once
        from transformers.utils import logging as hf_logging

        (hf_logging.disable_progress_bar if quiet else hf_logging.enable_progress_bar)()


class _OneLine(logging.Formatter):
    """INFO as the bare message; WARNING and above as ``warning: ...`` / ``error: ...`` like the CLI's own."""

    def format(self, record: logging.LogRecord) -> str:
        msg = record.getMessage()
        if record.levelno >= logging.ERROR:
            return f"error: {msg}"
        return f"warning: {msg}" if record.levelno >= logging.WARNING else msg


def quiet() -> bool:
    return _quiet


def show_progress(wanted: bool = True) -> bool:
    """Whether to draw a progress bar: the config asked for one and ``--quiet`` was not given."""
    return wanted and not _quiet


def stderr_console():
    """The rich console of progress and status lines (stderr)."""
    from rich.console import Console

    return Console(stderr=True, quiet=_quiet)


def stdout_console():
    """The rich console of results (stdout), wide enough for tables when stdout is a pipe (a pipe
    reports 80 columns)."""
    from rich.console import Console

    return Console(width=max(Console().width, 132))


def status(message: str) -> None:
    """A status line on stderr (rich markup allowed); silent with ``--quiet``."""
    stderr_console().print(message, highlight=False)


def result(message: str) -> None:
    """A result line on stdout (always printed)."""
    print(message, flush=True)


def tqdm(*args, **kwargs):
    """``tqdm.auto.tqdm`` (on stderr), switched off by ``--quiet`` whatever ``disable`` the caller gave."""
    from tqdm.auto import tqdm as _tqdm

    kwargs["disable"] = bool(kwargs.get("disable", False)) or _quiet
    return _tqdm(*args, **kwargs)


def warn(message: str) -> None:
    """A one-line ``warning: ...`` on stderr (always printed)."""
    print(f"warning: {message}", file=sys.stderr, flush=True)
