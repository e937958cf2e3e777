"""`retain eval` end to end on tiny models: outputs, reference reuse, clean failures."""

from __future__ import annotations

import json

import pytest

from retain.cli import main

SMALL = ["--profile", "tiny", "--probes", "{arc_easy: 6, mmlu: 4, triviaqa: 3}", "--domain_items", "6"]


@pytest.fixture(scope="module")
def tuned_folder(tiny_perturbed, tmp_path_factory):
    model, tok = tiny_perturbed
    out = tmp_path_factory.mktemp("tuned") / "full-ft"
    model.save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def broken_folders(tiny, tiny_llama_path, tmp_path_factory):
    """{name: folder} of fine-tuned folders that must be refused before any model runs."""
    import torch
    from safetensors.torch import load_file, save_file

    from retain.adapters.config import LoRAConfig
    from retain.adapters.methods import prepare_model, save_finetuned
    from retain.models import load_model

    root = tmp_path_factory.mktemp("broken")
    base, tok = load_model(tiny_llama_path)
    save_finetuned(prepare_model(base, "lora", lora=LoRAConfig(r=2)), root / "no_weights", tiny_llama_path, tok)
    (root / "no_weights" / "adapter_model.safetensors").unlink()
    save_finetuned(prepare_model(load_model(tiny_llama_path)[0], "lora", lora=LoRAConfig(r=2)), root / "shape",
                   tiny_llama_path, tok)
    t = load_file(str(root / "shape" / "adapter_model.safetensors"))
    t["base_model.model.model.layers.0.mlp.up_proj.lora_B.weight"] = torch.zeros(5, 2)
    save_file(t, str(root / "shape" / "adapter_model.safetensors"))
    model, _ = tiny
    (root / "pickle").mkdir()
    model.config.save_pretrained(root / "pickle")
    tok.save_pretrained(root / "pickle")
    torch.save(model.state_dict(), root / "pickle" / "pytorch_model.bin")
    return root


@pytest.mark.parametrize("name, needle", [
    ("no_weights", "no_weights: no adapter_model weights (*.safetensors); the folder is incomplete"),
    ("shape", "lora_B.weight has shape (5, 2), the base model expects (128, 2)"),
    ("pickle", "weights only as pickle (pytorch_model.bin)"),
])
def test_tuned_folders_are_checked_before_any_model_runs(tiny_llama_path, broken_folders, tmp_path, capsys,
                                                         name, needle):
    out = tmp_path / "eval"
    rc = main(["eval", "--base", tiny_llama_path, "--tuned", f"[{broken_folders / name}]", "--out", str(out), *SMALL])
    cap = capsys.readouterr()
    err = cap.err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and err[0].startswith("error: ") and needle in err[0], err
    assert "calibrating" not in cap.out and not out.exists()


def test_pickle_weights_load_with_explicit_opt_in(broken_folders):
    from retain.models import load_model

    model, _ = load_model(str(broken_folders / "pickle"), allow_pickle=True)
    assert model.config.num_hidden_layers == 2


