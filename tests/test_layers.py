"""The import structure of ``src/retain``: imports run one way, down the layers of DEVELOPERS.md.

Read from the source with ``ast`` (nothing is imported), every import counts: at module level, inside a
function, under ``TYPE_CHECKING``, and a module that ``importlib`` loads by a name written in full in a
string (``"retain.x.y"`` or ``"retain.x.y:attr"``, as ``cli.py``'s command table). A name taken from a
package's ``__init__`` that the ``__init__`` only loads lazily counts as an import of the submodule that
defines it. Edges are module -> module within ``retain``.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"

LAYERS: list[tuple[str, ...]] = [
    ("errors",),                             # RetainError (and the package face, retain/__init__.py)
    ("utils",),                              # io, console, seed, tables
    ("options", "assets", "data"),           # the options parser; offline model assets; samples and formats
    ("adapters",),                           # how a model is fine-tuned: registry < check < methods
    ("multimodal", "integrations"),          # the MLLM (a model + processor); retain's parts in TRL / HF Trainer
    ("models",),                             # the one loader: uses the adapters and the MLLM
    ("generation", "evaluation"),            # TG self-decompression (+ serve); probes, metrics, reports
    ("training",),                           # retain train (runs the evaluation gate)
    ("demo",),                               # the end-to-end experiment (demo/: common, text, mllm)
    ("cli",),                                # the command table: imports each command by name
]
"""Bottom to top. A module may import its own folder and the folders of lower layers; two folders of one
layer never import each other. The first name of a module's path under ``retain`` is its folder."""
FOLDER_ALIASES = {"": "errors", "demo_mllm": "demo", "__main__": "cli"}
"""The package face (``retain/__init__.py``) sits with errors; the older ``demo_mllm.py`` is the demo."""
NEVER: list[tuple[str, str, str]] = [
    ("retain.adapters.registry", "retain.adapters", "the registry is the bottom of adapters: methods register themselves"),
    ("retain.adapters.check", "retain.adapters.registry", "the file checks know no method; methods.py asks the registry"),
    ("retain.demo.text", "retain.demo.mllm", "the two demo scenarios share only demo/common.py"),
    ("retain.demo.mllm", "retain.demo.text", "the two demo scenarios share only demo/common.py"),
    ("retain.demo.common", "retain.demo.text", "common is under both scenarios"),
    ("retain.demo.common", "retain.demo.mllm", "common is under both scenarios"),
]
"""(module, prefix, why): ``module`` imports nothing whose name starts with ``prefix`` (beyond itself)."""
MODULE_STRING = re.compile(r"retain(\.[A-Za-z_]\w*)+(:[A-Za-z_]\w*)?")


