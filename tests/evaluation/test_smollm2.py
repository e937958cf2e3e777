"""The real SmolLM2-135M-Instruct on a small suite: above-chance probes, consistent self-evaluation."""

from __future__ import annotations

import pytest


@pytest.mark.slow
def test_smollm2_small_suite(smollm2_path):
    from retain.evaluation.config import EvalSuite
    from retain.evaluation.suite import BaseReference, evaluate
    from retain.models import load_model

    model, tok = load_model(smollm2_path)
    # behaviour: a small sample (the default asks 1,000 chat questions twice: 5 minutes of the suite)
    # 24 ARC items (binomial noise about ±10 points): enough to tell SmolLM2 from chance (25 %)
    suite = EvalSuite(probes={"arc_easy": 24}, behaviour={"common_knowledge": 12}, domain="medmcqa", domain_items=8,
                      drift_prompts=3, drift_new_tokens=8)
    ref = BaseReference.build(model, tok, suite)
    base = ref.base_metrics
    # ARC-Easy has 4 choices (chance 25 %); SmolLM2-135M scores well above it in cloze format
    assert base["probes"]["arc_easy"]["accuracy"] > 0.33
    known = ref.known["arc_easy"]
    assert 3 <= len(known) <= base["probes"]["arc_easy"]["accuracy"] * 24
    assert ref.drift is not None and ref.drift.mean_tail_mass < 0.2
    again = evaluate(model, tok, suite, ref)
    assert again["retention"] == 1.0 and again["kl_drift"] == pytest.approx(0.0, abs=1e-6)
    assert again["probes"]["arc_easy"]["accuracy"] == base["probes"]["arc_easy"]["accuracy"]
    assert again["domain_score"] == base["domain_score"]
