"""Render evaluation results: a markdown table (also printed with rich) and a bar chart, from eval.json rows.

A row is ``{"model": label, "path": str, **evaluate(...)}``. The plot is drawn from these rows only
(every number plotted is one the run wrote).
"""

from __future__ import annotations

from pathlib import Path

from retain.evaluation.stats import fmt_pm


def _fmt(x, pct: bool = True, digits: int = 3) -> str:
    if x is None:
        return "–"
    return f"{100 * x:.1f}" if pct else f"{x:.{digits}f}"


def table_rows(rows: list[dict]) -> tuple[list[str], list[list[str]]]:
    """Header and cells: headline metrics (± = half-width of the paired 95 % interval of the difference
    from the base), then one accuracy column per probe."""
    probe_names = list(dict.fromkeys(n for r in rows for n in r["probes"]))
    domain = next((r["domain"]["name"] for r in rows if r.get("domain")), None)
    header = ["model", f"domain ({domain}) %" if domain else "domain %", "known-fact retention %",
              "margin change (nats/char)", "probe acc %", "KL drift (nats/token)"]
    header += [f"{n} %" for n in probe_names] + ["seconds"]
    cells = []
    for r in rows:
        vb = r.get("vs_base") or {}
        line = [r["model"], fmt_pm(r["domain_score"], vb.get("domain"), 100, 1),
                fmt_pm(r["retention"], vb.get("retention"), 100, 1), fmt_pm(r.get("margin_change"), vb.get("margin"), 1, 3),
                _fmt(r["probe_accuracy"]), fmt_pm(r["kl_drift"], vb.get("drift"), 1, 4)]
        for n in probe_names:
            p = r["probes"].get(n)
            if p is None:
                line.append("–")
                continue
            cell = _fmt(p["accuracy"])
            if p.get("known") is not None:
                cell += f" ({p['retained']}/{p['known']} kept)"
            line.append(cell)
        line.append(f"{r.get('seconds', 0):.0f}")
        cells.append(line)
    return header, cells


def markdown_table(rows: list[dict]) -> str:
    header, cells = table_rows(rows)
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(c) + " |" for c in cells]
    return "\n".join(out) + "\n"


def print_table(rows: list[dict]) -> None:
    from rich.console import Console
    from rich.table import Table

    header, cells = table_rows(rows)
    t = Table(title="retain eval")
    for h in header:
        t.add_column(h)
    for c in cells:
        t.add_row(*c)
    Console().print(t)


def plot(rows: list[dict], path: str | Path) -> None:
    """Grouped bars (domain score, retention, probe accuracy, %) per model + KL drift on a twin panel."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from retain.utils.io import atomic_path

    metrics = [("domain_score", "domain"), ("retention", "retention"), ("probe_accuracy", "probe acc")]
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(10, 4), gridspec_kw={"width_ratios": [3, 1]})
    width = 0.8 / max(1, len(rows))
    for i, r in enumerate(rows):
        vals = [100 * (r[k] or 0) for k, _ in metrics]
        ax.bar([j + i * width for j in range(len(metrics))], vals, width, label=r["model"])
    ax.set_xticks([j + width * (len(rows) - 1) / 2 for j in range(len(metrics))], [m for _, m in metrics])
    ax.set_ylabel("%")
    ax.set_ylim(0, 105)
    ax.legend(fontsize=8)
    ax.set_title("higher is better")
    ax2.bar(range(len(rows)), [r["kl_drift"] or 0 for r in rows], color=[f"C{i}" for i in range(len(rows))])
    ax2.set_xticks(range(len(rows)), [r["model"] for r in rows], rotation=30, ha="right", fontsize=8)
    ax2.set_title("KL(base ‖ model), nats/token\nlower = closer to base", fontsize=9)
    ax2.set_ylim(bottom=0)
    fig.tight_layout()
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=120, format="png")
    plt.close(fig)
