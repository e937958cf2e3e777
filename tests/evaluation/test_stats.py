"""Confidence intervals and the McNemar test, against cases computed by hand."""

from __future__ import annotations

import math

import pytest

from retain.evaluation.stats import Interval, fmt_interval, mcnemar_exact, paired_bootstrap, verdict


def test_two_items_bootstrap_matches_its_enumerated_distribution():
    # Differences {1, 0}: a resample of 2 items has mean 0 (p 1/4), 0.5 (p 1/2) or 1 (p 1/4), so the
    # 2.5 % and 97.5 % quantiles are exactly 0 and 1, and the point estimate is 0.5.
    iv = paired_bootstrap([1, 0], [0, 0], n_boot=4000)
    assert iv.diff == 0.5 and iv.lo == 0.0 and iv.hi == 1.0 and iv.n == 2


def test_weighted_two_items_by_hand():
    # Weighted mean of differences [1, 0] with weights [3, 1] is 3/4; resamples give 1, 0 or 3/4.
    iv = paired_bootstrap([1.0, 0.0], [0.0, 0.0], weights=[3, 1], n_boot=4000)
    assert iv.diff == pytest.approx(0.75) and iv.lo == 0.0 and iv.hi == 1.0


def test_binary_interval_matches_the_normal_approximation():
    # 30 of 100 paired items improve, none get worse: diff 0.30, sd of the mean sqrt(0.3*0.7/100) = 0.0458,
    # so the 95 % interval is about 0.30 ± 1.96 * 0.0458 = [0.210, 0.390].
    a, b = [1] * 30 + [0] * 70, [0] * 100
    iv = paired_bootstrap(a, b, n_boot=4000)
    assert iv.diff == pytest.approx(0.30)
    assert iv.lo == pytest.approx(0.21, abs=0.015) and iv.hi == pytest.approx(0.39, abs=0.015)
    assert iv.excludes_zero


def test_pairing_removes_shared_item_variance_and_is_antisymmetric():
    # Both arms share a large item effect; the paired difference is a constant 0.1: a zero-width interval.
    base = [float(i % 7) for i in range(50)]
    iv = paired_bootstrap([x + 0.1 for x in base], base)
    assert iv.lo == pytest.approx(0.1) and iv.hi == pytest.approx(0.1)
    a, b = [1, 0, 1, 1, 0, 1, 0, 0, 1, 1], [0, 0, 1, 0, 1, 0, 0, 1, 0, 0]
    fwd, rev = paired_bootstrap(a, b, seed=3), paired_bootstrap(b, a, seed=3)
    assert fwd.diff == -rev.diff and fwd.lo == pytest.approx(-rev.hi) and fwd.hi == pytest.approx(-rev.lo)


def test_bootstrap_rejects_unpaired_input():
    with pytest.raises(ValueError, match="equally long"):
        paired_bootstrap([1, 0], [1])
    assert math.isnan(paired_bootstrap([], []).diff)


def test_mcnemar_exact_by_hand():
    # 5 discordant pairs all one way: p = 2 * (1/2)^5 = 0.0625.
    assert mcnemar_exact([1] * 5 + [0] * 3, [0] * 5 + [0] * 3) == pytest.approx(0.0625)
    # n01 = 3, n10 = 1: p = 2 * P[Bin(4, 1/2) <= 1] = 2 * 5/16 = 0.625.
    assert mcnemar_exact([1, 1, 1, 0, 1], [0, 0, 0, 1, 1]) == pytest.approx(0.625)
    assert mcnemar_exact([1, 0], [1, 0]) == 1.0


def test_wording_rule_follows_the_interval():
    assert verdict(Interval(0.05, 0.01, 0.09, 100), more="kept more", less="kept less") == "kept more"
    assert verdict(Interval(-0.05, -0.09, -0.01, 100), more="kept more", less="kept less") == "kept less"
    # A larger point estimate whose interval touches 0 is not a finding.
    assert verdict(Interval(0.08, -0.001, 0.16, 100), more="kept more", less="kept less") == "no detectable difference"
    assert verdict(None) == "no detectable difference"
    assert fmt_interval(Interval(0.123, 0.05, 0.2, 10), 100) == "+12.3 [+5.0, +20.0]"
