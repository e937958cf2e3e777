"""Shared fixtures. Area-specific fixtures live in tests/<area>/conftest.py.

- ``smollm2_path``: the real SmolLM2-135M-Instruct, converted once into the retain cache
  (``RETAIN_CACHE`` is respected, so CI re-uses the converted folder between runs).
- ``tiny_llama_path``: a randomly initialised 2-layer Llama saved to a temp folder, with SmolLM2's
  tokenizer (fast to load, exercises the same code paths).
"""

from __future__ import annotations

import gc
import json
import os

import pytest

gc.disable()
"""Collection imports torch, transformers and every test module: with the collector paused, then frozen once
collected (:func:`pytest_collection_finish`), as ``retain.utils.startup.import_ml_stack`` does for a command.
Measured on the 2-core machine: the workers spent 70 s of CPU in full collections that walked those modules
(accelerate calls ``gc.collect()`` at every ``Trainer.train``)."""

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

XDIST_WORKER = bool(os.environ.get("PYTEST_XDIST_WORKER"))
"""Under pytest-xdist (`make test`: `-n 2`) the workers already fill the cores: each runs torch (and every
subprocess it starts) on one thread, set before torch is imported; more would oversubscribe the machine."""
if XDIST_WORKER:
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    os.environ.setdefault("MKL_NUM_THREADS", "1")


LONGEST_UNITS = (
    "tests/test_examples.py::TestEvalChain", "tests/generation/test_resume.py", "tests/training/test_accelerate.py",
    "tests/test_examples.py::TestTGChain", "tests/training/test_train.py", "tests/evaluation/test_smollm2.py",
    "tests/test_examples.py::TestAPIChain", "tests/test_models.py", "tests/evaluation/test_gate.py",
    "tests/integrations/test_trl.py", "tests/training/test_resume_ddp.py", "tests/training/test_cli.py",
    "tests/generation/test_prefix_sharing.py", "tests/generation/test_serve.py", "tests/demo/test_mllm.py",
)
"""The suite's longest work units (a file; a test class for the example chains), longest first: 55 s down to
15 s in a ``-n 2`` run's ``--durations`` on the 2-core machine (2026-12-07). Only the order is used; a unit not listed
counts as short. Update it when ``--durations`` shows a new long file."""


def _unit(item) -> str:
    return "::".join(item.nodeid.split("::")[:2]) if item.cls is not None else item.nodeid.split("::")[0]


def pytest_collection_modifyitems(config, items):
    """Under xdist, longest-first scheduling: the units of :data:`LONGEST_UNITS` in its order, then the other
    files holding a ``slow`` test, then the rest (the collection order kept within each group). ``make test``
    passes ``--dist loadscope --no-loadscope-reorder`` so xdist hands units out in this order (by default it
    reorders them by their number of tests). Seen without it: the example chains started last and one worker
    ran them alone for 35 s after the other had finished."""
    if not XDIST_WORKER:
        return
    root = config.rootpath
    stale = [u for u in LONGEST_UNITS if not (root / u.split("::")[0]).is_file()]
    if stale:
        raise pytest.UsageError(f"tests/conftest.py LONGEST_UNITS names {stale[0]}, which does not exist: update the list")
    rank = {u: i for i, u in enumerate(LONGEST_UNITS)}
    slow_units = {_unit(it) for it in items if it.get_closest_marker("slow")}
    items.sort(key=lambda it: rank.get(_unit(it), len(rank) + (_unit(it) not in slow_units)))


TEST_STACK = ("matplotlib.pyplot", "trl")
"""Imported with the ML stack before the freeze: what the tests' own runs import on first use (plots, TRL)."""


def pytest_configure(config):
    if getattr(config.option, "dist", "no") != "no" and not XDIST_WORKER:
        gc.enable()  # the xdist controller collects nothing: only the workers hold the stack


def pytest_collection_finish(session):
    import importlib

    from retain.utils.startup import import_ml_stack

    import_ml_stack()  # torch, transformers' model code, peft, datasets: 3,000 modules the tests import anyway
    for name in TEST_STACK:
        importlib.import_module(name)
    gc.freeze()
    gc.enable()


