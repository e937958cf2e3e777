"""Every runnable example of the README and the docs site runs, as written, on the bundled SmolLM2 on a CPU.

The examples are the files under ``examples/`` (``*.sh``, ``*.py``); the site includes them with
``pymdownx.snippets`` and the README copies their bodies (``tests/test_docs.py`` checks both). They run
here in ``RUN_ORDER``, the order of the tutorials, in one scratch folder: a later example uses what an
earlier one wrote (``runs/lora/model`` from ``measure.sh``, ``runs/tg/sft.jsonl`` from ``tg_replay.sh``), as
a reader following the tutorials would. ``retain`` and ``python`` on the examples' PATH run this checkout's
code: ``python`` is this interpreter; ``retain`` is the client of a warm launcher (tests/launcher.py), which
runs each ``retain`` line as a fork of one process that imported torch and transformers once, in the line's
folder, with its variables, streams and exit code (without it, each line spends 3.5-4 s on imports).

Slow: together the examples train five tiny fine-tunes and evaluate twice; the three chains take about 52,
34 and 28 s of one core on the 2-core machine.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"

RUN_ORDER = [
    "measure.sh",        # runs/lora (a 4-step LoRA), runs/eval
    "evaluate_api.py",   # needs runs/lora/model
    "gate.sh",           # gates runs/eval (the saved evaluation)
    "serve.sh",          # serves runs/lora/model
    "tg_replay.sh",      # runs/tg, runs/tg_loramoe
    "export.sh",         # needs runs/tg
    "routing.sh",        # needs runs/tg_loramoe/model
    "trl_loramoe.py",    # needs runs/tg/sft.jsonl
    "loramoe_api.py",
    "backend_api.py",
    "multimodal.sh",
]
"""Every runnable example, in the order they run (tests/test_docs.py checks that no example is missing)."""

TIMEOUT_S = 1800
"""Per example; far above what any takes (a hung server or a deadlock fails instead of blocking CI)."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def example_env() -> dict[str, str]:
    """The environment the examples run in: this checkout's code, offline."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT / "src"), env.get("PYTHONPATH")) if p)
    env.setdefault("HF_HUB_OFFLINE", "1")
    return env


@pytest.fixture(scope="session")
def launcher():
    """A warm ``retain`` launcher (tests/launcher.py) for this worker's example chains: the socket path. The
    chains' ``retain`` lines start in 0.1 s instead of 3.5-4 s (measured: the three chains 146 -> 117 s)."""
    import shutil
    import tempfile

    folder = tempfile.mkdtemp(prefix="retain-launcher-")  # short: a Unix socket path has at most 107 bytes
    sock = os.path.join(folder, "retain.sock")
    proc = subprocess.Popen([sys.executable, str(Path(__file__).with_name("launcher.py")), sock], env=example_env(),
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "ready", "tests/launcher.py did not start"
        yield sock
    finally:
        proc.kill()
        proc.wait()
        shutil.rmtree(folder, ignore_errors=True)


def make_workdir(tmp_path_factory, launcher_socket: str | None = None) -> Path:
    """A scratch folder that sees the repository's examples/ (read only) and gets the examples' runs/. Its
    ``retain`` runs this checkout's CLI: through the warm launcher when one is given, else ``python -m retain``."""
    from tests.launcher import write_client

    work = tmp_path_factory.mktemp("examples")
    (work / "examples").symlink_to(EXAMPLES, target_is_directory=True)
    bin_dir = work / ".bin"
    bin_dir.mkdir()
    if launcher_socket:
        write_client(str(bin_dir / "retain"), launcher_socket)
    else:
        (bin_dir / "retain").write_text(f'#!/bin/sh\nexec "{sys.executable}" -m retain "$@"\n')
        (bin_dir / "retain").chmod(0o755)
    (bin_dir / "python").write_text(f'#!/bin/sh\nexec "{sys.executable}" "$@"\n')  # a symlink would leave the venv
    (bin_dir / "python").chmod(0o755)
    return work


def run_example(name: str, work: Path) -> subprocess.CompletedProcess:
    """Run ``examples/<name>`` from ``work`` as a reader would: ``bash examples/x.sh``; a ``.py`` example as
    ``python examples/x.py`` does, but in this process (:func:`run_python_example`)."""
    if name.endswith(".py"):
        return run_python_example(name, work)
    env = example_env()
    env["PATH"] = f"{work / '.bin'}{os.pathsep}{env.get('PATH', '')}"
    env["PORT"] = str(free_port())
    cmd = ["bash", f"examples/{name}"] if name.endswith(".sh") else [sys.executable, f"examples/{name}"]
    proc = subprocess.Popen(cmd, cwd=work, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)  # its own process group: a timeout kills the server too
    try:
        out, err = proc.communicate(timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def run_python_example(name: str, work: Path) -> subprocess.CompletedProcess:
    """``python examples/<name>`` from ``work``, run as ``__main__`` in this process (runpy), its stdout
    captured: a new interpreter would import torch, transformers and retain again (seconds per example) for
    no difference the examples can see. An exception fails the test with the example's traceback."""
    import contextlib
    import io
    import runpy

    buf, here = io.StringIO(), os.getcwd()
    os.chdir(work)  # contextlib.chdir needs Python 3.11; retain supports 3.10
    try:
        with contextlib.redirect_stdout(buf):
            runpy.run_path(f"examples/{name}", run_name="__main__")
    finally:
        os.chdir(here)
    return subprocess.CompletedProcess(["python", f"examples/{name}"], 0, buf.getvalue(), "")


def check_ran(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 0, f"{' '.join(result.args)} exited {result.returncode}\n{result.stderr[-4000:]}"
    return result.stdout


CHAINS = {
    "eval": ["measure.sh", "evaluate_api.py", "gate.sh", "serve.sh"],
    "tg": ["tg_replay.sh", "export.sh", "routing.sh", "trl_loramoe.py"],
    "api": ["loramoe_api.py", "backend_api.py", "multimodal.sh"],
}
"""RUN_ORDER cut where no example needs an earlier chain's files: each chain runs in its own scratch folder,
in order (one class each, so ``--dist loadscope`` can give the chains to different workers)."""
assert sum(CHAINS.values(), []) == RUN_ORDER


def check_example(name: str, work: Path) -> None:
    out = check_ran(run_example(name, work))
    runs = work / "runs"
    if name == "measure.sh":  # trained, evaluated against the base with the probe file, listed the flips
        report = json.loads((runs / "eval" / "eval.json").read_text())
        assert "file:capitals.jsonl" in json.dumps(report) and (runs / "lora" / "model").is_dir()
    elif name == "evaluate_api.py":
        assert "kept knowledge" in out and "'lo'" in out
    elif name == "gate.sh":
        assert json.loads((runs / "eval" / "gate.json").read_text())["passed"] is True and "passed" in out
    elif name == "serve.sh":  # the served fine-tune answered under its served name
        reply = json.loads(out)
        assert reply["model"] == "acme-lora" and reply["choices"][0]["message"]["content"].strip()
    elif name == "tg_replay.sh":
        assert (runs / "tg" / "sft.jsonl").read_text().strip()
        assert (runs / "tg_loramoe" / "model" / "adapter_model.safetensors").exists()
    elif name == "export.sh":
        assert (runs / "tg_export" / "pt.jsonl").read_text().strip()
    elif name == "routing.sh":
        assert (runs / "routing" / "routing.json").exists()
    elif name == "trl_loramoe.py":
        assert (runs / "trl" / "model" / "adapter_model.safetensors").exists()
    elif name == "loramoe_api.py":
        assert (runs / "loramoe_api" / "adapter_config.json").exists()
    elif name == "backend_api.py":
        assert out.strip()
    elif name == "multimodal.sh":
        assert (runs / "mllm" / "report.md").exists()


def run_chain(chain: str, tmp_path_factory, launcher_socket: str | None = None) -> None:
    """One chain's examples, in order, in one scratch folder (a later one uses an earlier one's runs/)."""
    work = make_workdir(tmp_path_factory, launcher_socket)
    for name in CHAINS[chain]:
        check_example(name, work)


# One class per chain: under `make test` (`--dist loadscope`) the two workers take different chains, which
# tests/conftest.py hands out first (LONGEST_UNITS).
@pytest.mark.slow
class TestEvalChain:
    def test_examples_run_as_written(self, tmp_path_factory, launcher):
        run_chain("eval", tmp_path_factory, launcher)


@pytest.mark.slow
class TestTGChain:
    def test_examples_run_as_written(self, tmp_path_factory, launcher):
        run_chain("tg", tmp_path_factory, launcher)


@pytest.mark.slow
class TestAPIChain:
    def test_examples_run_as_written(self, tmp_path_factory, launcher):
        run_chain("api", tmp_path_factory, launcher)


def test_the_ci_job_files_are_valid(tmp_path, monkeypatch):
    """What the GitHub Actions job of examples/ci/forgetting-gate.yml runs, checked without training: the
    recipe's keys and values (`retain train ... --print_config`), its gate, probe and data files."""
    from retain.data.formats import load_examples
    from retain.evaluation.gate import load_gate
    from retain.evaluation.probes import load_probe_file

    (tmp_path / "examples").symlink_to(EXAMPLES, target_is_directory=True)
    res = subprocess.run([sys.executable, "-m", "retain", "train", "examples/ci/recipe.yaml", "--print_config"],
                         cwd=tmp_path, env=example_env(), capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    assert "retain train examples/ci/recipe.yaml" in (EXAMPLES / "ci" / "forgetting-gate.yml").read_text()
    monkeypatch.chdir(tmp_path)
    for path in ("examples/ci/gate.yaml", "examples/ci/facts.jsonl", "examples/ci/data.jsonl"):
        assert path in res.stdout  # the recipe points at the files checked below
    assert load_gate("examples/ci/gate.yaml").rules
    assert load_probe_file("examples/ci/facts.jsonl").kind == "mc"
    assert len(load_examples("examples/ci/data.jsonl")) == 24


def test_the_launcher_passes_on_arguments_folder_streams_and_exit_code(launcher, tmp_path):
    """What the examples' ``retain`` goes through: the command runs in the caller's folder, writes to the
    caller's stdout and stderr, and its exit code comes back, as from ``python -m retain``."""
    from tests.launcher import write_client

    client = tmp_path / "retain"
    write_client(str(client), launcher)
    work = tmp_path / "work"
    work.mkdir()
    (work / "recipe.yaml").write_text((EXAMPLES / "lora.yaml").read_text())
    ok = subprocess.run([str(client), "train", "recipe.yaml", "--print_config"], cwd=work, env=example_env(),
                        capture_output=True, text=True, timeout=60)
    assert ok.returncode == 0 and "max_steps: 4" in ok.stdout, ok.stderr
    elsewhere = subprocess.run([str(client), "train", "recipe.yaml"], cwd=tmp_path, env=example_env(),
                               capture_output=True, text=True, timeout=60)
    assert elsewhere.returncode == 2 and elsewhere.stdout == ""
    assert elsewhere.stderr.startswith("error: ") and "recipe.yaml" in elsewhere.stderr
