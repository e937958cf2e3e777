"""Dedup correctness: exact keys, blockwise greedy == brute force (both code paths), caps, MiniLM threshold."""

from __future__ import annotations

import numpy as np
import pytest

from retain.generation.dedup import DUP_EXACT, DUP_SEMANTIC, KEPT, SURPLUS, QuestionIndex, SemanticIndex
from retain.generation.prompts import dedup_key


def brute_force(x: np.ndarray, t: float, group=None, cap=None) -> list[str]:
    """One-by-one greedy reference with the full similarity matrix."""
    sims = x @ x.T
    kept, out, counts = [], [], {}
    for i in range(len(x)):
        g = None if group is None else group[i]
        if cap is not None and counts.get(g, 0) >= cap[g]:
            out.append(SURPLUS)
        elif kept and sims[i, kept].max() >= t:
            out.append(DUP_SEMANTIC)
        else:
            kept.append(i)
            out.append(KEPT)
            counts[g] = counts.get(g, 0) + 1
    return out


def planted(n_base: int, n_dup: int, dim: int = 64, noise: float = 0.25, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    base = rng.normal(size=(n_base, dim)).astype(np.float32)
    dup = base[rng.integers(0, n_base, n_dup)] + noise * rng.normal(size=(n_dup, dim)).astype(np.float32)
    x = np.concatenate([base, dup])[rng.permutation(n_base + n_dup)]
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.mark.parametrize("prune", [False, True])
@pytest.mark.parametrize("block", [16, 10_000])
def test_blockwise_equals_brute_force(prune, block):
    x = planted(250, 150, dim=256)
    for t in (0.7, 0.9, 0.97):
        ref = brute_force(x, t)
        idx = SemanticIndex(t, x.shape[1], block=block, rank=16, exact_below=0 if prune else 10**18, ref_block=block * 3)
        # two calls: the second batch is judged against the first batch's kept rows too
        got = [s for s, _, _ in idx.add(x[:170])] + [s for s, _, _ in idx.add(x[170:])]
        assert got == ref
        assert idx.size == ref.count(KEPT)
    assert 0 < ref.count(DUP_SEMANTIC) < 150 + 1


def test_duplicate_points_at_a_kept_row_above_threshold():
    x = planted(100, 60, dim=32)
    idx = SemanticIndex(0.8, 32, block=16, rank=8, exact_below=0)
    res = idx.add(x)
    kept = idx.kept.numpy()
    for i, (status, of, sim) in enumerate(res):
        if status == DUP_SEMANTIC:
            assert sim >= 0.8 and abs(float(x[i] @ kept[of]) - sim) < 1e-5


def test_caps_per_group_match_brute_force():
    x = planted(200, 100, dim=48, seed=1)
    group = np.random.default_rng(2).integers(0, 30, len(x))
    cap = [4] * 30
    ref = brute_force(x, 0.85, group, cap)
    idx = SemanticIndex(0.85, 48, block=37, rank=8, exact_below=0)
    assert [s for s, _, _ in idx.add(x, group=group, cap=cap)] == ref
    assert ref.count(SURPLUS) > 0


def test_no_pairwise_matrix_for_large_inputs(monkeypatch):
    """Blockwise: the biggest similarity tile is block x block, whatever n is."""
    seen = []
    orig = SemanticIndex._pairs

    def spy(self, a, b, *args, **kw):
        seen.append(a.shape[0] * b.shape[0])
        return orig(self, a, b, *args, **kw)

    monkeypatch.setattr(SemanticIndex, "_pairs", spy)
    x = planted(1500, 300, dim=32)
    SemanticIndex(0.9, 32, block=128, rank=8, ref_block=256).add(x)
    assert max(seen) <= 128 * 256 < len(x) ** 2 / 90


def test_exact_keys_and_exact_only_mode():
    assert dedup_key("What is DNA?") == dedup_key("  what is  dna ")
    # Letters of every script are part of a generated question's key; the evaluation sets' split key is
    # ASCII only (frozen, it decides the splits), hence two names for two rules.
    from retain.data.olmo_eval import split_key

    assert dedup_key("Où est Zürich ?") == "où est zürich" and split_key("Où est Zürich ?") == "o est z rich"
    idx = QuestionIndex(threshold=1.0)
    v = idx.add(["What is DNA?", "what is dna", "What is RNA?", "What is DNA?"])
    assert [x.status for x in v] == [KEPT, DUP_EXACT, KEPT, DUP_EXACT]
    assert v[1].of == 0 and idx.texts == ["What is DNA?", "What is RNA?"]
    v = idx.add(["WHAT IS RNA?!", "What is a gene?"], group=[0, 0], cap=[1])
    assert [x.status for x in v] == [DUP_EXACT, KEPT]


@pytest.fixture(scope="module")
def minilm():
    from retain.generation.dedup import load_embedder

    return load_embedder("minilm")


def test_minilm_embeddings_are_unit_and_batch_independent(minilm):
    texts = ["What is the boiling point of water?", "Who wrote Hamlet?", "How do vaccines train the immune system?"]
    a = minilm(texts)
    b = np.concatenate([minilm([t]) for t in texts])
    assert a.shape == (3, 384)
    np.testing.assert_allclose(np.linalg.norm(a, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(a, b, atol=1e-5)


def test_minilm_threshold_behaviour(minilm):
    q = ["What is the capital city of France?", "What's the capital of France?",
         "How do volcanoes erupt?", "What causes a volcano to erupt?", "Why is the sky blue?"]
    strict = [v.status for v in QuestionIndex(0.99, minilm).add(q)]
    default = [v.status for v in QuestionIndex(0.9, minilm).add(q)]
    loose = [v.status for v in QuestionIndex(0.5, minilm).add(q)]
    assert strict == [KEPT] * 5
    assert default[0] == KEPT and default[1] == DUP_SEMANTIC and default[4] == KEPT
    # lowering the threshold only ever removes more
    assert sum(s == KEPT for s in loose) <= sum(s == KEPT for s in default) <= sum(s == KEPT for s in strict)
    # preload restores the kept set without re-judging it
    idx = QuestionIndex(0.9, minilm)
    idx.preload(["What is the capital city of France?"])
    assert idx.add(["What's the capital of France?"])[0].status == DUP_SEMANTIC
