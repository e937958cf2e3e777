"""The report module: intervals shown as ± and [lo, hi], words that follow the intervals, and one row
type read from both the demo's and retain eval's rows."""

from __future__ import annotations

from retain.evaluation.report import (Row, demo_markdown, eval_markdown_table, markdown_table, plot_demo, plot_eval,
                                     verdicts)


def _iv(diff, lo, hi, n=100):
    return {"diff": diff, "lo": lo, "hi": hi, "n": n, "level": 0.95}


def _rows(ret_vs_full):
    base = {"name": "base", "label": "base model", "domain_score": 0.2, "retention": 1.0, "margin_change": 0.0,
            "kl_drift": 0.0, "probe_accuracy": 0.4, "probes": {"sciq": {"accuracy": 0.5, "known": 10, "retained": 10}}}
    full = {"name": "full", "label": "full FT", "domain_score": 0.45, "retention": 0.8, "margin_change": -0.05,
            "kl_drift": 0.5, "probe_accuracy": 0.35, "lr": 1e-4, "loss_curve": [2.0, 1.0, 0.5],
            "probes": {"sciq": {"accuracy": 0.45, "known": 10, "retained": 8}},
            "vs_base": {"domain": _iv(0.25, 0.18, 0.32), "retention": _iv(-0.2, -0.3, -0.1),
                        "margin": _iv(-0.05, -0.07, -0.03), "drift": _iv(0.5, 0.4, 0.6)}, "vs_full": None}
    moe = {"name": "loramoe_tg", "label": "LoRAMoE + LBC + TG", "domain_score": 0.40, "retention": 0.9,
           "margin_change": -0.01, "kl_drift": 0.1, "probe_accuracy": 0.39, "lr": 1e-3, "loss_curve": [2.0, 1.2, 0.7],
           "probes": {"sciq": {"accuracy": 0.49, "known": 10, "retained": 9}},
           "vs_base": {"domain": _iv(0.20, 0.12, 0.28), "retention": _iv(-0.1, -0.2, 0.0),
                       "margin": _iv(-0.01, -0.02, 0.005), "drift": _iv(0.1, 0.08, 0.12)},
           "vs_full": {"domain": _iv(-0.05, -0.12, 0.02), "retention": ret_vs_full,
                       "margin": _iv(0.04, 0.02, 0.06), "drift": _iv(-0.4, -0.5, -0.3)}}
    return [base, full, moe]


def test_words_follow_the_intervals():
    excluded = verdicts(_rows(_iv(0.10, 0.02, 0.18)))[1]
    assert "vs full FT, knowledge: kept more (+10.0 [+2.0, +18.0] pts)" in excluded
    straddling = verdicts(_rows(_iv(0.10, -0.01, 0.21)))[1]
    assert "kept more" not in straddling.split("margins")[0].split("knowledge:")[-1]
    assert "vs full FT, knowledge: no detectable difference (+10.0 [-1.0, +21.0] pts)" in straddling
    full = verdicts(_rows(_iv(0, 0, 0)))[0]
    assert "domain score: learned (gain over the base) (+25.0 [+18.0, +32.0] pts vs base)" in full
    assert "forgot some" in full
    # The LoRAMoE row: its retention interval vs the base touches 0, so no forgetting claim.
    assert "knowledge (log-likelihood, few-shot): no detectable forgetting" in straddling
    assert "vs full FT, domain: no detectable difference" in straddling
    assert "vs full FT, drift: drifted less" in straddling


def test_table_shows_plus_minus_and_report_and_plot_render(tmp_path):
    rows = _rows(_iv(0.10, 0.02, 0.18))
    table = markdown_table(rows)
    assert "| full FT | 45.0 | +25.0 ± 7.0 | – | 80.0 ± 10.0 | -0.050 ± 0.020 | – | – | 0.500 ± 0.100 |" in table
    summary = {"rows": rows, "config": {"profile": "default", "model": "smollm2", "domain": "skills"},
               "profile": {"steps": 3, "batch_size": 8, "max_length": 192, "tg_levels": [[2, 8]], "tg_share": 0.25,
                           "lr": {"full": 1e-4}, "lr_rule": "a written rule"},
               "total_seconds": 60, "known": {"sciq": 10}, "stages": {"train full": 12.0}}
    md = demo_markdown(summary)
    assert "a written rule" in md and "[+2.0, +18.0]" in md and "train full 12" in md
    plot_demo(rows, tmp_path / "demo.png")
    assert (tmp_path / "demo.png").stat().st_size > 5000


