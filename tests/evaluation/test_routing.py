"""``retain routing``: router mass per layer and sample type, written as JSON, markdown and a heatmap."""

from __future__ import annotations

import json

import torch

from retain.adapters.config import LoRAMoEConfig
from retain.adapters.methods import prepare_model, save_finetuned
from retain.cli import main

ROWS = [
    {"messages": [{"role": "user", "content": "Who wrote Hamlet?"},
                  {"role": "assistant", "content": "William Shakespeare."}], "sample_type": 1},
    {"messages": [{"role": "user", "content": "Options: A) 3 B) 4. What is 2+2?"},
                  {"role": "assistant", "content": "B, because two plus two is four."}], "sample_type": 0},
    {"messages": [{"role": "user", "content": "What is the boiling point of water at sea level in Celsius?"},
                  {"role": "assistant", "content": "100 degrees."}], "sample_type": "world"},
]


def _adapter(tmp_path, tiny_llama_path):
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(tiny_llama_path, dtype=torch.float32)
    model = prepare_model(model, "loramoe", loramoe=LoRAMoEConfig(num_experts=4, rank=2))
    save_finetuned(model, tmp_path / "adapter", base_model=tiny_llama_path)
    return model


def test_routing_report_cli(tmp_path, tiny_llama_path, capsys):
    model = _adapter(tmp_path, tiny_llama_path)
    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    rc = main(["routing", str(tmp_path / "adapter"), "--data", str(data), "--out", str(tmp_path / "rep"),
               "--batch_size", "2"])
    assert rc == 0
    out, err = capsys.readouterr()  # the output rule: the table is a result (stdout), the log line status
    assert "world-group share" in out and "world-group share" not in err
    assert f"wrote {tmp_path / 'rep'}" in err  # logging is configured once by the CLI (it used to go nowhere)
    assert main(["--quiet", "routing", str(tmp_path / "adapter"), "--data", str(data), "--out", str(tmp_path / "q")]) == 0
    out, err = capsys.readouterr()
    assert "world-group share" in out and err == ""  # --quiet: results only
    stats = json.loads((tmp_path / "rep" / "routing.json").read_text())
    assert (tmp_path / "rep" / "routing.png").stat().st_size > 1000
    assert "| model.layers.0.mlp.gate_proj |" in (tmp_path / "rep" / "routing.md").read_text()
    assert set(stats["types"]) == {"world", "task"} and stats["types"]["world"]["samples"] == 2
    assert len(stats["layers"]) == 6

    # Independent check on one layer: softmax(W_r x) averaged over the real tokens of each type.
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_llama_path)
    layer = model.get_submodule("model.layers.1.mlp.down_proj")
    seen = []
    handle = layer.register_forward_hook(lambda m, args, out: seen.append(m.gates(args[0])[0]))
    expected = {}
    for row in ROWS:
        ids = tok.apply_chat_template(row["messages"], tokenize=False)
        enc = tok(ids, add_special_tokens=False, return_tensors="pt")
        with torch.no_grad():
            model(**enc)
        t = "task" if row["sample_type"] == 0 else "world"
        s, n = expected.get(t, (0, 0))
        expected[t] = (s + seen[-1].sum(0), n + enc.input_ids.shape[1])
    handle.remove()
    i = stats["layers"].index("model.layers.1.mlp.down_proj")
    for t, (s, n) in expected.items():
        assert stats["types"][t]["tokens"] == n  # padding (batch of 2 with unequal lengths) not counted
        torch.testing.assert_close(torch.tensor(stats["types"][t]["mass"][i]), s / n, rtol=1e-4, atol=1e-5)
        for row in stats["types"][t]["mass"]:
            assert abs(sum(row) - 1) < 1e-4  # per-token probabilities


def test_routing_report_errors(tmp_path, tiny_llama_path, capsys):
    _adapter(tmp_path, tiny_llama_path)
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"messages": [{"role": "user", "content": "x"}], "sample_type": 7}) + "\n")
    assert main(["routing", str(tmp_path / "adapter"), "--data", str(bad)]) == 2
    assert "bad.jsonl:1: sample_type 7" in capsys.readouterr().err
    good = json.dumps({"messages": [{"role": "user", "content": "x"}], "sample_type": "world"})
    bad.write_text(good + "\n\n" + json.dumps({"messages": [{"role": "user", "content": "x"}], "sample_type": "wrld"}))
    assert main(["routing", str(tmp_path / "adapter"), "--data", str(bad)]) == 2
    assert "bad.jsonl:3: sample_type 'wrld'" in capsys.readouterr().err  # the file's line, blank lines counted
    assert main(["routing", str(tmp_path / "adapter")]) == 2
    assert "--data: required" in capsys.readouterr().err
