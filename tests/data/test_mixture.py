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


def test_weights_that_leave_out_most_of_a_dataset_say_so_in_one_line(caplog):
    """0.8 / 0.2 over a 30-row dataset and a 2-row TG corpus trained on 8 of the 30 rows, with only a
    `mixture:` info line as a trace."""
    import re

    from retain.data.mixture import DROP_WARNING_SHARE

    srcs = [_src("datasets[0] task.jsonl", 30, 0.8), _src("datasets[1] tg.jsonl", 2, 0.2)]
    with caplog.at_level(logging.WARNING, logger="retain.data.mixture"):
        m = mix(srcs)
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert m.counts == {"datasets[0] task.jsonl": 8, "datasets[1] tg.jsonl": 2}
    assert warned == ["dataset datasets[0] task.jsonl: the weights use 8 of its 30 examples (73 % left out); to train "
                      "on all of them at the same shares set mixture.size: 38 with mixture.allow_repeat: true (the "
                      "other datasets then repeat examples), or raise its weight"]
    size = int(re.search(r"mixture.size: (\d+)", warned[0]).group(1))
    assert mix(srcs, size=size, allow_repeat=True).counts["datasets[0] task.jsonl"] == 30  # the advice keeps it all
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="retain.data.mixture"):
        mix([_src("a", 100, 0.5), _src("b", 80, 0.5)])  # 20 % of a left out: under the documented share
        mix(srcs, size=10)  # an explicit size is the user's choice
        mix([_src("a", 30), _src("b", 2)])  # no weights: every example once
    assert DROP_WARNING_SHARE == 0.25 and not [r for r in caplog.records if r.levelno == logging.WARNING]
