"""--domain on your own data: any training format, a folder or a run folder; scored by shape (labels by
the most likely option, free-form replies by their mean log-likelihood)."""

from __future__ import annotations

import json

import pytest

from retain.evaluation.domain_file import load_domain_file, score_domain_items

REVIEWS = [("A wonderful film.", "positive"), ("Dull and far too long.", "negative"), ("I loved every minute.", "positive"),
           ("A waste of money.", "negative"), ("Great acting.", "positive"), ("Boring plot.", "negative")]
FAQ = [("How do I reset the router?", "Hold the reset button for 10 seconds."),
       ("What is the admin address?", "Type 192.168.1.1 in your browser."),
       ("How many devices can it handle?", "Up to 64 devices at the same time.")]


def _write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def test_shape_decides_the_scoring_in_every_training_format(tmp_path):
    alpaca = _write(tmp_path / "sst.jsonl", [{"instruction": q, "output": a} for q, a in REVIEWS])
    probe = load_domain_file(str(alpaca))
    assert probe.name == "domain:sst" and probe.kind == "label"
    assert probe.items[1]["choices"] == ["positive", "negative"] and probe.items[1]["answer"] == 1
    sharegpt = _write(tmp_path / "faq.jsonl", [{"conversations": [{"from": "human", "value": q}, {"from": "gpt", "value": a}]}
                                               for q, a in FAQ])
    probe = load_domain_file(str(sharegpt))
    assert probe.kind == "loglik" and probe.items[0]["reply"] == FAQ[0][1]
    assert probe.items[0]["messages"] == [{"role": "user", "content": FAQ[0][0]}]
    # a folder: every data file inside; a run folder: its heldout.jsonl only
    folder = tmp_path / "mine"
    folder.mkdir()
    _write(folder / "a.jsonl", [{"prompt": q, "completion": a} for q, a in FAQ[:2]])
    _write(folder / "b.jsonl", [{"messages": [{"role": "user", "content": FAQ[2][0]},
                                              {"role": "assistant", "content": FAQ[2][1]}]}])
    assert [it["id"] for it in load_domain_file(str(folder)).items] == ["a-1", "a-2", "b-1"]
    _write(folder / "heldout.jsonl", [{"messages": [{"role": "user", "content": "x?"}, {"role": "assistant", "content": "y."}]}])
    assert [it["id"] for it in load_domain_file(str(folder)).items] == ["heldout-1"]


def test_label_items_pick_the_likeliest_option_and_freeform_items_score_nats_per_token(tiny, tmp_path):
    from retain.evaluation import scoring

    model, tok = tiny
    labels = load_domain_file(str(_write(tmp_path / "sst.jsonl", [{"prompt": q, "completion": a} for q, a in REVIEWS])))
    res = score_domain_items(model, tok, labels)
    for it, r in zip(labels.items, res):
        ctx = tok.apply_chat_template(it["messages"], tokenize=False, add_generation_prompt=True)
        ll = scoring.continuation_logprobs(model, tok, [(ctx, c) for c in it["choices"]])
        assert r["pred"] == max(range(2), key=ll.__getitem__) and r["correct"] == (r["pred"] == it["answer"])
    free = load_domain_file(str(_write(tmp_path / "faq.jsonl", [{"prompt": q, "completion": a} for q, a in FAQ])))
    res = score_domain_items(model, tok, free)
    it = free.items[0]
    ctx = tok.apply_chat_template(it["messages"], tokenize=False, add_generation_prompt=True)
    total = scoring.continuation_logprobs(model, tok, [(ctx, it["reply"])])[0]
    n = len(tok(it["reply"], add_special_tokens=False)["input_ids"])
    assert res[0]["score"] == pytest.approx(total / n, rel=1e-5) and res[0]["score"] < 0


def test_eval_scores_a_freeform_domain_file_against_the_base(tiny_llama_path, tmp_path, capsys):
    from retain.cli import main

    data = _write(tmp_path / "faq.jsonl", [{"prompt": q, "completion": a} for q, a in FAQ])
    out = tmp_path / "eval"
    assert main(["eval", "--base", tiny_llama_path, "--tuned", f"[{tiny_llama_path}]", "--out", str(out),
                 "--profile", "tiny", "--probes", "{arc_easy: 6}", "--domain", str(data)]) == 0
    base, tuned = json.loads((out / "eval.json").read_text())["rows"]
    assert tuned["domain"]["metric"] == "loglik" and tuned["domain"]["n"] == 3
    assert tuned["domain_score"] == pytest.approx(base["domain_score"]) and tuned["domain_score"] < 0
    assert tuned["vs_base"]["domain"]["diff"] == pytest.approx(0.0, abs=1e-6)
    assert "mean answer log-likelihood" in capsys.readouterr().out
    bad = _write(tmp_path / "bad.jsonl", [{"prompt": "q", "completion": "a"}, {"question": "q"}])
    assert main(["eval", "--base", tiny_llama_path, "--out", str(tmp_path / "e2"), "--domain", str(bad)]) == 2
    assert f"{bad}:2: record lacks" in capsys.readouterr().err and not (tmp_path / "e2").exists()
