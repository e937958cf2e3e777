"""Mixing weights: shares of the final mixture, sampling without replacement, clear errors."""

from __future__ import annotations

import logging
from collections import Counter

import pytest

from retain.data.mixture import Source, mix
from retain.errors import RetainError


def _src(name, n, weight=None):
    return Source(name, [{"src": name, "i": i} for i in range(n)], weight)


def test_weights_are_shares_and_size_uses_no_repeats():
    m = mix([_src("med", 2000, 3), _src("tg", 300, 1)], seed=1)  # the docstring's worked example
    c = Counter(e["src"] for e in m.examples)
    assert c == {"med": 900, "tg": 300} and m.counts == {"med": 900, "tg": 300}
    assert m.shares == pytest.approx({"med": 0.75, "tg": 0.25})
    assert len({(e["src"], e["i"]) for e in m.examples}) == 1200  # no example twice


def test_explicit_size_rounds_to_exact_total_and_is_seeded():
    srcs = [_src("a", 100, 1), _src("b", 100, 1), _src("c", 100, 1)]
    m = mix(srcs, size=100, seed=0)
    assert len(m.examples) == 100 and sorted(m.counts.values()) == [33, 33, 34]
    assert m.examples == mix(srcs, size=100, seed=0).examples
    assert m.examples != mix(srcs, size=100, seed=1).examples


def test_exhausted_source_errors_unless_repeat_allowed():
    srcs = [_src("med", 2000, 0.75), _src("tg", 300, 0.25)]
    with pytest.raises(RetainError, match=r"tg: its share needs 500 examples but it has 300.*allow_repeat"):
        mix(srcs, size=2000)
    m = mix(srcs, size=2000, allow_repeat=True)
    uses = Counter(e["i"] for e in m.examples if e["src"] == "tg")
    assert sum(uses.values()) == 500 and set(uses.values()) == {1, 2} and len(uses) == 300


def test_no_weights_means_concatenation():
    m = mix([_src("a", 7), _src("b", 3)])
    assert m.counts == {"a": 7, "b": 3} and len(m.examples) == 10


@pytest.mark.parametrize(
    "weights, needle",
    [((1, -1), "finite number >= 0"), ((0, 0), "all weights are 0"), ((1, None), "weight missing"),
     ((float("nan"), 1), "finite number")],
)
def test_bad_weights(weights, needle):
    with pytest.raises(RetainError, match=needle):
        mix([_src("a", 10, weights[0]), _src("b", 10, weights[1])])


def test_unnormalised_weights_warn_and_zero_weight_drops_source(caplog):
    with caplog.at_level(logging.WARNING):
        m = mix([_src("a", 10, 2), _src("b", 10, 0), _src("c", 10, 2)])
    assert "sum to 4" in caplog.text
    assert m.counts == {"a": 10, "b": 0, "c": 10}
