"""Compile to bytecode the installed modules that retain and its tests import, and nothing else.

``pip install`` compiles every ``.py`` file it installs. For retain's environment that is 19,400 files (308 MB of
source: transformers' 400 model folders, sympy, pandas, scipy...), most never imported, and it took 2/3 of
``make install`` (48 s of one core of the 2-core CI machine, compiled serially). ``make install`` therefore
installs with ``pip install --no-compile`` and runs this script: it imports what a retain process imports
(every ``retain`` module, the model classes the bundled and test models use; on the other core, a second
process imports what needs no torch: the servers' and the test and docs tooling), and writes the bytecode of
each module imported into the usual ``__pycache__`` (about 4,700 files, 12 s).

A module imported later and missed here is compiled at its first import as usual, except where the environment
sets ``PYTHONDONTWRITEBYTECODE`` (this machine's image does): there Python writes no bytecode at import, and a
missed module is compiled again in every process. The script sets ``sys.dont_write_bytecode = False`` for
itself, so its own imports write theirs whatever the environment says.

Usage: ``python tools/compile_bytecode.py`` (prints one line: how many files, how long).
"""

from __future__ import annotations

import importlib
import importlib.util
import pkgutil
import py_compile
import subprocess
import sys
import time
import warnings
from pathlib import Path

EXTRA_MODULES = (
    # loaded by name at run time: the bundled model (llama), the test models, the multimodal path
    *(
        f"transformers.models.{m}.{kind}_{m}"
        for kind in ("configuration", "modeling")
        for m in ("llama", "qwen2", "mistral", "gemma", "gpt2", "bert", "llava", "clip", "idefics3", "efficientnet",
                  "timm_wrapper")
    ),
    "transformers.models.auto.modeling_auto",
    "transformers.trainer",
    "trl",
    "accelerate.commands.launch",
    "torch.distributed.run",
    "lm_eval.evaluator",
    "lm_eval.models.huggingface",
    "lm_eval.tasks",
)
"""Imported after every ``retain`` module, in the main process (they import torch)."""

SIDE_MODULES = (
    "pandas",
    "pyarrow",
    "openai.resources.chat",
    "fastapi",
    "uvicorn.main",
    "uvicorn.loops.auto",
    "uvicorn.protocols.http.auto",
    "requests",
    "matplotlib.pyplot",
    # the test suite and the documentation build (tests/test_docs.py)
    "pytest",
    "xdist.dsession",
    "xdist.remote",
    "mkdocs.commands.build",
    "mkdocs.contrib.search",
    "material.plugins.search.plugin",
    "mkdocstrings",
    "mkdocstrings_handlers.python",
    "pymdownx.snippets",
)
"""Imported at the same time by a second process (``--side``): what needs no torch, on the other core."""


def _import(names) -> None:
    for name in names:
        try:
            importlib.import_module(name)
        except Exception:  # an optional extra not installed: nothing to compile for it
            pass


def _import_everything() -> None:
    """Import every ``retain`` module and :data:`EXTRA_MODULES`; a module that fails to import is skipped."""
    import retain
    from retain.utils.startup import import_ml_stack

    import_ml_stack()
    _import([m.name for m in pkgutil.walk_packages(retain.__path__, "retain.") if not m.name.endswith("__main__")])
    _import(EXTRA_MODULES)


def imported_sources(roots: tuple[str, ...]) -> list[str]:
    """Source files (``.py``) of the modules imported so far that lie under one of ``roots``."""
    files = {getattr(m, "__file__", None) or "" for m in list(sys.modules.values())}
    return sorted(f for f in files if f.endswith(".py") and f.startswith(roots))


def compile_missing(paths: list[str]) -> int:
    """Write the bytecode of each path that has none yet; returns how many have bytecode now."""
    done = 0
    for path in paths:
        cfile = importlib.util.cache_from_source(path)
        try:
            if not Path(cfile).exists():
                py_compile.compile(path, cfile=cfile, doraise=True)
            done += 1
        except (py_compile.PyCompileError, OSError):
            pass
    return done


def main(argv: list[str]) -> int:
    start = time.perf_counter()
    sys.dont_write_bytecode = False  # each import writes what it compiles, whatever PYTHONDONTWRITEBYTECODE says
    side = argv == ["--side"]
    helper = None if side else subprocess.Popen([sys.executable, __file__, "--side"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if side:
            _import(SIDE_MODULES)
        else:
            _import_everything()
    roots = (sys.prefix,)
    if not side:
        import retain

        roots += (str(Path(retain.__file__).parent),)  # and retain's own source (never the standard library)
    paths = imported_sources(roots)
    done = compile_missing(paths)  # those imported before the flag above, or whose write failed
    if helper is not None:
        helper.wait()
        print(f"bytecode for {done} of {len(paths)} modules imported here, and those of {len(SIDE_MODULES)} "
              f"packages imported beside, in {time.perf_counter() - start:.1f} s")
    return 0  # a file that could not be written only costs time


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
