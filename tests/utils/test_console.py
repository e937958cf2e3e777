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


def test_a_bar_in_a_log_is_plain_lines_one_per_tenth(capsys):
    """stderr is not a terminal here (captured), as in a log file: tqdm's \\r redraws and cursor codes ([A)
    filled logs; now each tenth of the work is one plain line, and the last line is the total."""
    console.configure(quiet=False)
    list(console.tqdm(range(25), desc="score", unit="item"))
    err = capsys.readouterr().err
    assert "\r" not in err and "\x1b" not in err
    lines = err.splitlines()
    assert [int(line.split()[1].split("/")[0]) for line in lines] == [3, 5, 8, 10, 13, 15, 18, 20, 23, 25]
    assert lines[-1].startswith("score: 25/25 item (100 %), ")

    bar = console.tqdm(total=4, desc="generate", leave=False)  # a transient bar: no line at its end
    bar.set_postfix({"loss": "2.29"})
    bar.update(2)
    bar.update(2)
    bar.close()
    err = capsys.readouterr().err
    assert err.splitlines() == [err.splitlines()[0]] and err.startswith("generate: 2/4 it (50 %), ")
    assert err.rstrip().endswith("loss=2.29")


def test_library_request_logs_stay_out(capsys):
    """httpx logs each request at INFO ('HTTP Request: POST ...'): `retain decompress --backend.kind openai`
    printed one line per request."""
    console.configure(quiet=False)
    logging.getLogger("httpx").info('HTTP Request: POST http://127.0.0.1/v1/chat/completions "HTTP/1.1 200 OK"')
    logging.getLogger("httpx").warning("a real problem")
    logging.getLogger("retain.test").info("kept")
    err = capsys.readouterr().err
    assert "HTTP Request:" not in err and "warning: a real problem" in err and "kept" in err