def _modules() -> dict[str, Path]:
    mods = {}
    for path in sorted((SRC / "retain").rglob("*.py")):
        parts = list(path.relative_to(SRC).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        mods[".".join(parts)] = path
    return mods


def _top_level_names(tree: ast.Module) -> set[str]:
    names = set()
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names |= {n.id for t in targets for n in ast.walk(t) if isinstance(n, ast.Name)}  # a, b = ... too
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names |= {(a.asname or a.name).split(".")[0] for a in node.names}
    return names


def _graph() -> dict[str, dict[str, int]]:
    """module -> {imported module: first line}."""
    mods = _modules()
    trees = {name: ast.parse(path.read_text(encoding="utf-8"), str(path)) for name, path in mods.items()}
    defined = {name: _top_level_names(tree) for name, tree in trees.items()}

    def owner(package: str, name: str) -> str:
        # a name a package face defines or imports itself is the face's; one it loads lazily is its submodule's
        if name in defined[package]:
            return package
        children = [m for m in mods if m.rpartition(".")[0] == package and name in defined[m]]
        return children[0] if len(children) == 1 else package

    def module_of(dotted: str) -> str | None:
        while dotted and dotted not in mods:
            dotted = dotted.rpartition(".")[0]
        return dotted or None

    graph: dict[str, dict[str, int]] = {}
    for name, tree in trees.items():
        package = name if mods[name].name == "__init__.py" else name.rpartition(".")[0]
        edges: dict[str, int] = {}
        for node in ast.walk(tree):
            found: list[str | None] = []
            if isinstance(node, ast.Import):
                found = [module_of(a.name) for a in node.names if a.name.startswith("retain")]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    up = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                    base = ".".join(up + ([node.module] if node.module else []))
                if base.split(".")[0] != "retain":
                    continue
                for alias in node.names:
                    if f"{base}.{alias.name}" in mods:
                        found.append(f"{base}.{alias.name}")
                    elif base in mods:
                        found.append(owner(base, alias.name) if mods[base].name == "__init__.py" else base)
                    else:
                        found.append(module_of(base))
            elif isinstance(node, ast.Constant) and isinstance(node.value, str) and MODULE_STRING.fullmatch(node.value):
                target = node.value.partition(":")[0]
                found = [target] if target in mods else []
            for target in found:
                if target and target != name:
                    edges.setdefault(target, node.lineno)
        graph[name] = edges
    return graph


def _folder(module: str) -> str:
    first = module.split(".")[1] if "." in module else ""
    return FOLDER_ALIASES.get(first, first)


def _layer(folder: str) -> int:
    for i, layer in enumerate(LAYERS):
        if folder in layer:
            return i
    raise KeyError(folder)


def _where(graph, a: str, b: str) -> str:
    path = _modules()[a].relative_to(SRC.parent)
    return f"{path}:{graph[a][b]} imports {b}"


def _cycles(graph: dict[str, dict[str, int]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


@pytest.fixture(scope="module")
def graph():
    return _graph()


def test_the_graph_sees_function_level_and_string_imports(graph):
    # what the rules below rest on: cli.py loads every command by its name in a string, inside a function
    assert "retain.training.run" in graph["retain.cli"] and "retain.evaluation.run" in graph["retain.cli"]
    assert "retain.assets" in graph["retain.models"]  # imported inside _load_named only
    # a name that a package's __init__ loads lazily is its submodule's
    assert "retain.adapters.loramoe.model" in graph["retain.integrations.hf"]


def test_retain_train_never_imports_trl(graph):
    """``retain train`` runs on transformers' Trainer (retain.integrations.hf); TRL (0.3 s of imports in every
    training process) is for TRL scripts only. Function-level imports count here too."""
    seen, todo = set(), ["retain.training.run"]
    while todo:
        module = todo.pop()
        if module not in seen:
            seen.add(module)
            todo.extend(graph.get(module, {}))
    assert "retain.integrations.hf" in seen and "retain.integrations.trl" not in seen


def test_no_import_circle(graph):
    cycles = _cycles(graph)
    lines = []
    for comp in cycles:
        lines.append("circle: " + ", ".join(comp))
        lines += ["  " + _where(graph, a, b) for a in comp for b in graph[a] if b in comp]
    assert not cycles, "\n".join(lines)


def test_every_folder_has_a_layer(graph):
    folders = {_folder(m) for m in graph}
    unplaced = sorted(f for f in folders if not any(f in layer for layer in LAYERS))
    assert not unplaced, f"place {unplaced} in LAYERS (tests/test_layers.py) and in DEVELOPERS.md's Layers"


def test_imports_run_down_the_layers(graph):
    bad = [_where(graph, a, b) + f" ({_folder(a)} -> {_folder(b)})"
           for a in sorted(graph) for b in sorted(graph[a])
           if _folder(a) != _folder(b) and _layer(_folder(b)) >= _layer(_folder(a))]
    assert not bad, "imports that do not run down the layers (DEVELOPERS.md, Layers):\n" + "\n".join(bad)


def test_nothing_in_adapters_imports_models(graph):
    bad = [_where(graph, a, b) for a in graph if a.startswith("retain.adapters") for b in graph[a]
           if b == "retain.models"]
    assert not bad, "\n".join(bad)


@pytest.mark.parametrize("module, prefix, why", NEVER, ids=[f"{m}-{p}" for m, p, _ in NEVER])
def test_never(graph, module, prefix, why):
    if module not in graph:
        pytest.skip(f"{module} does not exist (yet)")
    bad = [_where(graph, module, b) for b in graph[module] if b == prefix or b.startswith(prefix + ".")]
    assert not bad, f"{why}:\n" + "\n".join(bad)


SCRIPTS = sorted((SRC.parent / "benchmarks").glob("*.py")) + sorted((SRC.parent / "examples").glob("*.py"))


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_every_retain_import_of_the_benchmarks_and_examples_resolves(script):
    """Benchmarks are not run by the suite: a module moved under them (``retain.adapters.routing`` ->
    ``retain.evaluation.routing``) would only show when someone runs one. Read with ``ast``, nothing imported."""
    mods, missing = _modules(), []
    for node in ast.walk(ast.parse(script.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            missing += [a.name for a in node.names if a.name.split(".")[0] == "retain" and a.name not in mods]
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "retain":
            if node.module not in mods:
                missing.append(node.module)
                continue
            names = _top_level_names(ast.parse(mods[node.module].read_text(encoding="utf-8")))
            lazy = "__getattr__" in names  # a lazy package face: its names are checked by the layer tests
            missing += [f"{node.module}.{a.name}" for a in node.names
                        if not lazy and a.name not in names and f"{node.module}.{a.name}" not in mods]
    assert not missing, f"{script.name}: imports that do not resolve: {missing}"
