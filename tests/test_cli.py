"""The command table: every command's --help builds from its dataclass; errors are one line, exit 2."""

from __future__ import annotations

import subprocess
import sys

import pytest

from retain.cli import COMMANDS, main


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


def test_a_broken_command_module_is_an_error_not_a_missing_command(monkeypatch):
    """A command whose config cannot be imported must fail loudly (it used to vanish from the CLI)."""
    from retain import cli

    monkeypatch.setitem(cli.COMMANDS, "demo", ("retain.no_such_module:Nope", *cli.COMMANDS["demo"][1:]))
    with pytest.raises(ModuleNotFoundError, match="retain.no_such_module"):
        cli.build_parser()


def test_bad_option_is_one_line_and_exit_2(capsys):
    assert main(["demo", "--profile", "enormous"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:")


def test_bare_bool_flag_means_true_at_any_depth():
    from retain.demo import DemoConfig
    from retain.options import _bare_bools
    from retain.training.config import TrainCommand

    assert _bare_bools(DemoConfig, ["--fresh", "--profile", "smoke"]) == ["--fresh", "true", "--profile", "smoke"]
    assert _bare_bools(DemoConfig, ["--fresh", "false"]) == ["--fresh", "false"]
    assert _bare_bools(TrainCommand, ["--model.allow_pickle", "--resume"]) == \
        ["--model.allow_pickle", "true", "--resume", "true"]


def test_a_list_option_takes_plain_values_as_typed():
    """`--probe_files facts.jsonl` is a one-item list (jsonargparse alone says "Expected a <class 'list'>");
    repeating the flag adds items; the YAML list form still works."""
    from retain.evaluation.config import EvalConfig
    from retain.options import parse

    assert parse(EvalConfig, ["--probe_files", "facts.jsonl"]).probe_files == ["facts.jsonl"]
    assert parse(EvalConfig, ["--tuned", "runs/a b", "--tuned", "runs/c,d"]).tuned == ["runs/a b", "runs/c,d"]
    assert parse(EvalConfig, ["--tuned", "[x, y]"]).tuned == ["x", "y"]
    assert parse(EvalConfig, ["--lm_eval_tasks=hellaswag"]).lm_eval_tasks == ["hellaswag"]


def test_every_command_reads_a_config_file_with_the_flags_keys(tmp_path):
    from retain.evaluation.config import EvalConfig
    from retain.options import parse

    path = tmp_path / "eval.yaml"
    path.write_text("tuned: [runs/a]\nprofile: quick\nprobes: {sciq: 10}\n", encoding="utf-8")
    cfg = parse(EvalConfig, ["--config", str(path), "--profile", "tiny"])
    assert (cfg.tuned, cfg.profile, cfg.probes) == (["runs/a"], "tiny", {"sciq": 10})


@pytest.mark.parametrize("content, needle", [
    (None, "--prompts {p}: YAML file not found (a mapping of root, followup, system)"),
    ("- a\n- b\n", "--prompts {p}: holds a YAML list, expected a mapping of root, followup, system"),
    ("root: [unclosed\n", "--prompts {p}:2: invalid YAML"),
])
def test_a_bad_nested_config_file_is_one_clear_line(tmp_path, capsys, content, needle):
    p = tmp_path / "prompts.yaml"
    if content is not None:
        p.write_text(content, encoding="utf-8")
    assert main(["decompress", str(tmp_path / "run"), "--prompts", str(p)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: " + needle.format(p=p)), err
    assert not (tmp_path / "run").exists()


@pytest.fixture(scope="module")
def bad_inputs(tmp_path_factory, tiny_llama_path):
    """Files every command may be handed by mistake: not UTF-8, a folder, pickle-only weights, a list."""
    import json
    import shutil

    d = tmp_path_factory.mktemp("bad_inputs")
    (d / "latin1.jsonl").write_bytes(b'{"prompt": "q", "completion": "a"}\n{"prompt": "caf\xe9", "completion": "a"}\n')
    (d / "latin1.yaml").write_bytes(b"model:\n  name: caf\xe9\n")
    (d / "list.yaml").write_text("- a\n- b\n", encoding="utf-8")
    (d / "folder").mkdir()
    pickle = d / "pickle_model"
    shutil.copytree(tiny_llama_path, pickle)
    (pickle / "model.safetensors").unlink()
    (pickle / "pytorch_model.bin").write_bytes(b"not really a pickle")
    unknown = d / "unknown_arch"  # a model folder transformers cannot build
    shutil.copytree(tiny_llama_path, unknown)
    cfg = json.loads((unknown / "config.json").read_text())
    (unknown / "config.json").write_text(json.dumps({**cfg, "model_type": "no_such_arch"}))
    recipe = {"model": {"name": tiny_llama_path}, "datasets": [{"path": str(d / "latin1.jsonl")}],
              "train": {"output_dir": str(d / "never")}}
    (d / "recipe_latin1_data.yaml").write_text(json.dumps(recipe), encoding="utf-8")
    recipe["datasets"] = [{"path": str(d / "folder")}]
    (d / "recipe_folder_data.yaml").write_text(json.dumps(recipe), encoding="utf-8")
    recipe["model"]["name"], recipe["datasets"] = str(pickle), [{"path": str(tiny_llama_path) + "/../x.jsonl"}]
    (d / "x.jsonl").write_text('{"prompt": "q", "completion": "a"}\n', encoding="utf-8")
    recipe["datasets"] = [{"path": str(d / "x.jsonl")}]
    (d / "recipe_pickle.yaml").write_text(json.dumps(recipe), encoding="utf-8")
    recipe["model"]["name"] = tiny_llama_path
    (d / "recipe_ok.yaml").write_text(json.dumps(recipe), encoding="utf-8")
    (d / "recipe_unknown_key.yaml").write_text(json.dumps({**recipe, "optim": {"learning_rate": 1e-4}}), encoding="utf-8")
    (d / "recipe_wrong_type.yaml").write_text(json.dumps({**recipe, "train": {"batch_size": "eight"}}), encoding="utf-8")
    from retain.evaluation.probes import SHOT_POOL

    (d / "shot_answers.jsonl").write_text("".join(f'{{"question": "q{i}?", "answers": ["{a}"]}}\n'
                                                  for i, (_, a) in enumerate(SHOT_POOL)), encoding="utf-8")
    (d / "recipe_dup_key.yaml").write_text(  # the second `train:` used to win silently
        f"model: {{name: {tiny_llama_path}}}\ndatasets: [{{path: {d / 'x.jsonl'}}}]\ntrain: {{output_dir: {d / 'never'}}}\n"
        f"train: {{max_steps: 1, output_dir: {d / 'never'}}}\n", encoding="utf-8")
    (d / "dup_ids.jsonl").write_text('{"id": "a", "question": "q", "answers": ["x"]}\n'
                                     '{"id": "a", "question": "r", "answers": ["y"]}\n', encoding="utf-8")
    (d / "data.csv").write_text("prompt,completion\nq,a\n", encoding="utf-8")
    (d / "data.parquet").write_bytes(b"PAR1\x00\x00PAR1")
    (d / "gate_unknown.yaml").write_text("knowledge_retenshun: {min_diff: -3}\n", encoding="utf-8")
    (d / "recipe_bad_gate.yaml").write_text(json.dumps({**recipe, "eval": {"gate": str(d / "gate_unknown.yaml")}}),
                                            encoding="utf-8")
    return d


BAD = {
    "decompress": [
        ["{d}/run", "--levels", "[[2,0]]"],
        ["{d}/latin1.jsonl"],  # a file where the run folder goes
        ["{d}/run", "--prompts", "{d}/list.yaml"],
        ["{d}/run", "--prompts", "{d}/missing.yaml"],
        ["{d}/run", "--model", "{d}/pickle_model", "--dedup_threshold", "1.0"],
        ["{d}/run", "--model", "{d}/unknown_arch", "--dedup_threshold", "1.0"],
        ["{d}/run", "--no_such_option", "1"],
        ["{d}/run", "--temperature", "hot"],
        ["{d}/run", "--backend.kind", "nope"],
        ["{d}/run", "--levels", "[[100000,4096],[1000,4096]]"],  # an enormous tree without --yes
        ["{d}/run", "--cut_answers", "sometimes"],
    ],
    "export": [["{d}/folder"], ["{d}/folder", "--format", "docx"]],
    "serve": [["--model", "{d}/pickle_model", "--port", "{port}"], ["--model", "/no/such/model", "--port", "{port}"],
              ["--model", "{d}/unknown_arch", "--port", "{port}"],
              ["--api_key_env", "RETAIN_TEST_UNSET_KEY", "--port", "{port}"], ["--port", "0"],
              ["--backend.kind", "openai", "--port", "{port}"], ["--backend.batch_size", "0", "--port", "{port}"]],
    "train": [["{d}/missing.yaml"], ["{d}/latin1.yaml"], ["{d}/list.yaml"], ["{d}/folder"],
              ["{d}/recipe_latin1_data.yaml"], ["{d}/recipe_folder_data.yaml"], ["{d}/recipe_pickle.yaml"],
              ["{d}/recipe_pickle.yaml", "--set+", "optim.learnin_rate=1"],
              ["{d}/recipe_unknown_key.yaml"], ["{d}/recipe_wrong_type.yaml"], ["{d}/recipe_ok.yaml", "--optim.lr", "fast"],
              ["{d}/recipe_ok.yaml", "--optim.learnin_rate", "1"], ["{d}/recipe_ok.yaml", "--method", "lorra"],
              ["{d}/recipe_ok.yaml", "{d}/recipe_ok.yaml"], ["--config", "{d}/list.yaml"], ["{d}/recipe_bad_gate.yaml"],
              ["{d}/recipe_ok.yaml", "--eval.tuned", "[x]"],
              ["{d}/recipe_ok.yaml", "--optim.betas", "[1.5, 0.9]"], ["{d}/recipe_dup_key.yaml"],
              ["{d}/recipe_ok.yaml", "--optim.weight_decay", "-0.1"], ["{d}/recipe_ok.yaml", "--optim.warmup_steps", "-1"],
              ["{d}/recipe_ok.yaml", "--optim.max_grad_norm", "-1"], ["{d}/recipe_ok.yaml", "--train.seed", str(2**70)],
              ["{d}/recipe_ok.yaml", "--datasets", "[{path: {d}/x.jsonl, limit: 0}]"],
              ["{d}/recipe_ok.yaml", "--datasets", "[{path: {d}/x.jsonl, limit: -2}]"],
              ["{d}/recipe_ok.yaml", "--datasets", "[{path: {d}/data.csv}]"],
              ["{d}/recipe_ok.yaml", "--datasets", "[{path: {d}/data.parquet}]"],
              ["{d}/recipe_ok.yaml", "--mixture.loss_balance", "tokens"],
              ["{d}/recipe_ok.yaml", "--mixture.loss_balance", "type"]],  # x.jsonl has no type
    "eval": [["--tuned", "[{d}/folder]"], ["--tuned", "[{d}/pickle_model]"], ["--probe_files", "[{d}/latin1.jsonl]"],
             ["--probe_files", "[{d}/folder]"], ["--base", "{d}/pickle_model"], ["--base", "{d}/unknown_arch"],
             ["--probe_files", "{d}/folder"], ["--domain_items", "many"], ["--profile", "huge"],
             ["--config", "{d}/missing.yaml"], ["--probe_files", "{d}/dup_ids.jsonl"], ["--behaviour", "{sciq: 10}"],
             ["--probe_prompt", "sometimes"], ["--probe_prompt", "fewshot", "--probe_files", "[{d}/shot_answers.jsonl]"],
             ["--gate", "{d}/gate_unknown.yaml"], ["--gate", "{d}/missing.yaml"],
             ["--gate_mode", "sloppy"], ["--show", "lost", "--out", "{d}/folder"], ["--domain", "{d}/latin1.jsonl"],
             ["--domain", "{d}/folder"]],
    "routing": [["{d}/folder", "--data", "{d}/latin1.jsonl"], ["{d}/pickle_model", "--data", "{d}/latin1.jsonl"],
                ["{d}/missing"]],
    "demo": [["--profile", "enormous"], ["--methods", "[nope]"], ["--out", "{d}/latin1.jsonl"],
             ["--scenario", "mllm", "--methods", "[full_kl]"], ["--scenario", "mllm", "--tg_corpus", "{d}/latin1.jsonl"]],
}


@pytest.mark.parametrize("name, args", [(n, a) for n, cases in BAD.items() for a in cases],
                         ids=[f"{n}-{i}" for n, cases in BAD.items() for i in range(len(cases))])
def test_every_command_answers_bad_input_with_one_error_line(bad_inputs, capsys, monkeypatch, name, args):
    """The README's promise: a bad input is one `error:` line and exit status 2, never a traceback."""
    assert set(BAD) == set(COMMANDS)
    monkeypatch.delenv("RETAIN_TEST_UNSET_KEY", raising=False)
    port = str(free_port())
    argv = [a.replace("{d}", str(bad_inputs)).replace("{port}", port) for a in args]
    try:
        rc = main([name, *argv])
    except SystemExit as e:  # argparse-style exits would break the promise too
        rc = e.code
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert rc == 2 and len(errors) == 1 and "Traceback" not in err, err
    assert not (bad_inputs / "never").exists()  # nothing written before the input is valid (recipe_*.yaml's output_dir)


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
