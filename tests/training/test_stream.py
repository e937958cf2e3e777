"""The training stream's data order: per-epoch shuffles, and the within-step length sort."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from retain.errors import RetainError
from retain.training.trainer import STATE_FILE, StreamDataset, check_resume


def _features(lengths):
    return [{"input_ids": [1] * n, "labels": [1] * n, "sample_type": -1} for n in lengths]


LENGTHS = [5, 17, 3, 9, 12, 4, 30, 7, 21, 6, 2, 15]


def test_sorted_windows_hold_the_same_examples_longest_first():
    feats = _features(LENGTHS)
    plain = StreamDataset(feats, seed=3, length=40)
    sorted_ = StreamDataset(feats, seed=3, length=40, sort_window=8)
    for lo in range(0, 40, 8):  # the last window is full here: 40 = 5 * 8
        window = range(lo, min(lo + 8, 40))
        a = [plain.index(p) for p in window]
        b = [sorted_.index(p) for p in window]
        assert Counter(a) == Counter(b)  # the step trains on the same examples
        lens = [LENGTHS[i] for i in b]
        assert lens == sorted(lens, reverse=True)


def test_sorted_order_does_not_depend_on_reading_order():
    """A resume reads from the middle of the stream: position p must give the same example."""
    feats = _features(LENGTHS)
    forward = [StreamDataset(feats, 1, 30, sort_window=6).index(p) for p in range(30)]
    ds = StreamDataset(feats, 1, 30, sort_window=6)
    backward = {p: ds.index(p) for p in reversed(range(30))}
    assert forward == [backward[p] for p in range(30)]


def test_sorting_cuts_padding_of_the_forward_passes():
    """Forward passes of 2 cut from windows of 8: padded positions (B * longest) shrink when sorted."""
    feats = _features(LENGTHS)

    def positions(ds):
        idx = [ds.index(p) for p in range(48)]
        return sum(2 * max(LENGTHS[i] for i in idx[k:k + 2]) for k in range(0, 48, 2))

    real = sum(LENGTHS[StreamDataset(feats, 0, 48).index(p)] for p in range(48))
    plain, sorted_ = positions(StreamDataset(feats, 0, 48)), positions(StreamDataset(feats, 0, 48, sort_window=8))
    assert real <= sorted_ < plain


def test_resume_refuses_a_changed_sort_and_reads_old_checkpoints_as_unsorted(tmp_path):
    meta = {"batch_size": 4, "sort_by_length": True}
    (tmp_path / STATE_FILE).write_text(json.dumps({"step": 2, "batch_size": 4, "sort_by_length": False}))
    with pytest.raises(RetainError, match="sort_by_length was False when saved, now True"):
        check_resume(tmp_path, meta)
    (tmp_path / STATE_FILE).write_text(json.dumps({"step": 2, "batch_size": 4}))  # written before the key existed
    assert check_resume(tmp_path, {**meta, "sort_by_length": False})["step"] == 2
    with pytest.raises(RetainError, match="sort_by_length"):
        check_resume(tmp_path, meta)
