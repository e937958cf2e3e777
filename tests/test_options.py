"""The one options parser (retain.options): renamed keys, sources named in errors, argv conventions."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import ClassVar

import pytest

from retain.errors import RetainError
from retain.options import from_mapping, parse


@dataclass
class Section:
    RENAMED: ClassVar[dict[str, str]] = {"old_weight": "weight"}

    weight: float = 0.1
    """A weight."""


@dataclass
class Top:
    name: str = "x"
    """A name."""
    section: Section = field(default_factory=Section)
    """A section."""
    tags: list[str] = field(default_factory=list)
    """Tags."""


def _deprecations(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if "deprecated" in r.getMessage()]


def test_a_renamed_key_reads_in_files_flags_and_python_with_one_line_each(tmp_path, caplog):
    path = tmp_path / "c.yaml"
    path.write_text("section:\n  old_weight: 0.5\n", encoding="utf-8")
    with caplog.at_level(logging.WARNING):
        assert parse(Top, ["--config", str(path)]).section.weight == 0.5
        assert parse(Top, ["--section.old_weight", "0.7"]).section.weight == 0.7
        assert from_mapping(Top, {"section": {"old_weight": 0.9}}).section.weight == 0.9
    assert _deprecations(caplog) == ["section: 'old_weight' is deprecated; it is now 'weight' (the old name still works)",
                                     "--section: 'old_weight' is deprecated; it is now 'weight' (the old name still works)",
                                     "section: 'old_weight' is deprecated; it is now 'weight' (the old name still works)"]
    with pytest.raises(RetainError, match="both 'old_weight' and its new name 'weight' are set"):
        from_mapping(Top, {"section": {"old_weight": 0.9, "weight": 0.1}})


def test_errors_name_where_the_value_came_from(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("section:\n  weight: heavy\n", encoding="utf-8")
    with pytest.raises(RetainError, match=rf"^{path}: section.weight: expected float, got 'heavy'$"):
        parse(Top, ["--config", str(path)])
    with pytest.raises(RetainError, match=r"^--section.weight: expected float, got 'heavy'$"):
        parse(Top, ["--section.weight", "heavy"])
    with pytest.raises(RetainError, match=r"^--section.wieght: unknown option; did you mean --section.weight\?$"):
        parse(Top, ["--section.wieght", "1"])
    path.write_text("sektion: {}\n", encoding="utf-8")
    with pytest.raises(RetainError, match=rf"^{path}: unknown key 'sektion'; did you mean 'section'\?$"):
        parse(Top, ["--config", str(path)])
    path.write_text("section: [unclosed\n", encoding="utf-8")
    with pytest.raises(RetainError, match=rf"^{path}:2: invalid YAML"):
        parse(Top, ["--config", str(path)])


def test_flags_override_the_file_and_lists_take_plain_values(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("name: from-file\ntags: [a]\n", encoding="utf-8")
    cfg = parse(Top, ["--name", "from-flag", "--config", str(path)])
    assert cfg.name == "from-flag" and cfg.tags == ["a"]
    assert parse(Top, ["--config", str(path), "--tags", "b", "--tags", "c"]).tags == ["b", "c"]
    assert parse(Top, ["--tags=[b, c]"]).tags == ["b", "c"]
