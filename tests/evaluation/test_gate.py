"""The forgetting gate: rules on the bounds of paired 95 % intervals, strict and lenient, exit codes,
gate.json; an identity adapter passes, a fine-tune made to forget fails (also at the end of retain train)."""

from __future__ import annotations

import json

import pytest

from retain.cli import main
from retain.errors import RetainError
from retain.evaluation.gate import evaluate_gate, load_gate, parse_gate


def _row(lo, hi, diff=None, n=18):
    iv = {"diff": (lo + hi) / 2 if diff is None else diff, "lo": lo, "hi": hi, "n": n, "level": 0.95}
    return {"model": "ft", "retention": 0.9, "kl_drift": 0.03,
            "vs_base": {"retention": iv, "drift": {"diff": 0.03, "lo": 0.02, "hi": 0.04, "n": 32, "level": 0.95}}}


def test_a_straddling_interval_fails_strict_and_passes_lenient():
    # retention -1 pts [-6, +0]: the loss is neither shown small (lower bound < -3) nor shown large
    row = _row(-0.06, 0.0, -0.01)
    strict = evaluate_gate(parse_gate({"knowledge_retention": {"min_diff": -3}}), [row])
    lenient = evaluate_gate(parse_gate({"knowledge_retention": {"min_diff": -3}}, mode="lenient"), [row])
    assert [r["passed"] for r in strict] == [False] and [r["passed"] for r in lenient] == [True]
    assert strict[0]["value"] == pytest.approx(-6.0) and lenient[0]["value"] == pytest.approx(0.0)
    assert strict[0]["line"].startswith("FAIL ft knowledge_retention: lower bound -6.0 pts, needs >= -3")
    # shown small passes both; shown large fails both
    assert all(r["passed"] for m in ("strict", "lenient")
               for r in evaluate_gate(parse_gate({"knowledge_retention": {"min_diff": -3}}, mode=m), [_row(-0.02, 0.0)]))
    assert not any(r["passed"] for m in ("strict", "lenient")
                   for r in evaluate_gate(parse_gate({"knowledge_retention": {"min_diff": -3}}, mode=m),
                                          [_row(-0.3, -0.05)]))
    # an upper bound (drift): strict checks the interval's upper end, lenient its lower end
    gate = {"drift": {"max": 0.035}}
    assert not evaluate_gate(parse_gate(gate), [row])[0]["passed"]
    assert evaluate_gate(parse_gate(gate, mode="lenient"), [row])[0]["passed"]
    # an axis the run did not measure cannot pass
    (missing,) = evaluate_gate(parse_gate({"behaviour_retention": {"min_diff": -5}}), [row])
    assert not missing["passed"] and "not measured" in missing["line"]


@pytest.mark.parametrize("text, needle", [
    ("knowledge_retenshun: {min_diff: -3}", "unknown rule 'knowledge_retenshun'"),
    ("drift: {maximum: 0.05}", "drift: unknown key 'maximum'"),
    ("drift: {max: 0.05, min_diff: 0}", "drift: give one bound"),
    ("domain: {min_gain: lots}", "domain.min_gain: 'lots' is not a number"),
    ("mode: sloppy\ndrift: {max: 1}", "mode 'sloppy'; use strict or lenient"),
    ("- drift", "a gate is a mapping of rules"),
])
def test_bad_gate_files_name_the_key(tmp_path, text, needle):
    path = tmp_path / "gate.yaml"
    path.write_text(text)
    with pytest.raises(RetainError, match=needle):
        load_gate(str(path))


def test_inline_gate_and_mode_override():
    gate = load_gate("{mode: lenient, lm_eval:my_task: {min_diff: -2}, domain: {min_gain: 0}}", mode="strict")
    assert gate.mode == "strict" and [(r.name, r.bound, r.threshold) for r in gate.rules] == [
        ("lm_eval:my_task", "min", -2.0), ("domain", "min", 0.0)]


