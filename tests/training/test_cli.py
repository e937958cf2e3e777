"""`retain train` on bad input: one `error:` line, exit status 2, and no output folder."""

from __future__ import annotations

import json

import pytest
import yaml

from retain.cli import main


def _run(capsys, *argv):
    rc = main(["train", *map(str, argv)])
    err = capsys.readouterr().err.strip().splitlines()
    return rc, err


def _write(make_recipe, mutate):
    data = make_recipe(method="loramoe")
    mutate(data)
    path = make_recipe(write=True)
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return path


def _bad_jsonl(data):
    bad = data["datasets"][0]["path"] + ".bad.jsonl"
    with open(bad, "w", encoding="utf-8") as f:
        f.write(json.dumps({"prompt": "q", "completion": "a"}) + "\n{oops\n")
    data["datasets"][0]["path"] = bad


def _latin1_jsonl(data):
    bad = data["datasets"][0]["path"] + ".latin1.jsonl"
    with open(bad, "wb") as f:
        f.write(b"".join(json.dumps({"prompt": f"q{i}", "completion": "a"}).encode() + b"\n" for i in range(4)))
        f.write(b'{"prompt": "\xff", "completion": "a"}\n')
    data["datasets"][0]["path"] = bad


def _latin1_json(data):
    bad = data["datasets"][0]["path"] + ".latin1.json"
    with open(bad, "wb") as f:
        f.write(b'[\n{"prompt": "caf\xe9", "completion": "a"}]\n')
    data["datasets"][0]["path"] = bad


