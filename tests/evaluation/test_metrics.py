"""Exact match, the known-fact criterion, retention arithmetic and the KL drift."""

from __future__ import annotations

import pytest
import torch

from retain.evaluation.config import EvalSuite
from retain.evaluation.drift import DRIFT_PROMPTS, drift_reference, kl_drift
from retain.evaluation.probes import exact_match, normalize_answer
from retain.evaluation.suite import BaseReference, evaluate_from_results, is_known


@pytest.mark.parametrize("pred, answers, ok", [
    (" The Beatles.", ["Beatles"], True),
    ("paris", ["Paris, France", "PARIS"], True),
    ("an apple", ["Apple"], True),
    ("Sunset  Boulevard!", ["Sunset Blvd", "sunset boulevard"], True),
    ("Paris is the capital", ["Paris"], False),
    ("", ["Paris"], False),
])
def test_exact_match_squad_normalization(pred, answers, ok):
    assert exact_match(pred, answers) is ok


def test_normalize_answer():
    assert normalize_answer("  The  Quick, brown fox's ") == "quick brown foxs"


def test_known_criterion():
    assert is_known({"correct": True, "correct_raw": True, "margin": 0.05}, "mc", 0.02)
    assert not is_known({"correct": True, "correct_raw": True, "margin": 0.01}, "mc", 0.02)
    assert not is_known({"correct": True, "correct_raw": False, "margin": 0.5}, "mc", 0.02)
    assert is_known({"correct": True, "margin": 1.0}, "gen", 0.02)
    assert not is_known({"correct": False, "margin": 0.0}, "gen", 0.02)


def test_retention_math():
    suite = EvalSuite.profile("tiny")
    ref = BaseReference(suite={}, items={}, known={"a": ["1", "2", "3", "4"], "b": ["x"], "c": []})
    results = {
        "a": [{"id": str(i), "correct": i in (1, 3, 5), "k": 4} for i in range(1, 7)],  # keeps 1 and 3 of 4
        "b": [{"id": "x", "correct": False}, {"id": "y", "correct": True}],      # keeps 0 of 1
        "c": [{"id": "z", "correct": True}],                                    # nothing known
        "domain:medmcqa": [{"id": "d", "correct": True}, {"id": "e", "correct": False}],
    }
    m = evaluate_from_results(results, ref, suite, {"kl_drift": 0.5})
    assert m["probes"]["a"]["retention"] == pytest.approx(2 / 4)
    assert m["probes"]["b"]["retention"] == 0.0 and m["probes"]["c"]["retention"] is None
    assert m["retention"] == pytest.approx(2 / 5)  # pooled: (2 + 0) / (4 + 1)
    assert m["probes"]["a"]["retention_chance"] == pytest.approx(0.25)  # 4-choice items
    assert m["probes"]["b"]["retention_chance"] == 0.0  # generation: no guessing floor
    assert m["retention_chance"] == pytest.approx(4 * 0.25 / 5)
    assert m["probes"]["a"]["accuracy"] == pytest.approx(3 / 6)
    assert m["probe_accuracy"] == pytest.approx((3 / 6 + 1 / 2 + 1) / 3)
    assert m["domain_score"] == 0.5 and m["domain"]["name"] == "medmcqa"
    assert m["kl_drift"] == 0.5


def test_kl_zero_for_base_positive_for_perturbed_and_exact_with_full_vocab(tiny, tiny_perturbed):
    model, tok = tiny
    other, _ = tiny_perturbed
    ref = drift_reference(model, tok, n_prompts=3, new_tokens=5, top_k=len(tok), batch_size=2)
    assert sum(ref.n_reply) > 0 and ref.mean_tail_mass < 1e-4
    assert kl_drift(model, tok, ref, batch_size=3) == pytest.approx(0.0, abs=1e-5)
    kl = kl_drift(other, tok, ref, batch_size=1)
    assert kl > 1e-3
    # full-vocabulary reference: the stored KL equals a direct computation on unpadded sequences
    total, n = 0.0, 0
    with torch.no_grad():
        for seq, r in zip(ref.seqs, ref.n_reply):
            ids = torch.tensor([seq])
            lp = torch.log_softmax(model(input_ids=ids).logits[0, -r - 1:-1], -1)
            lq = torch.log_softmax(other(input_ids=ids).logits[0, -r - 1:-1], -1)
            total += float((lp.exp() * (lp - lq)).sum())
            n += r
    assert kl == pytest.approx(total / n, rel=1e-3)
    # top-k coarse-graining is a lower bound of the exact KL
    small = drift_reference(model, tok, n_prompts=3, new_tokens=5, top_k=8, batch_size=2)
    assert 0 < kl_drift(other, tok, small) <= kl + 1e-6
    assert len(DRIFT_PROMPTS) == 32 and len(set(DRIFT_PROMPTS)) == 32
