"""The demo's comparison: one table (rich + markdown), ``report.md`` and a two-panel plot.

- Every number shown comes from the rows the run wrote (``demo.json``); nothing is recomputed here.
- "Learned vs kept": the plot puts domain score against known-fact retention, the trade-off the
  methods are about, next to the KL drift bars.
- The written verdicts compare each method with plain full fine-tuning and call a difference real only
  when it exceeds two binomial standard errors of the retention estimate (the known-item count is small
  at demo scale, so small gaps are noise, and the report says so).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

HEADER = ["method", "domain score %", "known-fact retention %", "probe acc %", "KL drift (nats/tok)",
          "trainable params", "train s", "eval s"]


def _pct(x: float | None) -> str:
    return "–" if x is None else f"{100 * x:.1f}"


def _params(n: int | None) -> str:
    if not n:
        return "–"
    return f"{n / 1e6:.2f}M" if n >= 1e5 else f"{n / 1e3:.1f}k"


def demo_cells(rows: list[dict[str, Any]]) -> list[list[str]]:
    cells = []
    for r in rows:
        kl = r.get("kl_drift")
        cells.append([r["label"], _pct(r.get("domain_score")), _pct(r.get("retention")), _pct(r.get("probe_accuracy")),
                      "–" if kl is None else f"{kl:.4f}", _params(r.get("trainable_params")),
                      f"{r.get('train_seconds', 0):.0f}", f"{r.get('seconds', 0):.0f}"])
    return cells


def markdown_table(rows: list[dict[str, Any]]) -> str:
    lines = ["| " + " | ".join(HEADER) + " |", "|" + "|".join("---" for _ in HEADER) + "|"]
    lines += ["| " + " | ".join(c) + " |" for c in demo_cells(rows)]
    return "\n".join(lines) + "\n"


def print_demo_table(rows: list[dict[str, Any]]) -> None:
    from rich.console import Console
    from rich.table import Table

    t = Table(title="retain demo: what each fine-tune learned and kept")
    for h in HEADER:
        t.add_column(h, justify="left" if h == "method" else "right")
    for c in demo_cells(rows):
        t.add_row(*c)
    Console().print(t)


def _stderr(p: float, n: int) -> float:
    return math.sqrt(max(p * (1 - p), 1e-9) / max(n, 1))


def verdicts(rows: list[dict[str, Any]]) -> list[str]:
    """One measured sentence per method, relative to plain full fine-tuning (and to the base)."""
    by = {r["name"]: r for r in rows}
    base, full = by.get("base"), by.get("full")
    out = []
    if base and full and full.get("retention") is not None:
        out.append(
            f"Full fine-tuning moved the domain score {_pct(base.get('domain_score'))}% → {_pct(full.get('domain_score'))}% "
            f"and kept {_pct(full['retention'])}% of the {full.get('known_total', '?')} probe items the base model knew "
            f"(KL drift {full.get('kl_drift', 0):.4f} nats/token)."
        )
    if not full or full.get("retention") is None:
        return out
    n = max(1, int(full.get("known_total") or 1))
    for r in rows:
        if r["name"] in ("base", "full") or r.get("retention") is None:
            continue
        d_ret = r["retention"] - full["retention"]
        noise = 2 * math.sqrt(_stderr(r["retention"], n) ** 2 + _stderr(full["retention"], n) ** 2)
        d_dom = (r.get("domain_score") or 0) - (full.get("domain_score") or 0)
        if abs(d_ret) <= noise:
            kept = f"kept about as much as full fine-tuning ({d_ret * 100:+.1f} pts, within noise ±{noise * 100:.1f})"
        elif d_ret > 0:
            kept = f"kept more than full fine-tuning ({d_ret * 100:+.1f} pts, noise ±{noise * 100:.1f})"
        else:
            kept = f"kept less than full fine-tuning ({d_ret * 100:+.1f} pts, noise ±{noise * 100:.1f})"
        out.append(f"**{r['label']}** {kept}; domain score {d_dom * 100:+.1f} pts; "
                   f"KL drift {r.get('kl_drift', 0):.4f} vs {full.get('kl_drift', 0):.4f}.")
    return out


def demo_markdown(summary: dict[str, Any]) -> str:
    rows, prof, cfg = summary["rows"], summary["profile"], summary["config"]
    lines = [
        "# retain demo report",
        "",
        f"Command: `retain demo --profile {cfg['profile']}` · model `{cfg['model']}` · domain `{cfg['domain']}` · "
        f"total {summary['total_seconds'] / 60:.1f} min",
        "",
        f"Budget per method: {prof['steps']} optimizer steps × batch {prof['batch_size']} (max {prof['max_length']} tokens); "
        f"learning rates {prof['lr']}; TG tree levels {prof['tg_levels']} ({summary.get('tg_seconds', 0):.0f} s to generate), "
        f"TG share {prof['tg_share']:.0%} of each TG run's mixture.",
        "",
        markdown_table(rows),
        "- **domain score**: held-out accuracy on the domain set (never trained on).",
        "- **known-fact retention**: of the probe items the base model answered correctly (with a margin), the share "
        "still answered correctly — the primary forgetting metric.",
        "- **probe acc**: raw mean accuracy over the knowledge probes; **KL drift**: mean per-token KL(base ‖ tuned) "
        "on general chat prompts.",
        "",
        "## What the numbers say",
        "",
    ]
    lines += [f"- {v}" for v in verdicts(rows)] or ["- (no full fine-tuning row to compare with)"]
    lines += ["", "Per-probe accuracy:", "", _probe_table(rows), "", "![demo](demo.png)", ""]
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
    """Left: domain score vs known-fact retention per method. Right: KL drift bars. Written atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from retain.utils.io import atomic_path

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.2))
    for r in rows:
        if r.get("domain_score") is None or r.get("retention") is None:
            continue
        ax1.scatter(100 * r["retention"], 100 * r["domain_score"], s=60)
        ax1.annotate(r["label"], (100 * r["retention"], 100 * r["domain_score"]), textcoords="offset points",
                     xytext=(5, 4), fontsize=8)
    ax1.set_xlabel("known-fact retention % (kept)")
    ax1.set_ylabel("domain score % (learned)")
    ax1.set_title("learned vs kept")
    ax1.grid(alpha=0.3)
    tuned = [r for r in rows if r["name"] != "base"]
    ax2.bar([r["label"] for r in tuned], [r.get("kl_drift") or 0 for r in tuned], color="tab:red")
    ax2.set_ylabel("KL(base ‖ tuned), nats/token")
    ax2.set_title("drift from the base model")
    ax2.tick_params(axis="x", rotation=20, labelsize=8)
    fig.tight_layout()
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=120, format="png")
    plt.close(fig)