CASES = {
    "dataset not UTF-8": (_latin1_jsonl, ".latin1.jsonl:5: not valid UTF-8 (byte 0xff); re-encode the file as UTF-8"),
    "json dataset not UTF-8": (_latin1_json, ".latin1.json:2: not valid UTF-8 (byte 0xe9)"),
    "dataset is a folder": (lambda d: d["datasets"][0].update(path="/tmp"), "/tmp: is a folder; give the path of a file"),
    "unknown key": (lambda d: d["train"].update(max_step=3), "unknown key 'train.max_step'; did you mean 'train.max_steps'"),
    "missing type under LBC": (lambda d: d["datasets"][1].pop("type"), "datasets[1]"),
    "negative weight": (lambda d: d["datasets"][0].update(weight=-1), "must be a finite number >= 0"),
    "zero weights": (lambda d: [x.update(weight=0) for x in d["datasets"]], "all weights are 0"),
    "malformed jsonl": (_bad_jsonl, ".bad.jsonl:2: invalid JSON"),
    "missing dataset": (lambda d: d["datasets"][0].update(path="/nonexistent/x.jsonl"), "/nonexistent/x.jsonl: file not found"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_input_exits_2_with_one_line_and_writes_nothing(make_recipe, tmp_path, capsys, case):
    mutate, needle = CASES[case]
    path = _write(make_recipe, mutate)
    rc, err = _run(capsys, path)
    assert rc == 2 and len(err) == 1 and err[0].startswith("error: ") and needle in err[0], err
    assert not (tmp_path / "run").exists()


def test_recipe_not_utf8_or_a_folder(tmp_path, capsys):
    recipe = tmp_path / "r.yaml"
    recipe.write_bytes(b"model:\n  name: caf\xe9\n")
    rc, err = _run(capsys, recipe)
    assert rc == 2 and err == [f"error: {recipe}:2: not valid UTF-8 (byte 0xe9); re-encode the file as UTF-8"]
    rc, err = _run(capsys, tmp_path)
    assert rc == 2 and err == [f"error: {tmp_path}: is a folder; give the path of a recipe"]


def test_pickle_only_base_is_refused_unless_allowed(make_recipe, tiny_llama_path, tmp_path, capsys):
    import shutil

    import torch
    from safetensors.torch import load_file

    base = tmp_path / "pickle_base"
    shutil.copytree(tiny_llama_path, base)
    torch.save(load_file(str(base / "model.safetensors")), base / "pytorch_model.bin")
    (base / "model.safetensors").unlink()
    path = _write(make_recipe, lambda d: d["model"].update(name=str(base)))
    rc, err = _run(capsys, path)
    err = [line for line in err if not line.startswith("warning: dataset weights")]
    assert rc == 2 and len(err) == 1 and "weights only as pickle (pytorch_model.bin)" in err[0], err
    assert "--model.allow_pickle true" in err[0] and not (tmp_path / "run").exists()
    rc = main(["train", str(path), "--train.max_steps", "1", "--model.allow_pickle"])
    assert rc == 0 and (tmp_path / "run" / "model").is_dir()


def test_resume_without_a_checkpoint_says_so(make_recipe, tmp_path, capsys):
    path = make_recipe(method="full", write=True)
    assert main(["train", str(path), "--resume", "--train.max_steps", "1"]) == 0
    err = [line for line in capsys.readouterr().err.splitlines() if "resume" in line]
    assert err == [f"warning: --resume: {tmp_path / 'run'} has no checkpoint to resume from; starting a fresh run at step 0"]


def test_missing_recipe_and_existing_run(make_recipe, tmp_path, capsys):
    rc, err = _run(capsys, tmp_path / "nope.yaml")
    assert rc == 2 and "recipe not found" in err[0]
    path = make_recipe(write=True)
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "train_log.jsonl").write_text('{"step": 1}\n', encoding="utf-8")
    rc, err = _run(capsys, path, "--train.max_steps", 1)
    assert rc == 2 and "already holds a run" in err[-1] and "--resume" in err[-1]
    assert (tmp_path / "run" / "train_log.jsonl").read_text() == '{"step": 1}\n'  # untouched


def test_cli_overrides_reach_the_run(make_recipe, tmp_path, capsys):
    """Every recipe key is a flag; flags override the file wherever they stand on the line."""
    path = make_recipe(method="full", write=True)
    rc = main(["train", "--train.log_every", "2", str(path), "--train.output_dir", str(tmp_path / "o"),
               "--train.max_steps", "2"])
    assert rc == 0
    rows = (tmp_path / "o" / "train_log.jsonl").read_text().splitlines()
    assert [json.loads(r)["step"] for r in rows] == [2]
    assert "trained full: 2 steps" in capsys.readouterr().out


@pytest.mark.parametrize("quiet", [False, True])
def test_stdout_holds_the_result_only_with_or_without_the_bar(make_recipe, tmp_path, capsys, quiet):
    """The Trainer's bar would write each step's log dict to stdout; results only go there (the output rule)."""
    from retain.utils import console

    path = make_recipe(method="loramoe", write=True)
    argv = ["train", str(path), "--train.output_dir", str(tmp_path / "o"), "--train.max_steps", "3",
            "--train.progress", "true"]
    try:
        rc = main((["--quiet"] if quiet else []) + argv)
    finally:
        console.configure(quiet=False)
    out, err = capsys.readouterr()
    assert rc == 0
    lines = out.splitlines()
    assert len(lines) == 1 and lines[0].startswith("trained loramoe: 3 steps") and "{" not in out
    assert ("loss (last" in err) is not quiet  # the bar (stderr) shows the loss unless --quiet
    assert len((tmp_path / "o" / "train_log.jsonl").read_text().splitlines()) == 3


def test_old_spellings_still_work_with_one_notice_each(make_recipe, tmp_path, capsys):
    path = make_recipe(method="full", write=True)
    rc = main(["train", str(path), "--output_dir", str(tmp_path / "o"), "--max_steps", "2",
               "--set+", "train.log_every=2", "--set", "optim.lr=1e-3"])
    assert rc == 0
    assert [json.loads(r)["step"] for r in (tmp_path / "o" / "train_log.jsonl").read_text().splitlines()] == [2]
    notices = [line for line in capsys.readouterr().err.splitlines() if "deprecated" in line]
    assert notices == ["warning: --output_dir is deprecated; write --train.output_dir (same meaning)",
                       "warning: --max_steps is deprecated; write --train.max_steps (same meaning)",
                       "warning: --set is deprecated; write the key as a flag: --train.log_every 2"]


def test_help_shows_every_recipe_key(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    out = capsys.readouterr().out
    for flag in ("--config", "--datasets", "--model.name", "--method", "--optim.lr", "--train.max_steps",
                 "--loramoe.num_experts", "--lora.r", "--mixture.size", "--resume", "--quiet"):
        assert flag in out, flag
    assert "Peak learning rate." in out  # attribute docstrings are the help


def test_full_disk_is_one_line_log_intact_and_rerun_completes(make_recipe, tmp_path, capsys, small_disk):
    disk = small_disk.make("300k")  # holds the log and a LoRA checkpoint, not the saved model + tokenizer
    out = disk / "run"
    path = make_recipe(method="lora", write=True, train={"output_dir": str(out), "max_steps": 4, "save_every": 2,
                                                           "keep_final_checkpoint": True})
    rc, lines = _run(capsys, path)
    err = [line for line in lines if line.startswith("error:")]  # besides transformers' progress bars
    assert rc == 2 and len(err) == 1 and not any("Traceback" in line for line in lines), lines
    assert err[0].startswith(f"error: {out}") and err[0].endswith(
        ": no space left on device; free space and re-run the same command"), err
    rows = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3, 4]  # the log is intact
    assert not (out / "model").exists() and not list(out.glob(".*.tmp"))
    small_disk.grow(disk, "64m")
    rc, err = _run(capsys, path, "--resume")
    assert rc == 0, err
    assert (out / "model" / "adapter_model.safetensors").exists() and (out / "train_result.json").exists()


def test_a_second_run_on_a_locked_folder_stops_before_the_model_loads(make_recipe, tmp_path, capsys, monkeypatch):
    """Two `retain train` on one output_dir both used to pass the "already holds a run" check while their
    models loaded, then mixed their logs. The folder is locked first; the second run gets one line, exit 2."""
    import fcntl

    from retain.training import run as train_run

    path = make_recipe(method="full", write=True)
    out = tmp_path / "run"
    out.mkdir()
    loads = []
    monkeypatch.setattr(train_run, "load_base", lambda *a, **k: loads.append(a) or (_ for _ in ()).throw(AssertionError))
    with open(out / ".lock", "a") as held:  # what a first run holds while it trains
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        rc, err = _run(capsys, path, "--train.max_steps", 1)
    assert rc == 2 and loads == [], err
    assert err[-1:] == [f"error: {out}: another `retain train` is working on this folder; wait for it to finish or set "
                   "--train.output_dir to another folder"]
    assert sorted(p.name for p in out.iterdir()) == [".lock"]  # nothing written beside the first run's lock
    monkeypatch.undo()
    assert main(["train", str(path), "--train.max_steps", "1"]) == 0  # free again: the run goes on


def test_a_failed_start_leaves_no_folder_behind(make_recipe, tmp_path, capsys):
    """The lock creates the run folder; a run that fails before writing anything removes it again."""
    path = make_recipe(method="full", write=True, train={"max_length": 2})  # no assistant token fits
    rc, err = _run(capsys, path)
    assert rc == 2 and "train.max_length=2" in err[-1], err
    assert not (tmp_path / "run").exists()


def test_the_users_recipe_in_the_output_folder_is_never_overwritten(make_recipe, tmp_path, capsys):
    """output_dir = the folder that holds the user's recipe: the run used to replace it with its merged copy."""
    out = tmp_path / "run"
    out.mkdir()
    mine = out / "recipe.yaml"
    data = make_recipe(method="full", train={"max_steps": 1})
    mine.write_text("# my notes\n" + yaml.safe_dump(data), encoding="utf-8")
    before = mine.read_text(encoding="utf-8")
    rc, err = _run(capsys, mine)
    assert rc == 2 and err[-1] == (f"error: {mine}: a file this run did not write (your recipe?); retain train writes "
                                   "its own recipe.yaml there, so set --train.output_dir to another folder (or move "
                                   "the file)"), err
    assert mine.read_text(encoding="utf-8") == before and sorted(p.name for p in out.iterdir()) == ["recipe.yaml"]
    assert main(["train", str(mine), "--train.output_dir", str(tmp_path / "elsewhere")]) == 0
    written = (tmp_path / "elsewhere" / "recipe.yaml").read_text(encoding="utf-8")
    assert written.startswith("# Written by retain train") and mine.read_text(encoding="utf-8") == before
    # the run's own copy is the run's: resuming from it (or rewriting it) is allowed
    assert main(["train", str(tmp_path / "elsewhere" / "recipe.yaml"), "--resume"]) == 0


def _lr_steps(out):
    return [(r["step"], r["lr"]) for r in map(json.loads, (out / "train_log.jsonl").read_text().splitlines())]


def test_resume_refuses_a_changed_setting_and_names_the_key(make_recipe, tmp_path, capsys):
    """`--resume --optim.lr 0.5` used to exit 0, train at the old lr and write 0.5 into the run's recipe.yaml."""
    path = make_recipe(method="lora", write=True, train={"max_steps": 4, "save_every": 2})
    out = tmp_path / "run"
    assert main(["train", str(path), "--train.max_steps", "2"]) == 0  # a run with a final result
    recorded = (out / "recipe.yaml").read_text(encoding="utf-8")
    rc, err = _run(capsys, path, "--resume", "--train.max_steps", "2", "--optim.lr", "0.5")
    assert rc == 2 and err[-1] == (f"error: --resume: optim.lr was 0.003 in {out / 'recipe.yaml'}, now 0.5; a resumed "
                                   "run keeps the settings it trained with: drop the change, or set "
                                   "--train.output_dir to a new folder"), err
    assert (out / "recipe.yaml").read_text(encoding="utf-8") == recorded  # the record does not lie
    rc, err = _run(capsys, path, "--resume", "--train.max_steps", "2", "--lora.r", "8", "--train.seed", "3")
    assert rc == 2 and "lora.r was 4" in err[-1] and "(also train.seed)" in err[-1], err
    # safe keys (logging, checkpoints) may change: the finished run returns its result
    rc, err = _run(capsys, path, "--resume", "--train.max_steps", "2", "--train.log_every", "5")
    assert rc == 0 and (out / "recipe.yaml").read_text(encoding="utf-8") == recorded, err  # nothing ran: unchanged


def test_resume_with_more_steps_trains_them_when_the_schedule_allows(make_recipe, tmp_path, capsys):
    """`--resume --train.max_steps 6` on a finished 3-step run used to return the old result and train nothing.
    With a constant schedule and the final checkpoint kept, it trains steps 4-6, the same as a 6-step run."""
    path = make_recipe(method="lora", write=True, optim={"schedule": "constant", "warmup_steps": 1},
                       train={"keep_final_checkpoint": True})
    out = tmp_path / "run"
    assert main(["train", str(path), "--train.max_steps", "3"]) == 0
    assert main(["train", str(path), "--resume", "--train.max_steps", "6"]) == 0
    assert "trained lora: 6 steps" in capsys.readouterr().out
    assert json.loads((out / "train_result.json").read_text())["steps"] == 6
    assert "max_steps: 6" in (out / "recipe.yaml").read_text(encoding="utf-8")
    assert main(["train", str(path), "--train.max_steps", "6", "--train.output_dir", str(tmp_path / "straight")]) == 0
    extended = [json.loads(r) for r in (out / "train_log.jsonl").read_text().splitlines()]
    straight = [json.loads(r) for r in (tmp_path / "straight" / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in extended] == [1, 2, 3, 4, 5, 6]
    for a, b in zip(extended, straight):
        assert a["lr"] == b["lr"] and a["lm_loss"] == pytest.approx(b["lm_loss"], rel=1e-4, abs=1e-5)


@pytest.mark.parametrize("schedule, keep, needle", [
    ("cosine", True, "train.max_steps was 3, now 6; with optim.schedule cosine the learning rate of every step depends"),
    ("constant", False, "finished at step 3 and kept no checkpoint to continue from, so train.max_steps cannot be raised"),
])
def test_resume_with_more_steps_is_refused_when_the_record_would_lie(make_recipe, tmp_path, capsys, schedule, keep,
                                                                      needle):
    path = make_recipe(method="full", write=True, optim={"schedule": schedule, "warmup_steps": 1},
                       train={"keep_final_checkpoint": keep})
    assert main(["train", str(path), "--train.max_steps", "3"]) == 0
    before = (tmp_path / "run" / "train_result.json").read_text()
    rc, err = _run(capsys, path, "--resume", "--train.max_steps", "6")
    assert rc == 2 and needle in err[-1], err
    assert (tmp_path / "run" / "train_result.json").read_text() == before


def test_resume_after_a_kill_refuses_a_changed_lr(make_recipe, tmp_path, capsys):
    """The issue's case: a run killed after a checkpoint, then `--resume --optim.lr 0.5`."""
    path = make_recipe(method="lora", write=True, train={"max_steps": 2, "save_every": 1, "keep_final_checkpoint": True})
    out = tmp_path / "run"
    assert main(["train", str(path)]) == 0
    (out / "train_result.json").unlink()  # as if killed after its last checkpoint
    rc, err = _run(capsys, path, "--resume", "--optim.lr", "0.5")
    assert rc == 2 and "--resume: optim.lr was 0.003" in err[-1], err
    assert "lr: 0.003" in (out / "recipe.yaml").read_text(encoding="utf-8")
    assert main(["train", str(path), "--resume"]) == 0  # the same settings resume


def test_a_start_that_failed_before_its_first_step_does_not_block_the_corrected_command(make_recipe, tmp_path, capsys):
    """`--optim.betas '[1.5, 0.9]'` used to fail in torch after recipe.yaml and an empty train_log.jsonl were
    written; the corrected command then met "already holds a run". Such a folder holds no run."""
    from retain.training import run as train_run

    path = make_recipe(method="full", write=True, train={"max_steps": 1})
    out = tmp_path / "run"
    out.mkdir()
    header = getattr(train_run, "RUN_RECIPE_HEADER", "")  # the run's own recipe.yaml
    (out / "recipe.yaml").write_text(header + "method: full\n", encoding="utf-8")
    (out / "train_log.jsonl").write_text("", encoding="utf-8")
    assert main(["train", str(path)]) == 0
    assert len((out / "train_log.jsonl").read_text().splitlines()) == 1


def test_train_in_a_log_prints_plain_lines_and_no_library_chatter(tmp_path, tiny_llama_path):
    """`retain train 2> log`: transformers' FutureWarning (PEFT asking for is_gradient_checkpointing), the
    'accelerate NO' line and tqdm's \\r redraws are gone; the bar's last line and the final line report one
    number, the mean LM loss of the last steps, and say so."""
    import os
    import re
    import subprocess
    import sys
    from pathlib import Path

    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps({"messages": [{"role": "user", "content": f"{i}+1?"},
                                                     {"role": "assistant", "content": f"{i + 1}"}]}) + "\n"
                            for i in range(8)))
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump({
        "model": {"name": tiny_llama_path, "device": "cpu"}, "method": "lora", "lora": {"r": 2},
        "datasets": [{"path": str(data), "type": "task"}],
        "train": {"output_dir": str(tmp_path / "run"), "max_steps": 4, "batch_size": 2, "max_length": 64}}))
    src = str(Path(__file__).resolve().parents[2] / "src")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([src, os.environ.get("PYTHONPATH", "")]), "OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, "-m", "retain.cli", "train", str(recipe)], capture_output=True, text=True,
                       env=env, timeout=600)
    assert r.returncode == 0, r.stderr
    for noise in ("FutureWarning", "accelerate", "\r", "\x1b", "Loading weights"):
        assert noise not in r.stderr, (noise, r.stderr)
    bar = [line for line in r.stderr.splitlines() if line.startswith("train: ")]
    assert bar and bar[-1].startswith("train: 4/4 step (100 %)")
    shown = float(re.search(r"loss \(last 4 steps\)=([\d.]+)", bar[-1]).group(1))
    final = re.search(r"final loss ([\d.]+) \(mean LM loss of the last 4 steps\)", r.stdout)
    assert final and float(final.group(1)) == pytest.approx(shown, abs=5e-4 * shown)
