"""The command table: every command's --help builds from its dataclass; errors are one line, exit 2."""

from __future__ import annotations

import subprocess
import sys

import pytest

from retain.cli import COMMANDS, _bare_bool_flags, main


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_every_command_has_help(name, capsys):
    with pytest.raises(SystemExit) as e:
        main([name, "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert f"retain {name}" in out or name in out
    assert "--" in out  # options were generated from the config dataclass


def test_top_level_help_lists_all_commands():
    r = subprocess.run([sys.executable, "-m", "retain", "--help"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0
    for name in COMMANDS:
        assert name in r.stdout


def test_bad_option_is_one_line_and_exit_2(capsys):
    assert main(["demo", "--profile", "enormous"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:")


def test_bare_bool_flag_means_true():
    from retain.demo import DemoConfig

    assert _bare_bool_flags(["demo", "--fresh", "--profile", "smoke"], DemoConfig) == \
        ["demo", "--fresh", "true", "--profile", "smoke"]
    assert _bare_bool_flags(["demo", "--fresh", "false"], DemoConfig) == ["demo", "--fresh", "false"]


@pytest.mark.parametrize("content, needle", [
    (None, "--prompts {p}: YAML file not found (a mapping of root, followup, system)"),
    ("- a\n- b\n", "--prompts {p}: holds a YAML list, expected a mapping of root, followup, system"),
    ("root: [unclosed\n", "--prompts {p}: invalid YAML"),
])
def test_a_bad_nested_config_file_is_one_clear_line(tmp_path, capsys, content, needle):
    p = tmp_path / "prompts.yaml"
    if content is not None:
        p.write_text(content, encoding="utf-8")
    assert main(["decompress", str(tmp_path / "run"), "--prompts", str(p)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: " + needle.format(p=p)), err
    assert not (tmp_path / "run").exists()
