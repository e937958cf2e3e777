"""Answer filters: empty answers and degenerate repetition loops; fluent text passes."""

from __future__ import annotations

from retain.generation.filters import EMPTY, REPETITION, answer_drop_reasons, repeat_ratio

PROSE = (
    "Photosynthesis is the process by which green plants, algae and some bacteria turn light energy into "
    "chemical energy. In the chloroplasts, chlorophyll absorbs mostly red and blue light; the energy splits "
    "water molecules, releasing oxygen, and drives the synthesis of ATP and NADPH. The Calvin cycle then uses "
    "them to fix carbon dioxide into sugars, which the plant stores as starch or uses to build cellulose."
)


def test_empty_answers_are_dropped():
    assert answer_drop_reasons("") == [EMPTY]
    assert answer_drop_reasons(" \n\t ") == [EMPTY]


def test_fluent_answers_pass():
    assert repeat_ratio(PROSE) < 0.1
    assert answer_drop_reasons(PROSE) == []
    assert answer_drop_reasons("Paris.") == []  # short answers are never judged repetitive


def test_repetition_loops_are_dropped():
    loop = PROSE[:200] + " " + "and the cell is the cell is the cell " * 20
    assert repeat_ratio(loop) > 0.5
    assert answer_drop_reasons(loop) == [REPETITION]
    assert answer_drop_reasons("!" * 300) == [REPETITION]  # a loop without spaces
    assert answer_drop_reasons("a" * 64) == []  # too short to judge


def test_threshold_is_configurable():
    half = PROSE + " " + "the cell is " * 25
    r = repeat_ratio(half)
    assert 0.2 < r < 0.9
    assert answer_drop_reasons(half, max_repeat_ratio=r - 0.01) == [REPETITION]
    assert answer_drop_reasons(half, max_repeat_ratio=min(1.0, r + 0.01)) == []
