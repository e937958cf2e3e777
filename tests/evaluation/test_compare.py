"""Item-by-item comparison of two evaluated models (what the demo's intervals are computed from)."""

from __future__ import annotations

import pytest

from retain.evaluation.compare import compare, outcomes


def _metrics(dom, probe_correct, probe_margin, kl=None):
    m = {"items": {"domain:skills": {"ids": [f"d{i}" for i in range(len(dom))], "correct": dom,
                                     "margin": [0.0] * len(dom)},
                   "arc_easy": {"ids": ["a", "b", "c", "d"], "correct": probe_correct, "margin": probe_margin}}}
    if kl is not None:
        m["drift_prompts"] = {"kl": kl, "tokens": [10, 30]}
    return m


KNOWN = {"arc_easy": ["a", "b", "c"]}  # "d" is not known by the base


def test_outcomes_keep_only_known_items_for_retention_and_margins():
    o = outcomes(_metrics([1, 0], [1, 0, 1, 1], [0.5, -0.1, 0.2, 0.3], kl=[0.1, 0.2]), KNOWN, {"arc_easy"})
    assert o["domain"][0] == {"d0": 1.0, "d1": 0.0}
    assert o["retention"][0] == {"arc_easy/a": 1.0, "arc_easy/b": 0.0, "arc_easy/c": 1.0}
    assert o["margin"][0] == {"arc_easy/a": 0.5, "arc_easy/b": -0.1, "arc_easy/c": 0.2}
    assert o["drift"] == ({"0": 0.1, "1": 0.2}, {"0": 10.0, "1": 30.0})
    # A generation probe has no margins: nothing goes into the margin metric.
    assert outcomes(_metrics([1], [1, 1, 1, 1], [1, 1, 1, 1]), KNOWN, set())["margin"][0] == {}


def test_against_the_base_by_hand():
    base = _metrics([0, 0, 1, 0], [1, 1, 1, 0], [0.30, 0.20, 0.10, -0.2])
    tuned = _metrics([1, 1, 1, 0], [1, 0, 1, 1], [0.25, -0.05, 0.10, 0.4], kl=[0.2, 0.6])
    c = compare(tuned, base, KNOWN, {"arc_easy"}, b_is_base=True)
    assert c["domain"]["diff"] == pytest.approx(0.5)                 # 3/4 - 1/4
    assert c["retention"]["diff"] == pytest.approx(2 / 3 - 1)       # kept 2 of 3 known
    assert c["margin"]["diff"] == pytest.approx((-0.05 - 0.25 + 0) / 3)
    assert c["drift"]["diff"] == pytest.approx((0.2 * 10 + 0.6 * 30) / 40)  # token-weighted, base KL = 0
    assert c["domain"]["p_mcnemar"] == pytest.approx(0.5)          # 2 discordant pairs, both one way
    assert (c["domain"]["gained"], c["domain"]["lost"]) == (2, 0) and c["retention"]["lost"] == 1
    assert c["behaviour"] is None and c["reply_change"] is None      # no chat probe in these metrics
    for row in c.values():
        assert row is None or row["lo"] <= row["diff"] <= row["hi"]


def test_behaviour_items_pair_apart_from_knowledge_with_reply_changes():
    base = _metrics([1], [1, 1, 1, 0], [0.3, 0.2, 0.1, 0.0])
    base["items"]["chat:triviaqa"] = {"ids": ["q1", "q2", "q3", "q4"], "correct": [1, 1, 0, 0], "margin": [1, 1, 0, 0],
                                      "prediction": ["Paris", "Ottawa", "Rome", "x"], "view": "behaviour",
                                      "changed": [0, 0, 0, 0]}
    tuned = _metrics([1], [1, 1, 1, 0], [0.3, 0.2, 0.1, 0.0])
    tuned["items"]["chat:triviaqa"] = {"ids": ["q1", "q2", "q3", "q4"], "correct": [1, 0, 1, 0], "margin": [1, 0, 1, 0],
                                       "prediction": ["Paris", "Answer: Toronto", "Madrid", "x"], "view": "behaviour",
                                       "changed": [0, 1, 1, 0]}
    known = {**KNOWN, "chat:triviaqa": ["q1", "q2"]}
    c = compare(tuned, base, known, {"arc_easy"}, b_is_base=True)
    assert c["retention"]["diff"] == pytest.approx(0.0)             # knowledge untouched
    assert c["behaviour"]["diff"] == pytest.approx(-0.5) and c["behaviour"]["lost"] == 1 and c["behaviour"]["n"] == 2
    assert c["reply_change"]["diff"] == pytest.approx(0.5) and c["reply_change"]["n"] == 4


def test_between_two_fine_tunes_is_paired_and_antisymmetric():
    a = _metrics([1, 0, 1, 1], [1, 1, 1, 0], [0.3, 0.2, 0.1, 0.0], kl=[0.1, 0.1])
    b = _metrics([0, 0, 1, 1], [0, 1, 1, 0], [0.1, 0.2, 0.1, 0.0], kl=[0.5, 0.7])
    ab, ba = compare(a, b, KNOWN, {"arc_easy"}), compare(b, a, KNOWN, {"arc_easy"})
    for m in ("domain", "retention", "margin", "drift"):
        assert ab[m]["diff"] == pytest.approx(-ba[m]["diff"])
    assert ab["drift"]["diff"] == pytest.approx(-(0.4 * 10 + 0.6 * 30) / 40)
    assert ab["drift"]["hi"] < 0  # every prompt drifts less: the interval excludes 0
    # No items on one side -> no interval, not a fake one.
    assert compare({"items": {}}, b, KNOWN, {"arc_easy"})["domain"] is None


def test_label_balance_tells_a_one_label_model_from_learning():
    from retain.evaluation.suite import label_balance

    gold = [1] * 47 + [0] * 53
    always_pos = label_balance([1] * 100, gold)  # accuracy 47 %, the class prior
    assert always_pos == {"balanced_accuracy": 0.5, "majority_share": 1.0}
    learned = label_balance([1] * 40 + [0] * 7 + [0] * 45 + [1] * 8, gold)
    assert learned["balanced_accuracy"] == (40 / 47 + 45 / 53) / 2 and learned["majority_share"] == 0.52