@pytest.fixture(scope="module")
def identity_adapter(tiny_llama_path, tmp_path_factory):
    """An untrained LoRA (B = 0): the base model exactly."""
    from retain.adapters.config import LoRAConfig
    from retain.adapters.methods import prepare_model, save_finetuned
    from retain.models import load_model

    base, tok = load_model(tiny_llama_path)
    out = tmp_path_factory.mktemp("identity") / "model"
    save_finetuned(prepare_model(base, "lora", lora=LoRAConfig(r=2)), out, tiny_llama_path, tok)
    return out


SMALL = ["--profile", "tiny", "--probes", "{arc_easy: 30}", "--domain_items", "6"]


def test_identity_adapter_passes_a_strict_gate_and_gate_json_says_so(tiny_llama_path, identity_adapter, tmp_path,
                                                                      capsys):
    gate = tmp_path / "gate.yaml"
    gate.write_text("knowledge_retention: {min_diff: -3}\ndrift: {max: 0.001}\ndomain: {min_gain: 0}\n")
    out = tmp_path / "eval"
    rc = main(["eval", "--base", tiny_llama_path, "--tuned", f"[{identity_adapter}]", "--out", str(out), *SMALL,
               "--gate", str(gate)])
    stdout = capsys.readouterr().out
    summary = json.loads((out / "gate.json").read_text())
    assert rc == 0 and summary["passed"] and summary["mode"] == "strict"
    assert [r["rule"] for r in summary["results"]] == ["knowledge_retention", "drift", "domain"]
    assert "gate (strict): passed" in stdout and stdout.count("  pass ") == 3
    # the saved evaluation gated again with other rules, no model loaded: a failing rule exits 1
    (out / "gate.json").unlink()
    rc = main(["eval", "--out", str(out), "--gate", "{drift: {max: 0.0}, behaviour_retention: {min_diff: -3}}"])
    stdout = capsys.readouterr().out
    again = json.loads((out / "gate.json").read_text())
    assert rc == 1 and not again["passed"] and [r["rule"] for r in again["results"]] == ["drift", "behaviour_retention"]
    assert "not measured in this run" in again["results"][1]["line"] and f"on {out / 'eval.json'}: FAILED" in stdout
    # nothing saved to gate: one error line naming the file
    rc = main(["eval", "--out", str(tmp_path / "none"), "--gate", "{drift: {max: 0.1}}"])
    assert rc == 2 and "no saved evaluation at" in capsys.readouterr().err and not (tmp_path / "none").exists()
    # a rule this run cannot measure is a user error before any model loads
    rc = main(["eval", "--base", tiny_llama_path, "--tuned", f"[{identity_adapter}]", "--out", str(tmp_path / "e2"),
               *SMALL, "--domain", "none", "--gate", "{domain: {min_gain: 0}}"])
    err = capsys.readouterr().err
    assert rc == 2 and "rule domain: this run does not measure it" in err and not (tmp_path / "e2").exists()


FACTS = [
    ("What color is the sky on a clear day?", ["blue", "green", "red"], 0),
    ("How many legs does a spider have?", ["six", "eight", "ten"], 1),
    ("What is frozen water called?", ["steam", "ice", "sand"], 1),
    ("Which planet do we live on?", ["Mars", "Earth", "Venus"], 1),
    ("What do bees make?", ["honey", "milk", "silk"], 0),
    ("Which animal is known as the king of the jungle?", ["mouse", "lion", "cow"], 1),
    ("What gas do plants take in from the air?", ["carbon dioxide", "helium", "neon"], 0),
    ("Which organ pumps blood through the body?", ["heart", "lung", "stomach"], 0),
    ("How many days are in a week?", ["five", "seven", "nine"], 1),
    ("What is the largest ocean on Earth?", ["Pacific Ocean", "Arctic Ocean", "Indian Ocean"], 0),
    ("Which star is at the center of our solar system?", ["the Moon", "the Sun", "Polaris"], 1),
    ("Which season comes after winter?", ["spring", "autumn", "summer"], 0),
    ("What is the opposite of hot?", ["cold", "warm", "loud"], 0),
    ("How many hours are in a day?", ["twelve", "twenty-four", "sixty"], 1),
    ("Which metal is attracted to a magnet?", ["iron", "gold", "aluminum"], 0),
    ("What shape has three sides?", ["square", "triangle", "circle"], 1),
    ("What do fish use to breathe?", ["gills", "lungs", "wings"], 0),
    ("Which is the closest planet to the Sun?", ["Mercury", "Neptune", "Saturn"], 0),
    ("What is the main language spoken in Brazil?", ["Portuguese", "German", "Japanese"], 0),
    ("Which instrument has black and white keys?", ["piano", "drum", "flute"], 0),
    ("What is H2O commonly called?", ["water", "salt", "sugar"], 0),
    ("What part of the plant makes food using sunlight?", ["leaf", "root", "seed"], 0),
]
QUESTIONS = ["Tell me about dogs.", "What is 2+2?", "Who wrote Hamlet?", "Where is Paris?", "Name a fruit.",
             "How do airplanes fly?", "What is photosynthesis?", "Give me a color.", "Why is the sea salty?",
             "Describe a cat.", "What is gravity?", "How tall is Everest?", "What is a verb?",
             "Who painted the Mona Lisa?", "What is the weather like?", "What year is it?"]


