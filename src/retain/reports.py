"""The demo's comparison: two tables (rich + markdown), ``report.md`` and a three-panel plot.

- Every number shown comes from the rows the run wrote (``demo.json``); nothing is recomputed here,
  the intervals included (:func:`retain.demo.add_comparisons` stores them in each row as ``vs_base``,
  ``vs_full`` and ``vs_lora``).
- Table 1, per method: domain score with its gain over the base, known-fact retention, the change of
  the known items' margins, KL drift, each with ``±`` the half-width of its paired 95 % interval
  against the base. Tables 2 and 3: every method against plain full fine-tuning, and every other
  method against plain LoRA (the two baselines of both papers), intervals as ``[lo, hi]``.
- The wording rule (:func:`retain.evaluation.stats.verdict`): a sentence says "more", "less",
  "gained" or "lost" only when the 95 % interval of that difference excludes 0; otherwise it says
  "no detectable difference".
- The plot: learned (domain gain) vs kept (retention) with error bars, KL drift with error bars, and
  each method's training-loss curve.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from retain.evaluation.compare import interval
from retain.evaluation.stats import fmt_interval, fmt_pm, verdict

COLLAPSE_SHARE = 0.8
"""A model that gives one option on at least this share of the domain items is flagged: on a task with
few options its accuracy is then mostly the class prior (measured: SST-2 fine-tunes that answered one
label on 94-100 % of held-out items; see docs/domain.md)."""

HEADER = ["method", "domain score %", "gain vs base (pts)", "known-fact retention %", "margin change (nats/char)",
          "KL drift (nats/tok)", "probe acc %", "lr", "trainable", "train s", "eval s"]
BASELINES = {"full": "full FT", "lora": "LoRA"}
"""The reference methods every other method is compared with (row key ``vs_<name>``)."""


def vs_header(ref: str) -> list[str]:
    return [f"method vs {BASELINES[ref]}", "domain (pts)", "retention (pts)", "margin (nats/char)", "KL drift (nats/tok)"]


def _pct(x: float | None) -> str:
    return "–" if x is None else f"{100 * x:.1f}"


def _params(n: int | None) -> str:
    if not n:
        return "–"
    return f"{n / 1e6:.2f}M" if n >= 1e5 else f"{n / 1e3:.1f}k"


def demo_cells(rows: list[dict[str, Any]]) -> list[list[str]]:
    cells = []
    for r in rows:
        vb = r.get("vs_base") or {}
        dom = interval(vb.get("domain"))
        margin = r.get("margin_change")
        cells.append([
            r["label"], _pct(r.get("domain_score")),
            "–" if dom is None else f"{100 * dom.diff:+.1f} ± {100 * dom.half_width:.1f}",
            fmt_pm(r.get("retention"), vb.get("retention"), 100, 1),
            fmt_pm(margin, vb.get("margin"), 1, 3),
            fmt_pm(r.get("kl_drift"), vb.get("drift"), 1, 3),
            _pct(r.get("probe_accuracy")), f"{r['lr']:g}" if r.get("lr") else "–", _params(r.get("trainable_params")),
            f"{r.get('train_seconds', 0):.0f}", f"{r.get('seconds', 0):.0f}",
        ])
    return cells


def vs_cells(rows: list[dict[str, Any]], ref: str = "full") -> list[list[str]]:
    """Rows of the table "each method minus ``ref``" (``ref`` a key of :data:`BASELINES`)."""
    cells = []
    for r in rows:
        vf = r.get(f"vs_{ref}")
        if not vf:
            continue
        cells.append([r["label"], fmt_interval(interval(vf.get("domain")), 100),
                      fmt_interval(interval(vf.get("retention")), 100), fmt_interval(interval(vf.get("margin")), 1, 3),
                      fmt_interval(interval(vf.get("drift")), 1, 3)])
    return cells


def _md(header: list[str], cells: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(c) + " |" for c in cells]
    return "\n".join(lines) + "\n"


def markdown_table(rows: list[dict[str, Any]]) -> str:
    return _md(HEADER, demo_cells(rows))


def print_demo_table(rows: list[dict[str, Any]]) -> None:
    from rich.console import Console
    from rich.table import Table

    con = Console(width=max(Console().width, 132))  # a pipe reports 80 columns; the tables need more
    keep = [HEADER.index(h) for h in ("method", "domain score %", "gain vs base (pts)", "known-fact retention %",
                                      "margin change (nats/char)", "KL drift (nats/tok)", "lr", "train s")]
    t = Table(title="retain demo: what each fine-tune learned and kept (± = 95 % paired interval vs the base)")
    for i in keep:
        t.add_column(HEADER[i], justify="left" if i == 0 else "right")
    for c in demo_cells(rows):
        t.add_row(*[c[i] for i in keep])
    con.print(t)
    for ref, label in BASELINES.items():
        cells = vs_cells(rows, ref)
        if cells:
            t2 = Table(title=f"each method minus {label}: difference [95 % interval]")
            for h in vs_header(ref):
                t2.add_column(h, justify="left" if h.startswith("method") else "right")
            for c in cells:
                t2.add_row(*c)
            con.print(t2)


def _iv_words(row: dict | None, scale: float, unit: str, digits: int, more: str, less: str,
              same: str = "no detectable difference") -> str:
    iv = interval(row)
    if iv is None:
        return f"{same} (not measured)"
    return f"{verdict(iv, more=more, less=less, same=same)} ({fmt_interval(iv, scale, digits)} {unit})"


def verdicts(rows: list[dict[str, Any]]) -> list[str]:
    """One measured sentence per method; every comparative word follows the 95 % interval rule."""
    by = {r["name"]: r for r in rows}
    out = []
    for r in rows:
        if r["name"] == "base":
            continue
        vb = r.get("vs_base") or {}
        collapse = (r.get("domain") or {}).get("majority_share")
        warn = (f" — but {100 * collapse:.0f} % of its answers are one option (balanced accuracy "
                f"{100 * r['domain'].get('balanced_accuracy', 0):.1f} %): a label-prior shift, not learning"
                if collapse is not None and collapse >= COLLAPSE_SHARE else "")
        parts = [
            "domain score: " + _iv_words(vb.get("domain"), 100, "pts vs base", 1, "learned (gain over the base)",
                                         "got worse than the base") + warn,
            "known facts: " + _iv_words(vb.get("retention"), 100, "pts vs base", 1, "gained",
                                        "forgot some (retention below 100 %)", same="no detectable forgetting"),
            "margins: " + _iv_words(vb.get("margin"), 1, "nats/char vs base", 3, "grew", "shrank",
                                    same="no detectable change"),
        ]
        for ref, label in BASELINES.items():
            vf = r.get(f"vs_{ref}")
            if not vf or ref not in by:
                continue
            parts += [
                f"vs {label}, domain: " + _iv_words(vf.get("domain"), 100, "pts", 1, "learned more", "learned less"),
                f"vs {label}, retention: " + _iv_words(vf.get("retention"), 100, "pts", 1, "kept more", "kept less"),
                f"vs {label}, margins: " + _iv_words(vf.get("margin"), 1, "nats/char", 3, "kept more", "kept less"),
                f"vs {label}, drift: " + _iv_words(vf.get("drift"), 1, "nats/token", 3, "drifted more", "drifted less"),
            ]
        out.append(f"**{r['label']}**: " + "; ".join(parts) + ".")
    return out


def demo_markdown(summary: dict[str, Any]) -> str:
    rows, prof, cfg = summary["rows"], summary["profile"], summary["config"]
    known = summary.get("known") or {}
    stages = summary.get("stages") or {}
    lines = [
        "# retain demo report",
        "",
        f"Command: `retain demo --profile {cfg['profile']}` · model `{cfg['model']}` · domain `{cfg['domain']}` · "
        f"total {summary['total_seconds'] / 60:.1f} min"
        + (f" ({len(summary['stages_done_earlier'])} stages done by an earlier invocation in this folder, counted "
           "at the times they took then)" if summary.get("stages_done_earlier") else ""),
        "",
        f"Budget per method: {prof['steps']} optimizer steps × batch {prof['batch_size']} (max {prof['max_length']} "
        f"tokens), the same data for every method; TG tree levels {prof['tg_levels']} "
        f"({summary.get('tg_seconds', 0):.0f} s to generate), TG share {prof['tg_share']:.0%} of each TG run's mixture.",
        "",
        f"Learning rates {prof['lr']}: {prof.get('lr_rule') or 'fixed per profile'}",
        "",
        markdown_table(rows),
        "- **domain score**: accuracy on held-out domain items (never trained on); the gain is paired against "
        "the base, item by item.",
        f"- **known-fact retention**: of the {sum(known.values())} probe items the base model answered correctly "
        f"with a margin ({', '.join(f'{k} {v}' for k, v in known.items())}), the share still answered correctly.",
        "- **margin change**: on the known items, the mean change of the gold answer's lead over the best wrong "
        "answer (acc_norm score, nats per character); negative = the model moved away from what the base knew. "
        "It is continuous, so it does not churn at chance like a 0/1 outcome.",
        "- **KL drift**: mean per-token KL(base ‖ tuned) on the base's own replies to general chat prompts.",
        "- ± is the half-width of a paired bootstrap 95 % interval (2,000 resamples) of the difference from the "
        "base; `[lo, hi]` below are intervals of the difference from full fine-tuning, then from LoRA.",
        "",
        *[_md(vs_header(ref), vs_cells(rows, ref)) + "\n" for ref in BASELINES if vs_cells(rows, ref)],
        "## What the numbers say",
        "",
        "A difference is called a gain, a loss, more or less only when its 95 % interval excludes 0.",
        "",
    ]
    lines += [f"- {v}" for v in verdicts(rows)] or ["- (no fine-tuned row)"]
    lines += ["", "Per-probe accuracy (retained/known):", "", _probe_table(rows), ""]
    if stages:
        lines += ["Stage times (s): " + ", ".join(f"{k} {v:.0f}" for k, v in stages.items()), ""]
    lines += ["![demo](demo.png)", ""]
    return "\n".join(lines)


def _probe_table(rows: list[dict[str, Any]]) -> str:
    names = list(dict.fromkeys(n for r in rows for n in (r.get("probes") or {})))
    head = ["method"] + [f"{n} % (kept/known)" for n in names]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    for r in rows:
        cells = [r["label"]]
        for n in names:
            p = (r.get("probes") or {}).get(n)
            if not p:
                cells.append("–")
                continue
            c = _pct(p.get("accuracy"))
            if p.get("known") is not None:
                c += f" ({p.get('retained')}/{p.get('known')})"
            cells.append(c)
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot_demo(rows: list[dict[str, Any]], path: str | Path) -> None:
    """Left: domain gain vs retention with 95 % error bars. Middle: KL drift with error bars.
    Right: training-loss curves. Written atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from retain.utils.io import atomic_path

    fig, (ax1, ax2, ax3) = plt.subplots(1, 3, figsize=(15, 4.4))
    tuned = [r for r in rows if r["name"] != "base"]
    for i, r in enumerate(rows):
        if r.get("domain_score") is None or r.get("retention") is None:
            continue
        vb = r.get("vs_base") or {}
        dom, ret = interval(vb.get("domain")), interval(vb.get("retention"))
        x, y = 100 * r["retention"], 100 * r["domain_score"]
        xerr = None if ret is None else [[100 * (ret.diff - ret.lo)], [100 * (ret.hi - ret.diff)]]
        yerr = None if dom is None else [[100 * (dom.diff - dom.lo)], [100 * (dom.hi - dom.diff)]]
        ax1.errorbar(x, y, xerr=xerr, yerr=yerr, fmt="o", color=f"C{i}", capsize=3, label=r["label"])
    ax1.set_xlabel("known-fact retention % (kept)")
    ax1.set_ylabel("domain score % (learned)")
    ax1.set_title("learned vs kept (95 % paired intervals vs base)")
    ax1.grid(alpha=0.3)
    ax1.legend(fontsize=7)
    kls = [r.get("kl_drift") or 0 for r in tuned]
    errs = [[0, 0] if interval((r.get("vs_base") or {}).get("drift")) is None else
            [kl - interval(r["vs_base"]["drift"]).lo, interval(r["vs_base"]["drift"]).hi - kl]
            for r, kl in zip(tuned, kls)]
    ax2.bar(range(len(tuned)), kls, yerr=[[e[0] for e in errs], [e[1] for e in errs]] if errs else None,
            color=[f"C{rows.index(r)}" for r in tuned], capsize=3)
    ax2.set_xticks(range(len(tuned)), [r["label"] for r in tuned], rotation=20, ha="right", fontsize=8)
    ax2.set_ylabel("KL(base ‖ tuned), nats/token")
    ax2.set_title("drift from the base model (lower = closer)")
    for r in tuned:
        curve = r.get("loss_curve") or []
        if curve:
            ax3.plot(range(1, len(curve) + 1), curve, color=f"C{rows.index(r)}", label=f"{r['label']} (lr {r.get('lr', 0):g})")
    ax3.set_xlabel("optimizer step")
    ax3.set_ylabel("training loss (nats/assistant token)")
    ax3.set_title("training loss")
    ax3.grid(alpha=0.3)
    if any(r.get("loss_curve") for r in tuned):
        ax3.legend(fontsize=7)
    fig.tight_layout()
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=120, format="png")
    plt.close(fig)
