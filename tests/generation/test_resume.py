"""Resumability: SIGKILL a real `retain decompress` subprocess at several points, resume, compare.

The fake backend is deterministic per conversation, so an interrupted-and-resumed run must produce
exactly the nodes of an uninterrupted one: same ids, questions and answers, none lost, none twice.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from retain.generation.config import DecompressConfig
from retain.generation.run import decompress
from retain.utils.io import read_json, read_jsonl

HERE = Path(__file__).resolve().parent
LEVELS = [[3, 32], [3, 32], [2, 32]]
ARGS = ["--levels", json.dumps(LEVELS), "--topics", '["science","history","cooking"]', "--chunk_size", "2",
        "--dedup_threshold", "0.9", "--progress", "false"]


def _cmd(run_dir: Path) -> list[str]:
    return [sys.executable, "-m", "retain.cli", "decompress", str(run_dir), *ARGS]


def _env(delay: float) -> dict:
    env = dict(os.environ, RETAIN_BACKEND_FACTORY="conftest:make_fake_backend", FAKE_BACKEND_DELAY=str(delay),
               HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    env["PYTHONPATH"] = os.pathsep.join([str(HERE), str(HERE.parents[1] / "src"), env.get("PYTHONPATH", "")])
    return env


def _lines(path: Path) -> int:
    return path.read_bytes().count(b"\n") if path.exists() else 0


def _kill_when(run_dir: Path, journal: str, at_least: int, timeout: float = 120.0) -> None:
    """Start the command; SIGKILL it once ``journal`` has >= ``at_least`` complete lines."""
    proc = subprocess.Popen(_cmd(run_dir), env=_env(0.03), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + timeout
    while _lines(run_dir / journal) < at_least:
        if proc.poll() is not None:
            raise AssertionError(f"finished before the kill point: rc={proc.returncode} {proc.stderr.read().decode()[-2000:]}")
        assert time.time() < deadline, "kill point never reached"
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert read_json(run_dir / "manifest.json")["status"] == "running"  # really killed mid-run


def _content(run_dir: Path) -> list[tuple]:
    return sorted((n["id"], n["question"], n["answer"], tuple(n["dropped"])) for n in read_jsonl(run_dir / "nodes.jsonl"))


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    """The same tree grown without interruption (in process, same fake backend)."""
    sys.path.insert(0, str(HERE))
    from tests.generation.conftest import FakeBackend

    run_dir = tmp_path_factory.mktemp("ref") / "run"
    cfg = DecompressConfig(run_dir=str(run_dir), levels=LEVELS, topics=["science", "history", "cooking"],
                           chunk_size=2, dedup_threshold=0.9, progress=False)
    return decompress(cfg, FakeBackend())


@pytest.mark.slow
def test_sigkill_at_several_points_then_resume(tmp_path, reference, monkeypatch):
    """Three processes killed at different points; the finishing resume runs in this process (the same
    command, without a new interpreter's imports)."""
    run_dir = tmp_path / "run"
    _kill_when(run_dir, "questions.jsonl", 1)  # level 1 asked, not answered
    _kill_when(run_dir, "nodes.jsonl", 6)  # in the middle of level 2's answers
    _kill_when(run_dir, "questions.jsonl", 8)  # in the middle of level 3's questions
    assert _decompress_here(monkeypatch, [str(run_dir), *ARGS], RETAIN_BACKEND_FACTORY="conftest:make_fake_backend",
                            FAKE_BACKEND_DELAY="0.0") == 0

    nodes = read_jsonl(run_dir / "nodes.jsonl")
    ids = [n["id"] for n in nodes]
    assert len(ids) == len(set(ids)), "a node was written twice"
    parents = [r["parent_id"] for r in read_jsonl(run_dir / "questions.jsonl")]
    assert len(parents) == len(set(parents)), "a parent was asked twice"
    assert _content(run_dir) == _content(reference)
    assert (run_dir / "sft.jsonl").read_text() == (reference / "sft.jsonl").read_text()
    m, ref_m = read_json(run_dir / "manifest.json"), read_json(reference / "manifest.json")
    assert m["status"] == "complete"
    assert [lv["kept"] for lv in m["levels"]] == [lv["kept"] for lv in ref_m["levels"]]
    assert not list(run_dir.glob("*.tmp")) and not list(run_dir.glob(".*.tmp"))


def test_truncated_last_line_is_ignored_and_repaired(tmp_path, reference):
    """What kill -9 during a write leaves: a partial last line. The resumed run rewrites that node."""
    sys.path.insert(0, str(HERE))
    from tests.generation.conftest import FakeBackend

    run_dir = tmp_path / "run"
    cfg = DecompressConfig(run_dir=str(run_dir), levels=LEVELS, topics=["science", "history", "cooking"],
                           chunk_size=2, dedup_threshold=0.9, progress=False)
    decompress(cfg, FakeBackend())
    lines = (run_dir / "nodes.jsonl").read_text().splitlines(keepends=True)
    qlines = (run_dir / "questions.jsonl").read_text().splitlines(keepends=True)
    # Roll back to the middle of level 2 and cut the last node line in half.
    (run_dir / "nodes.jsonl").write_text("".join(lines[:7]) + lines[7][: len(lines[7]) // 2])
    (run_dir / "questions.jsonl").write_text("".join(qlines[:4]) + qlines[4][:10])
    m = read_json(run_dir / "manifest.json")
    m["status"] = "running"
    (run_dir / "manifest.json").write_text(json.dumps(m))
    decompress(cfg, FakeBackend())
    assert _content(run_dir) == _content(reference)
    assert len(read_jsonl(run_dir / "nodes.jsonl")) == len(read_jsonl(reference / "nodes.jsonl"))


HF_ARGS = ["--levels", "[[3,6],[2,6]]", "--topics", '["science","history","cooking"]', "--chunk_size", "2",
           "--dedup_threshold", "1.0", "--progress", "false", "--backend.batch_size", "4", "--backend.device", "cpu",
           "--cut_answers", "keep",  # a random model ends no sentence within 6 tokens: keep its cut answers
           "--top_p", "1.0"]  # resuming does not depend on the nucleus cut; sorting 49k logits per step was half the time


def _hf_run(run_dir: Path, model: str, kill_at: int = 0) -> subprocess.CompletedProcess:
    """`retain decompress` on the real `hf` backend (tiny model) in a subprocess; killed at its ``kill_at``-th
    backend call."""
    env = _env(0.0)
    env.update(RETAIN_BACKEND_FACTORY="conftest:make_tiny_hf_backend", RETAIN_TEST_KILL_AT=str(kill_at),
               OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "retain.cli", "decompress", str(run_dir), "--model", model, *HF_ARGS]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)


def _decompress_here(monkeypatch, args: list[str], **env: str) -> int:
    """``retain decompress ARGS`` in this process, with this folder's test backends importable and ``env`` set:
    what a process that is not killed does, without the seconds of a new interpreter importing torch."""
    from retain.cli import main

    monkeypatch.syspath_prepend(str(HERE))
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return main(["decompress", *args])


def _hf_run_here(run_dir: Path, model: str, monkeypatch) -> int:
    """:func:`_hf_run` in this process, not killed."""
    return _decompress_here(monkeypatch, [str(run_dir), "--model", model, *HF_ARGS],
                            RETAIN_BACKEND_FACTORY="conftest:make_tiny_hf_backend", RETAIN_TEST_KILL_AT="0")


@pytest.mark.slow
def test_hf_backend_resume_after_kills_writes_the_uninterrupted_corpus(tmp_path, tiny_llama_path, monkeypatch):
    """8 backend calls (ask L1; answer 2+1; ask L2 2+1; answer 2+2+2): killed at the 3rd call of each of
    three processes, so each resumes mid-level; seeds follow the node ids, so the sampled text matches. The
    uninterrupted reference and the last, finishing resume run in this process."""
    ref = tmp_path / "ref"
    assert _hf_run_here(ref, tiny_llama_path, monkeypatch) == 0
    run_dir = tmp_path / "run"
    for _ in range(3):
        killed = _hf_run(run_dir, tiny_llama_path, kill_at=3)
        assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    assert 0 < len(read_jsonl(run_dir / "nodes.jsonl")) < len(read_jsonl(ref / "nodes.jsonl"))
    assert _hf_run_here(run_dir, tiny_llama_path, monkeypatch) == 0
    assert len(read_jsonl(ref / "nodes.jsonl")) == 9
    assert _content(run_dir) == _content(ref)
    assert [r["replies"] for r in read_jsonl(run_dir / "questions.jsonl")] == \
        [r["replies"] for r in read_jsonl(ref / "questions.jsonl")]
    assert (run_dir / "sft.jsonl").read_text() == (ref / "sft.jsonl").read_text()