def test_a_one_label_model_is_flagged_not_called_learning():
    rows = _rows(_iv(0.0, -0.01, 0.01))
    rows[2]["domain"] = {"name": "sst2", "accuracy": 0.40, "balanced_accuracy": 0.5, "majority_share": 0.96}
    rows[1]["domain"] = {"name": "sst2", "accuracy": 0.45, "balanced_accuracy": 0.62, "majority_share": 0.55}
    full, moe = verdicts(rows)
    assert "96 % of its answers are one option (balanced accuracy 50.0 %): a label-prior shift" in moe
    assert "label-prior" not in full


def test_methods_are_also_compared_with_lora_in_words_and_a_table():
    rows = _rows(_iv(0.10, 0.02, 0.18))
    lora = {**rows[1], "name": "lora", "label": "LoRA", "vs_full": {k: _iv(0.0, -0.01, 0.01) for k in
                                                                   ("domain", "retention", "margin", "drift")}}
    rows[2]["vs_lora"] = {"domain": _iv(-0.08, -0.15, -0.01), "retention": _iv(0.02, -0.03, 0.07),
                          "margin": _iv(0.0, -0.01, 0.01), "drift": _iv(0.2, 0.1, 0.3)}
    rows = [rows[0], rows[1], lora, rows[2]]
    moe = verdicts(rows)[2]
    assert "vs LoRA, domain: learned less (-8.0 [-15.0, -1.0] pts)" in moe
    assert "vs LoRA, knowledge: no detectable difference (+2.0 [-3.0, +7.0] pts)" in moe
    assert "vs LoRA, drift: drifted more" in moe
    assert "vs LoRA" not in verdicts(rows)[1]  # LoRA is not compared with itself
    summary = {"rows": rows, "config": {"profile": "default", "model": "smollm2", "domain": "sst2"},
               "profile": {"steps": 3, "batch_size": 8, "max_length": 192, "tg_levels": [[2, 8]], "tg_share": 0.25,
                           "lr": {"full": 1e-4}}, "total_seconds": 60, "known": {"sciq": 10}}
    md = demo_markdown(summary)
    assert "| method vs LoRA | domain (pts) |" in md and "| LoRAMoE + LBC + TG | -8.0 [-15.0, -1.0] |" in md


def test_one_row_type_reads_demo_and_eval_rows_and_both_renderers_take_either(tmp_path):
    demo_row = _rows(_iv(0.1, 0.02, 0.18))[1]
    eval_row = {"model": "ft-a", "path": "runs/a/model", **{k: v for k, v in demo_row.items() if k not in ("name", "label")}}
    eval_base = {"model": "base", "path": "smollm2", **{k: v for k, v in _rows(None)[0].items() if k not in ("name", "label")}}
    a, b, base = Row.from_dict(demo_row), Row.from_dict(eval_row), Row.from_dict(eval_base)
    assert (a.name, a.label, b.name, b.label) == ("full", "full FT", "runs/a/model", "ft-a")
    assert base.is_base and not b.is_base and b.vs_base == a.vs_base and b.loss_curve == [2.0, 1.0, 0.5]
    # The same numbers through both tables: the eval table shows ± against the base too.
    table = eval_markdown_table([eval_base, eval_row])
    assert "| ft-a | learned % | 45.0 | +25.0 [+18.0, +32.0] | 100 |" in table
    assert "| ft-a | kept knowledge % | 80.0 | -20.0 [-30.0, -10.0] | 100 |" in table
    assert "| ft-a | drift nats/tok | 0.500 | +0.500 [+0.400, +0.600] | 100 |" in table
    assert "| ft-a | sciq | 45.0 | – | 8 / 10 |" in table
    assert "LoRAMoE" not in table and "| full FT |" in markdown_table([a])
    # An eval run without a domain has no empty "domain" bar group, and the plot renders.
    no_domain = [{**r, "domain_score": None} for r in (eval_base, eval_row)]
    assert "| ft-a | learned % | – |" in eval_markdown_table(no_domain)
    assert plot_eval(no_domain, tmp_path / "eval.png") == ["retention", "probe acc"]
    assert plot_eval([eval_base, eval_row], tmp_path / "eval2.png")[0] == "domain"
    assert (tmp_path / "eval.png").stat().st_size > 5000