def test_eval_writes_outputs_and_reuses_reference(tiny_llama_path, tuned_folder, tmp_path, capsys):
    out = tmp_path / "eval"
    assert main(["eval", "--base", tiny_llama_path, "--tuned", f"[{tuned_folder}]", "--out", str(out), *SMALL]) == 0
    for name in ("eval.json", "eval.md", "eval.png", "calibration.json", "base_reference.safetensors"):
        assert (out / name).stat().st_size > 0, name
    rows = json.loads((out / "eval.json").read_text())["rows"]
    base, tuned = rows
    assert [r["model"] for r in rows] == ["base", "full-ft"]
    assert base["kl_drift"] == 0.0 and tuned["kl_drift"] > 0
    assert base["retention"] in (1.0, None)  # None only if the random base knows nothing
    assert set(tuned["probes"]) == {"arc_easy", "mmlu", "triviaqa", "chat:triviaqa"} and tuned["domain"]["n"] == 6
    # the behaviour view (chat-format answers) beside the knowledge view, with its paired comparison
    assert tuned["probes"]["chat:triviaqa"]["view"] == "behaviour" and tuned["probes"]["mmlu"]["view"] == "knowledge"
    assert base["reply_change"] == 0.0 and tuned["behaviour"]["n"] == 8
    assert len(tuned["items"]["chat:triviaqa"]["prediction"]) == 8 and "behaviour" in tuned["vs_base"]
    md = (out / "eval.md").read_text()
    assert "| base |" in md
    # no hidden prompt: every probe's format is printed (the few-shot probe names its shots' count)
    assert "`chat:triviaqa`: chat: the model's chat template" in md and "`triviaqa`: 3-shot completion" in md
    # eval_items.jsonl is the item-level diff of the two rows' per-item outcomes
    flipped = [(r["probe"], r["id"], r["change"]) for r in map(json.loads, (out / "eval_items.jsonl").open())]
    want = [(name, i, "lost" if b else "gained") for name, rec in tuned["items"].items()
            for i, t, b in zip(rec["ids"], rec["correct"], base["items"][name]["correct"]) if t != b]
    assert flipped == want
    assert "## Verdict" in (out / "eval.md").read_text() and "**vs base [95 %]**" in (out / "eval.md").read_text()
    assert "retain eval" in capsys.readouterr().out
    # second run re-uses the saved reference and reproduces the tuned row
    # (and runs an lm-eval task from a local YAML on the loaded model)
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    (tasks / "items.jsonl").write_text('{"q": "Sky color?", "c": ["blue", "red"], "a": 0}\n'
                                       '{"q": "Ice is frozen what?", "c": ["water", "sand"], "a": 0}\n')
    (tasks / "t.yaml").write_text(
        f"task: cli_mc\ndataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {tasks / 'items.jsonl'}\n"
        "test_split: test\noutput_type: multiple_choice\ndoc_to_text: \"Question: {{q}}\\nAnswer:\"\n"
        "doc_to_choice: \"{{c}}\"\ndoc_to_target: \"{{a}}\"\nmetric_list:\n  - metric: acc\n")
    out2 = tmp_path / "eval2"
    assert main(["eval", "--base", tiny_llama_path, "--tuned", f"[{tuned_folder}]", "--out", str(out2),
                 "--reference", str(out), "--skip_base", "true", "--lm_eval_tasks", "[cli_mc]",
                 "--lm_eval_include", str(tasks), *SMALL, "--gate", "{lm_eval:cli_mc: {min_diff: -100}}"]) == 0
    (again,) = json.loads((out2 / "eval.json").read_text())["rows"]
    # paired with the base's own harness run (made even with --skip_base), and gated
    assert again["vs_base"]["lm_eval:cli_mc"]["n"] == 2 and again["lm_eval_items"]["cli_mc"]["metric"] == "acc"
    assert json.loads((out2 / "gate.json").read_text())["passed"]
    assert again["probes"] == tuned["probes"] and again["kl_drift"] == pytest.approx(tuned["kl_drift"], rel=1e-4)
    assert 0.0 <= again["lm_eval"]["cli_mc"]["acc,none"] <= 1.0


@pytest.mark.parametrize("args, match", [
    (["--probe_files", "[{bad}]"], r"bad\.jsonl:2: 'answer' must be an integer"),
    (["--tuned", "[/no/such/folder]"], "no such folder"),
    (["--probes", "{nope: 3}"], "unknown probe 'nope'"),
    (["--domain", "gsm8k"], "choose one of skills, .*medmcqa, medqa.*or none"),
    (["--device", "gpu9"], r"--device gpu9: .*use auto, cpu, cuda, cuda:N or mps"),
])
def test_bad_input_fails_cleanly_and_writes_nothing(tiny_llama_path, tmp_path, capsys, args, match):
    import re

    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "q", "choices": ["a", "b"], "answer": 0}\n{"question": "q", "choices": ["a", "b"], "answer": "b"}\n')
    args = [a.replace("{bad}", str(bad)) for a in args]
    out = tmp_path / "eval"
    assert main(["eval", "--base", tiny_llama_path, "--out", str(out), *SMALL, *args]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and len(err.splitlines()) == 1 and re.search(match, err), err
    assert not out.exists()


def test_device_defaults_to_auto_like_every_other_command(tiny_llama_path):
    from retain.evaluation.config import EvalConfig
    from retain.models import load_model

    assert EvalConfig(base=tiny_llama_path).device == "auto"
    model, _ = load_model(tiny_llama_path, device="auto")
    want = "cuda" if __import__("torch").cuda.is_available() else "cpu"
    assert next(model.parameters()).device.type == want


def test_tuned_the_same_folder_as_base_warns_in_one_line(tiny_llama_path, tmp_path, capsys, monkeypatch):
    """`retain eval --base X --tuned X` scored the base against itself without a word."""
    from retain.errors import RetainError
    from retain.evaluation import run as eval_run

    def stop(*a, **k):  # the check is before any model loads
        raise RetainError("stop here")

    monkeypatch.setattr(eval_run, "_load", stop)
    same = tiny_llama_path + "/"  # another spelling of the same folder
    assert main(["eval", "--base", tiny_llama_path, "--tuned", same, "--out", str(tmp_path / "o"), *SMALL]) == 2
    warned = [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning:")]
    assert warned == [f"warning: --tuned {same} is the --base folder: its row repeats the base (retention 100 %, "
                      "KL 0); give the fine-tuned folder (a run's model/)"]
