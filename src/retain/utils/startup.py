"""Start a command that uses the ML stack about 2 s sooner: import it with the garbage collector paused.

Importing torch, transformers, peft and datasets creates about 0.5 M objects that live as long as the process.
CPython's cyclic collector runs a full pass each time the long-lived heap has grown by a quarter, and each pass
walks all of them: about nine passes during these imports, 2 of the 5.5 s a ``retain train`` spends before its
first step (measured on the 2-core CI machine, Python 3.11: 5.4-5.7 s with the collector on, 3.5-3.8 s paused).
Every later full pass walks them again; accelerate calls ``gc.collect()`` at each ``Trainer.train``.

:func:`import_ml_stack` imports the stack with the collector paused, then freezes what exists (``gc.freeze``:
the collector skips those objects from then on) and turns the collector back on. It changes no result: frozen
objects are the imported modules, which are never freed anyway. The CLI calls it for the commands that load a
model (``retain.cli.ML_COMMANDS``; ``retain eval`` once it knows it will); a script may call it first thing.
"""

from __future__ import annotations

import gc
import importlib

ML_STACK = ("torch", "transformers", "transformers.modeling_utils", "peft", "datasets")
"""What every model-loading command imports (``transformers.modeling_utils`` is the bulk, behind a lazy import)."""

_done = False


def import_ml_stack() -> None:
    """Import :data:`ML_STACK` with the collector paused, then ``gc.freeze()``; once per process."""
    global _done
    if _done:
        return
    _done = True
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        for name in ML_STACK:
            importlib.import_module(name)
    finally:
        gc.freeze()
        if was_enabled:
            gc.enable()
