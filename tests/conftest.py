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


def pytest_collection_modifyitems(config, items):
    """Under xdist, the files that hold a ``slow`` test are handed out first (file order and the order within a
    file are kept otherwise): the long files start at once and the short ones fill the end, so the two workers
    finish together instead of one running a long file alone at the end."""
    if XDIST_WORKER:
        slow_files = {it.path for it in items if it.get_closest_marker("slow")}
        items.sort(key=lambda it: it.path not in slow_files)


def pytest_collection_finish(session):
    gc.freeze()
    gc.enable()


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
