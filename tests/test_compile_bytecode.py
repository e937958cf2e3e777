"""tools/compile_bytecode.py: ``make install`` installs with ``pip --no-compile`` and compiles what is imported."""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _tool():
    spec = importlib.util.spec_from_file_location("compile_bytecode", ROOT / "tools" / "compile_bytecode.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_only_imported_sources_under_the_roots_get_bytecode(tmp_path, monkeypatch):
    tool = _tool()
    pkg = tmp_path / "site"
    pkg.mkdir()
    (pkg / "used_mod.py").write_text("X = 1\n")
    (pkg / "unused_mod.py").write_text("Y = 2\n")
    monkeypatch.syspath_prepend(str(pkg))
    monkeypatch.setattr(sys, "dont_write_bytecode", True)  # as under PYTHONDONTWRITEBYTECODE: the import writes none
    import used_mod  # noqa: F401

    try:
        paths = tool.imported_sources((str(pkg),))
        assert paths == [str(pkg / "used_mod.py")]  # not the unused file, not the standard library
        cache = Path(importlib.util.cache_from_source(paths[0]))
        assert not cache.exists()
        assert tool.compile_missing(paths) == 1
        assert cache.exists()
        assert not Path(importlib.util.cache_from_source(str(pkg / "unused_mod.py"))).exists()
        assert tool.compile_missing(paths) == 1  # already there: kept, counted
    finally:
        sys.modules.pop("used_mod", None)


def test_make_install_compiles_what_it_installed_without_bytecode():
    """Every pip install of the Makefile skips compiling, and the install then runs the tool: one without the
    other would leave every process compiling its imports (or pip compiling 19 k files)."""
    recipe = (ROOT / "Makefile").read_text()
    installs = [line for line in recipe.splitlines() if re.search(r"pip install .*-e |pip install .*(torch|-r )", line)]
    assert installs and all("--no-compile" in line for line in installs)
    assert "$(BIN)/python tools/compile_bytecode.py" in recipe
