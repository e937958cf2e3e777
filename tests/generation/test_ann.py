"""Approximate dedup (faiss IVF candidates, exact verification): finds the planted duplicates, never drops
a non-duplicate, and the auto switch picks it only above ``approx_above`` rows."""

from __future__ import annotations

import numpy as np
import pytest

from retain.errors import RetainError
from retain.generation.config import DecompressConfig
from retain.generation.dedup import DUP_SEMANTIC, KEPT, SURPLUS, SemanticIndex

from .test_dedup import brute_force


def near_duplicates(n_base: int, n_dup: int, dim: int = 96, seed: int = 0):
    """Unit rows: n_base random ones + n_dup copies at cosine 0.93-0.99 to a source placed before them."""
    rng = np.random.default_rng(seed)
    base = rng.normal(size=(n_base, dim))
    base /= np.linalg.norm(base, axis=1, keepdims=True)
    src = rng.choice(n_base, n_dup, replace=False)
    noise = rng.normal(size=(n_dup, dim))
    noise -= (noise * base[src]).sum(1, keepdims=True) * base[src]
    noise /= np.linalg.norm(noise, axis=1, keepdims=True)
    c = rng.uniform(0.93, 0.99, n_dup)[:, None]
    x = np.concatenate([base, c * base[src] + np.sqrt(1 - c**2) * noise]).astype(np.float32)
    is_dup = np.r_[np.zeros(n_base, bool), np.ones(n_dup, bool)]
    return x, is_dup


def test_approx_finds_planted_duplicates_and_never_drops_a_non_duplicate():
    pytest.importorskip("faiss")
    x, is_dup = near_duplicates(6000, 600)
    idx = SemanticIndex(0.92, x.shape[1], block=512, index="approx", ann=dict(dim=32, k=4))
    # two calls (as two tree levels): the second is searched against the first call's kept rows
    res = idx.add(x[:3000]) + idx.add(x[3000:])
    assert idx._ann is not None and idx._ann.size == idx.size
    status = np.array([s for s, _, _ in res])
    dropped = status == DUP_SEMANTIC
    assert dropped[is_dup].mean() >= 0.995
    assert not (dropped & ~is_dup).any()
    kept = idx.kept.numpy()
    for i in np.flatnonzero(dropped):  # every drop rests on a verified cosine >= threshold to a kept row
        _, of, sim = res[i]
        assert sim >= 0.92 and abs(float(x[i] @ kept[of]) - sim) < 1e-5
    assert list(status) == brute_force(x, 0.92)  # here, the same result as the exact greedy pass


def test_approx_respects_group_caps():
    pytest.importorskip("faiss")
    x, _ = near_duplicates(3000, 300, dim=48, seed=1)
    group = np.random.default_rng(2).integers(0, 200, len(x))
    cap = [12] * 200
    got = [s for s, _, _ in SemanticIndex(0.92, 48, block=256, index="approx").add(x, group=group, cap=cap)]
    assert got == brute_force(x, 0.92, group, cap)
    assert got.count(SURPLUS) > 0 and got.count(KEPT) > 0


def test_auto_switches_above_the_measured_size():
    pytest.importorskip("faiss")
    x, _ = near_duplicates(3000, 100, dim=48)
    small = SemanticIndex(0.92, 48, index="auto", approx_above=len(x) + 1)
    small.add(x)
    assert small._ann is None
    big = SemanticIndex(0.92, 48, index="auto", approx_above=2000)
    big.add(x[:1500])
    assert big._ann is None  # 1500 rows so far: exact
    big.add(x[1500:])
    assert big._ann is not None and big._ann.size == big.size  # crossed 2000: the kept rows moved in


def test_approx_without_faiss_is_one_error_line(monkeypatch):
    from retain.generation import ann

    monkeypatch.setattr(ann, "available", lambda: False)
    x, _ = near_duplicates(200, 10, dim=16)
    with pytest.raises(RetainError, match="faiss is not installed"):
        SemanticIndex(0.92, 16, index="approx").add(x)
    assert SemanticIndex(0.92, 16, index="auto", approx_above=0).add(x)  # auto falls back to exact


def test_config_checks_the_index_option(tmp_path):
    with pytest.raises(RetainError, match="--dedup_index"):
        DecompressConfig(run_dir=str(tmp_path), dedup_index="fast")  # type: ignore[arg-type]
    default = DecompressConfig(run_dir=str(tmp_path))
    assert "dedup_index" not in default.fingerprint()  # run dirs written before the option still resume
    assert DecompressConfig(run_dir=str(tmp_path), dedup_index="approx").fingerprint_hash() != default.fingerprint_hash()
