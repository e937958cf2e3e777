"""retain eval's verdict (one sentence per axis, the one wording rule), tables that fit 80 columns, and
the item-level diff of what flipped."""

from __future__ import annotations

import json

from retain.evaluation.stats import NOT_DETECTABLE


def _iv(diff, lo, hi, n, **kw):
    return {"diff": diff, "lo": lo, "hi": hi, "n": n, "level": 0.95, **kw}


BASE = {"model": "base", "domain_score": 0.5, "retention": 1.0, "margin_change": 0.0, "kl_drift": 0.0,
        "probe_accuracy": 0.4, "domain": {"name": "my_heldout"},
        "probes": {"sciq": {"accuracy": 0.5, "n": 40, "known": 18, "retained": 18},
                   "file:facts.jsonl": {"accuracy": 0.125, "n": 8, "known": 0, "retained": 0}}}


def _tuned(**vs):
    return {"model": "a-rather-long-fine-tune-name/model", "domain_score": 0.7, "retention": 16 / 18,
            "margin_change": -0.01, "kl_drift": 0.048, "probe_accuracy": 0.38, "domain": {"name": "my_heldout"},
            "probes": BASE["probes"],
            "vs_base": {"domain": _iv(0.2, 0.05, 0.35, 40, lost=2, gained=10),
                        "retention": _iv(-2 / 18, -5 / 18, 0.0, 18, lost=2, gained=0),
                        "margin": _iv(-0.01, -0.03, 0.01, 18), "drift": _iv(0.048, 0.038, 0.058, 32), **vs}}


def test_one_sentence_per_measured_axis_worded_by_the_interval():
    from retain.evaluation.verdict import verdict_lines

    lines = verdict_lines([BASE, _tuned()])
    assert len(lines) == 3  # learned, kept knowledge, drift; no behaviour axis measured: no sentence
    learned, kept, drift = lines
    assert "learned: my_heldout +20.0 [+5.0, +35.0] pts vs the base (10 gained, 2 lost of 40" in learned
    assert learned.endswith("a detectable gain")
    # the example: 2 of 18 lost, the interval touches 0 -> not called a loss
    assert "kept knowledge: lost 2 of 18 known facts (-11.1 [-27.8, +0.0] pts): " + NOT_DETECTABLE in kept
    assert "drift: KL(base ‖ tuned) 0.048 nats/token, interval [0.038, 0.058] over 32 chat prompts" in drift
    shown = verdict_lines([_tuned(retention=_iv(-0.2, -0.35, -0.05, 18, lost=4, gained=0))])[1]
    assert shown.endswith("lost 4 of 18 known facts (-20.0 [-35.0, -5.0] pts): a detectable loss")
    # the behaviour axis (chat probes) gets its sentence as soon as compare() reports it
    behaviour = verdict_lines([_tuned(behaviour_retention=_iv(-0.1, -0.3, 0.0, 10, lost=1, gained=0))])
    assert any("kept behaviour: lost 1 of 10 chat answers the base got right" in b for b in behaviour)


def test_tables_print_whole_in_80_columns_with_intervals_as_brackets():
    from rich.console import Console

    from retain.evaluation.report import eval_markdown_table, print_eval_table

    rows = [BASE, _tuned(behaviour_retention=_iv(-0.1, -0.3, 0.0, 10, lost=1, gained=0),
                         **{"lm_eval:my_task": _iv(-0.05, -0.15, 0.05, 40, lost=3, gained=1, metric="acc")})]
    con = Console(width=80, record=True)
    print_eval_table(rows, console=con)
    text = con.export_text()
    assert max(len(line) for line in text.splitlines()) <= 80 and "…" not in text
    for words in ("kept knowledge %", "kept behaviour %", "learned (my_heldout) %", "drift nats/tok",
                  "-11.1 [-27.8, +0.0]", "lm-eval my_task (acc)", "vs base [95 %]", "kept 18 / 18", "probe file:facts.jsonl %"):
        assert words in text, words
    md = eval_markdown_table(rows)
    assert "| a-rather-long-fine-tune-name/model | kept knowledge % | 88.9 | -11.1 [-27.8, +0.0] | 18 |" in md
    # a probe the base knows nothing of reads '–', not "12.5 (0/0 kept)"
    assert "| base | file:facts.jsonl | 12.5 | 8 | – |" in md and "0/0" not in md


def test_compact_results_keep_each_models_answer_and_flips_show_them():
    from retain.evaluation.flips import flip_lines, flips_markdown, item_flips
    from retain.evaluation.probes import Probe
    from retain.evaluation.suite import compact_results

    mc = Probe("file:mc.jsonl", "mc", [{"id": "m1", "question": "Largest planet?", "choices": ["Mars", "Jupiter"],
                                        "answer": 1},
                                       {"id": "m2", "question": "H2O is?", "choices": ["water", "salt"], "answer": 0}])
    gen = Probe("file:gen.jsonl", "gen", [{"id": "g1", "question": "Capital of Peru?", "answers": ["Lima"]}])
    base = compact_results({
        mc.name: [{"id": "m1", "correct": True, "margin": 0.3, "pred": 1}, {"id": "m2", "correct": False, "margin": -1, "pred": 1}],
        gen.name: [{"id": "g1", "correct": False, "margin": 0.0, "prediction": "Cusco"}]})
    tuned = compact_results({
        mc.name: [{"id": "m1", "correct": False, "margin": -0.1, "pred": 0}, {"id": "m2", "correct": False, "margin": -1, "pred": 1}],
        gen.name: [{"id": "g1", "correct": True, "margin": 1.0, "prediction": "Lima"}]})
    assert base[mc.name]["pred"] == [1, 1] and base[gen.name]["prediction"] == ["Cusco"]
    flips = item_flips("ft", tuned, base, [mc, gen, None], {mc.name: ["m1"]})
    assert flips == [
        {"model": "ft", "probe": mc.name, "id": "m1", "change": "lost", "known": True, "question": "Largest planet?",
         "gold": "Jupiter", "base_answer": "Jupiter", "tuned_answer": "Mars"},
        {"model": "ft", "probe": gen.name, "id": "g1", "change": "gained", "known": False,
         "question": "Capital of Peru?", "gold": "Lima", "base_answer": "Cusco", "tuned_answer": "Lima"}]
    assert flip_lines(flips, "lost") == ["[lost, known] ft file:mc.jsonl m1: Largest planet? | gold: Jupiter | "
                                         "base: 'Jupiter' | tuned: 'Mars'"]
    md = flips_markdown(flips)
    assert "2 items changed (1 lost, 1 gained)" in md and "| ft | file:mc.jsonl | lost (known) | Largest planet? |" in md


def test_show_prints_an_earlier_runs_flipped_items_without_loading_a_model(tmp_path, capsys):
    from retain.cli import main

    rows = [{"model": "ft", "probe": "sciq", "id": str(i), "change": c, "known": True, "question": f"q{i}?",
             "gold": "g", "base_answer": "g", "tuned_answer": "x"} for i, c in enumerate(["lost", "gained", "lost"])]
    (tmp_path / "eval_items.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert main(["eval", "--out", str(tmp_path), "--show", "lost"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert [line.split(": ")[0] for line in out] == ["[lost, known] ft sciq 0", "[lost, known] ft sciq 2"]
    assert main(["eval", "--out", str(tmp_path / "none"), "--show", "gained"]) == 2
    assert "eval_items.jsonl not found" in capsys.readouterr().err
