"""Where output goes: one rule for every command (set up once by the CLI, ``retain.cli.main``).

- Results (tables, "wrote ..." lines, the trained model's path) go to **stdout**, so they can be piped.
- Progress bars and status lines go to **stderr** through rich (:func:`status`, :func:`show_progress`);
  ``--quiet`` turns them off. Library code logs through ``logging`` (a module ``log``); the CLI
  configures logging once (INFO to stderr, WARNING with ``--quiet``).
- Warnings and errors go to stderr as one line (``warning: ...`` / ``error: ...``), even with ``--quiet``.
- Every retain progress bar is made by :func:`tqdm`. On a terminal it is tqdm's bar; when stderr is not a
  terminal (a log file, a pipe, CI) it is :class:`LineProgress`: plain lines with no ``\r`` and no cursor
  codes, one per tenth of the work (as the HF Trainer's logging steps), and the libraries' own bars
  (transformers' weight loading, the hub, datasets) are switched off, as with ``--quiet``.
- The chatter of libraries the user cannot act on stays out: httpx / httpcore log each request at INFO
  (``HTTP Request: POST ...``; the openai client on httpx2 / httpcore2), so their loggers are set to WARNING.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from typing import Any, Iterable

_quiet = False
_QUIET_ENV = ("TQDM_DISABLE", "HF_HUB_DISABLE_PROGRESS_BARS", "HF_DATASETS_DISABLE_PROGRESS_BARS")
_set_env: set[str] = set()  # the variables --quiet set (and will unset)
_applied = False  # whether the library progress bars are switched off
CHATTY_LOGGERS = ("httpx", "httpcore", "httpx2", "httpcore2")
"""HTTP clients that log every request at INFO (the openai client runs on httpx2 here); kept at WARNING."""


def configure(quiet: bool = False) -> None:
    """Called once at CLI entry: logging to stderr (INFO, or WARNING when quiet), progress on or off
    (library bars off too when stderr is not a terminal)."""
    global _quiet, _applied
    _quiet = quiet
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_OneLine())
    logging.basicConfig(handlers=[handler], level=logging.WARNING if quiet else logging.INFO, force=True)
    for name in CHATTY_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
    off = quiet or not terminal()
    if off == _applied:
        return
    _applied = off
    for var in _QUIET_ENV:  # library progress bars (tqdm defaults, hub, datasets) follow suit when imported
        if off and var not in os.environ:
            os.environ[var] = "1"
            _set_env.add(var)
        elif not off and var in _set_env:  # undo only what was set here, never the user's own setting
            os.environ.pop(var, None)
            _set_env.discard(var)
    if "transformers" in sys.modules:  # already imported (a test, a notebook): its bars read the env once
        from transformers.utils import logging as hf_logging

        (hf_logging.disable_progress_bar if off else hf_logging.enable_progress_bar)()


def terminal() -> bool:
    """Whether stderr (where bars go) is a terminal."""
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):  # replaced by an object without isatty, or closed
        return False


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
    """The one way retain makes a progress bar (on stderr), switched off by ``--quiet`` whatever ``disable``
    the caller gave: ``tqdm.auto.tqdm`` on a terminal, else :class:`LineProgress` (same arguments)."""
    from tqdm.auto import tqdm as _tqdm

    kwargs["disable"] = bool(kwargs.get("disable", False)) or _quiet
    if kwargs["disable"] or terminal():
        return _tqdm(*args, **kwargs)
    return LineProgress(*args, **kwargs)


class LineProgress:
    """A progress bar for a log: plain lines on stderr, never a ``\r`` or a cursor code.

    The tqdm calls retain's bars make (iterate, ``update``, ``set_postfix``, ``set_description``, ``close``,
    ``with``) print ``desc: n/total unit (p %), elapsed s, postfix`` each time another ``every`` of the total
    is done (a tenth) and once at ``close``. A transient bar (``leave=False``, e.g. one generate call inside
    a tree level) prints nothing at close, and with no total a line every ``every_s`` seconds."""

    def __init__(self, iterable: Iterable | None = None, desc: str | None = None, total: float | None = None,
                 leave: bool | None = True, unit: str = "it", every: float = 0.1, every_s: float = 30.0,
                 disable: bool = False, **_tqdm_only: Any):
        if total is None and iterable is not None and hasattr(iterable, "__len__"):
            total = len(iterable)
        self.iterable, self.desc, self.total, self.unit = iterable, desc or "", total, unit
        self.leave, self.every, self.every_s, self.disable = leave is not False, every, every_s, disable
        self.n = 0
        self.postfix = ""
        self._start = self._last_time = time.monotonic()
        self._last_n = 0
        self._closed = False

    def __iter__(self):
        try:
            for item in self.iterable:
                yield item
                self.update(1)
        finally:
            self.close()

    def __len__(self) -> int:
        return int(self.total or 0)

    def __enter__(self) -> "LineProgress":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def set_description(self, desc: str | None = None, refresh: bool = True) -> None:
        self.desc = desc or ""

    def set_postfix(self, ordered_dict: dict | None = None, refresh: bool = True, **kwargs: Any) -> None:
        items = {**(ordered_dict or {}), **kwargs}
        self.postfix = ", ".join(f"{k}={v}" for k, v in items.items())

    def update(self, n: float = 1) -> None:
        self.n += n
        now = time.monotonic()
        if self.total:  # crossed another tenth (every) of the total since the last line
            step = self.every * self.total
            due = int(self.n // step) > int(self._last_n // step)
        else:
            due = now - self._last_time >= self.every_s
        if due and self.n != self._last_n and not (self.total and self.n >= self.total):
            self._line(now)  # the last line is close()'s

    def refresh(self) -> None:
        """(tqdm's) nothing to redraw: lines are printed as the work passes each tenth."""

    def write(self, text: str) -> None:
        print(text, file=sys.stderr, flush=True)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self.leave and not self.disable:
            self._line(time.monotonic())

    def _line(self, now: float) -> None:
        self._last_n, self._last_time = self.n, now
        if self.disable:
            return
        done = f"{self.n:g}/{self.total:g} {self.unit} ({100 * self.n / self.total:.0f} %)" if self.total \
            else f"{self.n:g} {self.unit}"
        head = f"{self.desc}: " if self.desc else ""
        tail = f", {self.postfix}" if self.postfix else ""
        print(f"{head}{done}, {now - self._start:.0f} s{tail}", file=sys.stderr, flush=True)


def warn(message: str) -> None:
    """A one-line ``warning: ...`` on stderr (always printed)."""
    print(f"warning: {message}", file=sys.stderr, flush=True)