@pytest.mark.slow
def test_a_lora_trained_to_answer_one_word_fails_the_gate_at_the_end_of_retain_train(smollm2_path, tmp_path, capsys):
    """SmolLM2 + a LoRA trained to answer "Banana." to everything: retain train's eval section gates it,
    exits 1 and keeps the run folder; the untrained adapter (B = 0) passes the same gate."""
    import yaml

    from retain.adapters.config import LoRAConfig
    from retain.adapters.methods import prepare_model, save_finetuned
    from retain.models import load_model

    facts, data = tmp_path / "facts.jsonl", tmp_path / "oneword.jsonl"
    facts.write_text("".join(json.dumps({"question": q, "choices": c, "answer": a}) + "\n" for q, c, a in FACTS))
    data.write_text("".join(json.dumps({"messages": [{"role": "user", "content": q},
                                                     {"role": "assistant", "content": "Banana."}]}) + "\n"
                            for q in QUESTIONS))
    gate = {"knowledge_retention": {"min_diff": -10}}
    # the facts file alone: the gate's rule is on it (no built-in probes, no behaviour questions)
    ev = {"profile": "tiny", "probes": {}, "behaviour": {}, "probe_files": [str(facts)], "domain": "none",
          "gate": json.dumps(gate)}
    recipe = {"model": {"name": smollm2_path}, "method": "lora", "lora": {"r": 8, "alpha": 16, "dropout": 0.0},
              "datasets": [{"path": str(data)}], "optim": {"lr": 1e-2, "schedule": "constant"},
              "train": {"output_dir": str(tmp_path / "run"), "max_steps": 6, "batch_size": 4, "max_length": 40,
                        "progress": False}, "eval": ev}
    (tmp_path / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    assert main(["train", str(tmp_path / "recipe.yaml")]) == 1
    cap = capsys.readouterr()
    summary = json.loads((tmp_path / "run" / "eval" / "gate.json").read_text())
    assert not summary["passed"] and summary["results"][0]["rule"] == "knowledge_retention"
    assert summary["results"][0]["hi"] < 0  # a loss shown, not just possible
    assert "gate (strict): FAILED" in cap.out and "failed the forgetting gate" in cap.err
    for kept in ("model/adapter_model.safetensors", "train_result.json", "train_log.jsonl", "eval/eval.md"):
        assert (tmp_path / "run" / kept).exists(), kept
    # the identity adapter of the same base passes the same gate
    base, tok = load_model(smollm2_path)
    save_finetuned(prepare_model(base, "lora", lora=LoRAConfig(r=8)), tmp_path / "identity", smollm2_path, tok)
    assert main(["eval", "--base", smollm2_path, "--tuned", f"[{tmp_path / 'identity'}]", "--out",
                 str(tmp_path / "id_eval"), "--profile", "tiny", "--probes", "{}", "--behaviour", "{}", "--probe_files", f"[{facts}]",
                 "--domain", "none", "--reference", str(tmp_path / "run" / "eval"), "--gate", json.dumps(gate)]) == 0
