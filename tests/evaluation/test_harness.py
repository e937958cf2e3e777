"""lm-evaluation-harness on in-memory models, offline, with a local task YAML over a local JSONL."""

from __future__ import annotations

import json

import pytest

from retain.evaluation import scoring
from retain.evaluation.harness import run_harness

ITEMS = [
    {"question": "What color is the sky on a clear day?", "choices": ["blue", "green", "red"], "answer": 0},
    {"question": "How many legs does a spider have?", "choices": ["six", "eight", "ten"], "answer": 1},
    {"question": "What is frozen water called?", "choices": ["steam", "ice", "sand"], "answer": 1},
]


@pytest.fixture
def task_dir(tmp_path):
    data = tmp_path / "items.jsonl"
    data.write_text("".join(json.dumps(it) + "\n" for it in ITEMS), encoding="utf-8")
    (tmp_path / "tiny_mc.yaml").write_text(
        "task: tiny_mc\n"
        "dataset_path: json\n"
        f"dataset_kwargs:\n  data_files:\n    test: {data}\n"
        "test_split: test\n"
        "output_type: multiple_choice\n"
        "doc_to_text: \"Question: {{question}}\\nAnswer:\"\n"
        "doc_to_choice: \"{{choices}}\"\n"
        "doc_to_target: \"{{answer}}\"\n"
        "metric_list:\n  - metric: acc\n",
        encoding="utf-8",
    )
    return tmp_path


def _harness_logliks(out) -> list[list[float]]:
    samples = sorted(out["samples"]["tiny_mc"], key=lambda s: s["doc_id"])
    return [[float(r[0][0]) for r in s["resps"]] for s in samples]


def test_simple_evaluate_on_in_memory_model_matches_our_scores(tiny, task_dir, monkeypatch):
    import socket

    def no_network(*a, **k):
        raise AssertionError("lm-eval tried to open a network connection")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    model, tok = tiny
    out = run_harness(model, tok, ["tiny_mc"], include_path=task_dir, batch_size=4, log_samples=True)
    acc = out["results"]["tiny_mc"]["acc,none"]
    ours = scoring.choice_logprobs(model, tok, [f"Question: {it['question']}\nAnswer:" for it in ITEMS],
                                   [[" " + c for c in it["choices"]] for it in ITEMS])
    theirs = _harness_logliks(out)
    for a, b in zip(ours, theirs):
        assert a == pytest.approx(b, abs=1e-3)
    expected_acc = sum(max(range(3), key=row.__getitem__) == it["answer"] for row, it in zip(theirs, ITEMS)) / 3
    assert acc == pytest.approx(expected_acc)


def test_simple_evaluate_on_peft_and_loramoe_models(tiny, task_dir):
    """The adapter takes wrapped models as they are: PEFT LoRA (PeftModel) and LoRAMoE-injected."""
    import copy

    from retain.adapters.config import LoRAConfig, LoRAMoEConfig
    from retain.adapters.methods import prepare_model

    model, tok = tiny
    for method, kw in (("lora", {"lora": LoRAConfig()}), ("loramoe", {"loramoe": LoRAMoEConfig()})):
        wrapped = prepare_model(copy.deepcopy(model), method, **kw)
        out = run_harness(wrapped, tok, ["tiny_mc"], include_path=task_dir, batch_size=4)
        assert 0.0 <= out["results"]["tiny_mc"]["acc,none"] <= 1.0


def test_unknown_task_is_a_clean_error(tiny, task_dir):
    from retain.errors import RetainError

    with pytest.raises(RetainError, match="lm-eval tasks not found"):
        run_harness(*tiny, ["no_such_task"], include_path=task_dir)


def test_harness_samples_pair_with_the_base_and_feed_the_gate(tiny, tiny_perturbed, task_dir):
    from retain.evaluation.gate import evaluate_gate, parse_gate
    from retain.evaluation.harness import paired_tasks, sample_outcomes

    outs = [run_harness(m, tok, ["tiny_mc"], include_path=task_dir, batch_size=4, log_samples=True)
            for m, tok in (tiny, tiny_perturbed)]
    base, tuned = (sample_outcomes(o)["tiny_mc"] for o in outs)
    assert base["metric"] == "acc" and base["doc_ids"] == [0, 1, 2]
    for o, s in zip(outs, (base, tuned)):  # per sample: 1 when the gold choice has the highest log-likelihood
        want = [float(max(range(3), key=row.__getitem__) == it["answer"]) for row, it in zip(_harness_logliks(o), ITEMS)]
        assert s["values"] == want
    entry = paired_tasks({"tiny_mc": tuned}, {"tiny_mc": base})["lm_eval:tiny_mc"]
    diffs = [t - b for t, b in zip(tuned["values"], base["values"])]
    assert entry["diff"] == pytest.approx(sum(diffs) / 3) and entry["n"] == 3 and entry["binary"]
    assert (entry["lost"], entry["gained"]) == (diffs.count(-1.0), diffs.count(1.0))
    row = {"model": "ft", "vs_base": {"lm_eval:tiny_mc": entry}}
    assert evaluate_gate(parse_gate({"lm_eval:tiny_mc": {"min_diff": -100}}), [row])[0]["passed"]
    assert not evaluate_gate(parse_gate({"lm_eval:tiny_mc": {"min_diff": 101}}, mode="lenient"), [row])[0]["passed"]