REFREEZE_ABOVE = 50_000
"""Long-lived objects the collector walks at each full pass before the heap is frozen again."""


@pytest.hookimpl(trylast=True)
def pytest_runtest_teardown(item, nextitem):
    """After each test file (its fixtures torn down): when modules imported by its tests left many long-lived
    objects (transformers loads a model's code, accelerate and matplotlib their own, on first use), collect
    once and freeze them too. Measured with the stack already frozen at collection (tests/training and three
    more files, one process): full passes 5.6 -> 3.5 s."""
    if nextitem is not None and nextitem.path == item.path:
        return
    if len(gc.get_objects(generation=2)) > REFREEZE_ABOVE:
        gc.collect()
        gc.freeze()


@pytest.fixture(scope="session")
def smollm2_path() -> str:
    from retain.assets import smollm2_path as _p

    return str(_p())


@pytest.fixture(scope="session")
def tiny_llama_path(tmp_path_factory, smollm2_path) -> str:
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    tok = AutoTokenizer.from_pretrained(smollm2_path)
    cfg = LlamaConfig(
        vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
        tie_word_embeddings=True,
    )
    model = LlamaForCausalLM(cfg)
    out = tmp_path_factory.mktemp("tiny_llama")
    model.save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)
    return str(out)


@pytest.fixture
def bundled_smollm2(tmp_path, monkeypatch, tiny_llama_path):
    """A machine whose bundled model (``smollm2``) is the tiny Llama: ``$RETAIN_CACHE`` points at a fresh folder
    that holds it as the converted SmolLM2. Returns that model folder (what ``smollm2`` resolves to)."""
    import shutil

    from retain.assets import SMOLLM2_DIRNAME

    folder = tmp_path / "retain_cache" / "models" / SMOLLM2_DIRNAME
    shutil.copytree(tiny_llama_path, folder)
    monkeypatch.setenv("RETAIN_CACHE", str(tmp_path / "retain_cache"))
    return folder


@pytest.fixture
def small_disk(tmp_path):
    """``make(size)`` -> a folder on a fresh tmpfs of ``size`` (e.g. "64k"), unmounted afterwards; to
    test a full disk. Needs root and a working ``mount -t tmpfs``; the test is skipped otherwise.
    ``grow(folder, size)`` remounts it bigger ("free space and re-run")."""
    import subprocess

    if os.geteuid() != 0:
        pytest.skip("needs root to mount a tmpfs")
    mounted = []

    class Disk:
        @staticmethod
        def make(size: str, name: str = "disk"):
            path = tmp_path / name
            path.mkdir()
            r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True)
            if r.returncode != 0:
                pytest.skip(f"cannot mount a tmpfs: {r.stderr.decode().strip()}")
            mounted.append(path)
            return path

        @staticmethod
        def grow(path, size: str) -> None:
            subprocess.run(["mount", "-o", f"remount,size={size}", str(path)], check=True)

    yield Disk
    for path in mounted:
        subprocess.run(["umount", "-l", str(path)], check=False)


ONE_THREAD_AREAS = frozenset({"adapters", "training", "integrations"})
"""Test folders whose tiny-model steps are dominated by small ops: they stall in thread barriers when
the machine is oversubscribed, so one torch thread is faster and steadier there (every folder under xdist)."""


@pytest.fixture(autouse=True)
def _one_torch_thread(request):
    if request.path.parent.name not in ONE_THREAD_AREAS and not XDIST_WORKER:
        yield
        return
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="session")
def tiny_mllm(smollm2_path):
    """(model, processor): random FastVLM/LLaVA, EfficientNet width 0.25, 2-layer Llama, 64 px -> 4 image tokens."""
    from retain.multimodal.model import tiny_mllm as build

    return build(smollm2_path)


@pytest.fixture()
def tg_corpus(tmp_path):
    """A 6-dialogue TG corpus (chat messages JSONL) for the demo smoke runs of both scenarios."""
    path = tmp_path / "tg.jsonl"
    with open(path, "w") as f:
        for i in range(6):
            msgs = [{"role": "user", "content": f"What is fact {i}?"},
                    {"role": "assistant", "content": f"Fact {i} is a thing."}]
            f.write(json.dumps({"messages": msgs}) + "\n")
    return path
