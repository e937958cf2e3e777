"""`retain decompress` on the command line: bad input -> one line, exit 2, nothing written; a good run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from retain.cli import main

HERE = Path(__file__).resolve().parent
SMALL = ["--levels", "[[2,64],[2,64]]", "--topics", '["a","b"]', "--dedup_threshold", "1.0"]


@pytest.fixture
def fake_env(monkeypatch):
    monkeypatch.syspath_prepend(str(HERE))
    monkeypatch.setenv("RETAIN_BACKEND_FACTORY", "tests.generation.conftest:make_fake_backend")


def _snapshot(d: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(d.iterdir())} if d.exists() else {}


@pytest.mark.parametrize("args, message", [
    (["--preset", "huge"], "--preset huge: unknown preset; choose one of: wide, balance"),
    (["--levels", "[[2,16],[0,16]]"], "--levels: level 2 has N=0, L=16; both must be >= 1"),
    (["--levels", "[[2,0]]"], "--levels: level 1 has N=2, L=0; both must be >= 1"),
    (["--levels", "[[2,16,4]]"], "--levels: level 1 is [2, 16, 4]"),
    (["--model", "/no/such/model/folder"], "--model /no/such/model/folder: no such folder"),
    (["--levels", "[[100000,4096],[1000,4096]]"], "--levels [[100000, 4096], [1000, 4096]]: plans 100,100,000 nodes, "
     "118,918,750 requests and up to 417,216,800,000 generated tokens (over 20,000 nodes); pass --yes to start it"),
    (["--levels", "[[1,8]]", "--dedup_threshold", "1.0", "--backend.kind", "openai",
      "--backend.base_url", "http://127.0.0.1:9/v1", "--backend.max_retries", "0", "--backend.timeout_s", "3"],
     "http://127.0.0.1:9/v1"),
])
def test_bad_input_is_one_line_exit_2_and_writes_nothing(tmp_path, capsys, args, message):
    run_dir = tmp_path / "run"
    assert main(["decompress", str(run_dir), *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    assert message in err
    assert not run_dir.exists()


def test_run_dir_from_another_config_is_refused_untouched(tmp_path, capsys, fake_env):
    run_dir = tmp_path / "run"
    assert main(["decompress", str(run_dir), *SMALL, "--progress", "false"]) == 0
    before = _snapshot(run_dir)
    assert main(["decompress", str(run_dir), *SMALL, "--temperature", "0.2"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "made with a different config (temperature differ)" in err
    assert _snapshot(run_dir) == before


def test_good_run_prints_summary_and_is_idempotent(tmp_path, capsys, fake_env):
    run_dir = tmp_path / "run"
    assert main(["decompress", str(run_dir), *SMALL]) == 0
    out = capsys.readouterr().out
    assert "TG self-decompression" in out and "sft.jsonl" in out
    nodes = (run_dir / "nodes.jsonl").read_bytes()
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["status"] == "complete" and manifest["exports"]["sft"]["rows"] > 0
    assert main(["decompress", str(run_dir), *SMALL]) == 0  # finished: nothing regenerated
    assert (run_dir / "nodes.jsonl").read_bytes() == nodes
    assert not [p for p in run_dir.iterdir() if p.name.endswith(".tmp")]


def test_full_disk_is_one_line_journal_intact_and_rerun_completes(tmp_path, capsys, fake_env, small_disk):
    big = ["--levels", "[[12,64],[6,64]]", "--topics", '["a","b","c"]', "--dedup_threshold", "1.0",
           "--chunk_size", "8", "--progress", "false"]
    ref = tmp_path / "ref"
    assert main(["decompress", str(ref), *big]) == 0
    assert (ref / "nodes.jsonl").stat().st_size > 28_000  # more than the disk below holds
    disk = small_disk.make("28k")
    run_dir = disk / "run"
    capsys.readouterr()
    assert main(["decompress", str(run_dir), *big]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "Traceback" not in err[0], err
    assert err[0].endswith(": no space left on device; free space and re-run the same command")
    assert str(run_dir) in err[0]
    lines = (run_dir / "nodes.jsonl").read_bytes().split(b"\n")
    assert lines[-1] == b"" and all(json.loads(line) for line in lines[:-1])  # only complete records
    small_disk.grow(disk, "4m")
    assert main(["decompress", str(run_dir), *big]) == 0
    assert (run_dir / "sft.jsonl").read_text() == (ref / "sft.jsonl").read_text()


def test_the_plan_is_printed_before_the_run_and_yes_starts_a_large_tree(tmp_path, capsys, fake_env, monkeypatch):
    """Issue 22 item 10: a 100M-node tree started without a word."""
    # level 1: 1 list of 3 questions (48 tokens each) + 2 answers of 64; level 2: 2 lists of 3 + 4 answers
    assert main(["decompress", str(tmp_path / "run"), *SMALL]) == 0
    err = capsys.readouterr().err
    assert "plan: 2 + 4 = 6 nodes, 9 requests, up to 816 generated tokens (before dedup and filter drops)" in err
    import retain.generation.run as run

    started = []
    monkeypatch.setattr(run, "decompress", lambda cfg: started.append(cfg))
    assert main(["decompress", str(tmp_path / "big"), "--levels", "[[200,64],[101,64]]", "--yes"]) == 0
    assert started[0].plan()["nodes"] == 200 + 200 * 101 and started[0].yes
    assert main(["decompress", str(tmp_path / "big"), "--levels", "[[200,64],[101,64]]"]) == 2
    assert "pass --yes" in capsys.readouterr().err and len(started) == 1


def test_decompress_through_a_server_prints_no_request_lines(tmp_path, capsys):
    """One `HTTP Request: POST ...` line per request (httpx at INFO) buried the run's own status lines."""
    from tests.generation.conftest import FakeBackend
    from tests.generation.test_backends_openai import serve_in_thread

    from retain.generation.serve import create_app

    with serve_in_thread(create_app(FakeBackend(), model_name="smollm2")) as url:
        rc = main(["decompress", str(tmp_path / "run"), *SMALL, "--backend.kind", "openai", "--backend.base_url", url])
    err = capsys.readouterr().err
    assert rc == 0, err
    assert "HTTP Request" not in err and "plan:" in err
