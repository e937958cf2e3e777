"""The documentation: the site builds with ``mkdocs build --strict`` (a broken link, a missing page, a
missing API object or an unknown command in an option table fails), and every code block that claims to
run is an example file that tests/test_examples.py runs.

The rule for code blocks (README.md and docs/): ``bash`` and ``python`` blocks run. On the site each is
exactly one include of a file under examples/ (``--8<-- "examples/x.sh"``); in the README each is the body of
such a file (the file without its leading comment lines and ``set -euo pipefail``), and so is each ``yaml``
block. Commands that are not run by the tests (a GPU, a server of your own, your own files, hours) use
``shell``, ``text`` and the like.
"""

from __future__ import annotations

import html
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.test_examples import RUN_ORDER

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
FENCE = re.compile(r"^(?P<indent> *)```(?P<lang>[\w-]*)[^\n]*\n(?P<body>.*?)^(?P=indent)```\s*$", re.M | re.S)
RUNNABLE = ("bash", "python")
INCLUDE = re.compile(r'^--8<-- "(examples/[^"]+)"$')


def fences(text: str) -> list[tuple[str, str]]:
    """(language, body) of every fenced code block, the body dedented by its fence's indent."""
    out = []
    for m in FENCE.finditer(text):
        indent = len(m["indent"])
        body = "\n".join(line[indent:] for line in m["body"].splitlines())
        out.append((m["lang"], body.strip("\n")))
    return out


def example_body(path: Path) -> str:
    """An example file as the README shows it: without its leading comment lines and ``set -euo pipefail``."""
    lines = path.read_text().splitlines()
    i = 0
    while i < len(lines) and (lines[i].startswith("#") or lines[i].strip() in ("", "set -euo pipefail")):
        i += 1
    return "\n".join(lines[i:]).strip("\n")


def runnable_examples() -> set[str]:
    return {p.name for p in EXAMPLES.iterdir() if p.suffix in (".sh", ".py")}


def test_every_runnable_example_is_run_by_the_example_tests():
    assert sorted(RUN_ORDER) == sorted(runnable_examples())


def test_readme_code_blocks_are_the_example_files():
    bodies = {example_body(p): p.name for p in EXAMPLES.rglob("*") if p.is_file()}
    blocks = fences((ROOT / "README.md").read_text())
    checked = [b for lang, b in blocks if lang in (*RUNNABLE, "yaml")]
    assert checked, "the README shows no runnable block"
    for body in checked:
        assert body in bodies, f"this README block is not the body of a file under examples/:\n{body}"
    shown = {bodies[b] for b in checked}
    assert {"measure.sh", "tg_replay.sh", "trl_loramoe.py", "serve.sh", "gate.sh", "multimodal.sh"} <= shown


def test_readme_links_point_at_files_that_exist():
    text = (ROOT / "README.md").read_text()
    links = [m for m in re.findall(r"\]\(([^)\s]+)\)", text) if not re.match(r"[a-z]+://|#", m)]
    assert links
    missing = [link for link in links if not (ROOT / link.split("#")[0]).exists()]
    assert not missing, f"README links to files that do not exist: {missing}"


def test_site_runnable_blocks_include_example_files():
    pages = sorted((ROOT / "docs").rglob("*.md"))
    included = set()
    for page in pages:
        for lang, body in fences(page.read_text()):
            if lang not in RUNNABLE:
                continue
            m = INCLUDE.match(body)
            assert m, f"{page.relative_to(ROOT)}: a {lang} block must be one `--8<-- \"examples/...\"` line:\n{body}"
            assert (ROOT / m[1]).is_file(), f"{page.relative_to(ROOT)}: {m[1]} does not exist"
            included.add(Path(m[1]).name)
    assert included <= runnable_examples() and included >= {"measure.sh", "serve.sh", "routing.sh"}


def test_site_builds_strict(tmp_path):
    pytest.importorskip("mkdocs", reason="the docs tools are not installed: `make install` installs .[test,docs]")
    pytest.importorskip("material", reason="mkdocs-material is not installed: `make install` installs .[test,docs]")
    pytest.importorskip("mkdocstrings", reason="mkdocstrings is not installed: `make install` installs .[test,docs]")
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1",
           "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT / "src"), os.environ.get("PYTHONPATH")) if p)}
    site = tmp_path / "site"
    res = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(ROOT / "mkdocs.yml"),
                          "-d", str(site)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-5000:]
    eval_page = (site / "commands" / "eval" / "index.html").read_text()
    assert "--probe_prompt" in eval_page and "zeroshot" in eval_page  # the option table, generated from the CLI
    api = (site / "reference" / "models" / "index.html").read_text()
    assert "load_model" in api and "name_or_path" in api  # mkdocstrings rendered the signature and docstring
    measure = html.unescape(re.sub(r"<[^>]+>", "", (site / "tutorials" / "measure" / "index.html").read_text()))
    assert example_body(EXAMPLES / "measure.sh") in measure  # the example file, included as it is
