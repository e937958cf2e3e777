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
    assert set(tuned["probes"]) == {"arc_easy", "mmlu", "triviaqa"} and tuned["domain"]["n"] == 6
    assert "| base |" in (out / "eval.md").read_text()
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
                 "--lm_eval_include", str(tasks), *SMALL]) == 0
    (again,) = json.loads((out2 / "eval.json").read_text())["rows"]
    assert again["probes"] == tuned["probes"] and again["kl_drift"] == pytest.approx(tuned["kl_drift"], rel=1e-4)
    assert 0.0 <= again["lm_eval"]["cli_mc"]["acc,none"] <= 1.0


@pytest.mark.parametrize("args, match", [
    (["--probe_files", "[{bad}]"], r"bad\.jsonl:2: 'answer' must be an integer"),
    (["--tuned", "[/no/such/folder]"], "no such folder"),
    (["--probes", "{nope: 3}"], "unknown probe 'nope'"),
    (["--domain", "gsm8k"], "choose one of skills, .*medmcqa, medqa.*or none"),
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
