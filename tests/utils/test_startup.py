"""import_ml_stack: the stack imported, the collector frozen over it and left as it was found; once per process."""

from __future__ import annotations

import gc
import importlib
import sys
import types

import pytest

from retain.cli import COMMANDS, ML_COMMANDS
from retain.utils import startup


@pytest.mark.parametrize("enabled", [True, False])
def test_imports_the_stack_freezes_it_and_restores_the_collector(monkeypatch, enabled):
    monkeypatch.setattr(startup, "_done", False)
    seen = []
    real = importlib.import_module
    spy = types.SimpleNamespace(import_module=lambda name: (seen.append((name, gc.isenabled())), real(name))[1])
    monkeypatch.setattr(startup, "importlib", spy)
    was = gc.isenabled()
    (gc.enable if enabled else gc.disable)()
    gc.unfreeze()  # (the suite froze its own heap after collection: tests/conftest.py)
    try:
        startup.import_ml_stack()
        assert gc.isenabled() is enabled  # as found
        startup.import_ml_stack()  # once per process: the second call imports nothing
    finally:
        (gc.enable if was else gc.disable)()
    assert [name for name, _ in seen] == list(startup.ML_STACK)
    assert not any(on for _, on in seen)  # every import ran with the collector paused
    assert all(name in sys.modules for name in startup.ML_STACK)
    assert gc.get_freeze_count() > 100_000  # the stack's objects are frozen (about 0.5 M)


def test_ml_commands_are_commands():
    assert ML_COMMANDS <= set(COMMANDS) and "eval" not in ML_COMMANDS  # eval decides itself (saved runs load no model)
