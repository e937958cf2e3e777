"""The output rule: results on stdout; status, progress and logging on stderr; --quiet keeps only results,
warnings and errors."""

from __future__ import annotations

import logging

import pytest

from retain.utils import console


@pytest.fixture(autouse=True)
def _reset():
    yield
    console.configure(quiet=False)


@pytest.mark.parametrize("quiet", [False, True])
def test_each_kind_of_output_goes_to_its_stream(capsys, quiet):
    console.configure(quiet=quiet)
    console.status("loading the model ...")
    console.result("wrote runs/x/eval.json")
    console.warn("something odd")
    logging.getLogger("retain.test").info("mixture: a: 3")
    logging.getLogger("retain.test").warning("weights sum to 3")
    list(console.tqdm(range(3), desc="bar"))
    out, err = capsys.readouterr()
    assert out == "wrote runs/x/eval.json\n"  # results only, whatever the level
    assert "warning: something odd" in err and "warning: weights sum to 3" in err
    assert ("loading the model" in err) is not quiet
    assert ("mixture: a: 3" in err) is not quiet
    assert console.show_progress(True) is not quiet and console.show_progress(False) is False
    assert console.tqdm(range(1), disable=False).disable is quiet


def test_quiet_is_global_and_anywhere_on_the_line(tmp_path, capsys):
    """`retain --quiet export ...` and `retain export ... -q` both parse; the option is not a config key."""
    from retain.cli import main

    for argv in (["--quiet", "export", str(tmp_path)], ["export", str(tmp_path), "-q"]):
        assert main(argv) == 2  # not a run directory: the error still shows
        err = capsys.readouterr().err
        assert err.startswith("error: ") and "not a decompress run directory" in err
        assert console.quiet()
