"""Loss curves from ``train_log.jsonl`` (matplotlib, Agg backend; written atomically)."""

from __future__ import annotations

from pathlib import Path


def plot_loss(rows: list[dict], path: str | Path, title: str = "") -> None:
    """LM loss per step (left); the LBC loss beside it when the run logged one (right)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from retain.utils.io import atomic_path

    steps = [r["step"] for r in rows]
    has_lbc = any(r.get("lbc_loss") is not None for r in rows)
    fig, axes = plt.subplots(1, 2 if has_lbc else 1, figsize=(10 if has_lbc else 5.5, 3.6), squeeze=False)
    from matplotlib.ticker import MaxNLocator

    ax = axes[0][0]
    lm = [r["lm_loss"] for r in rows]
    window = max(1, len(lm) // 20)
    if window > 1:  # per-step losses are noisy on small batches: raw faint, moving average on top
        ax.plot(steps, lm, lw=0.8, alpha=0.35, color="tab:blue")
        lm = [sum(lm[max(0, i - window + 1): i + 1]) / len(lm[max(0, i - window + 1): i + 1]) for i in range(len(lm))]
    label = "LM loss (assistant tokens)" + (f", {window}-step mean" if window > 1 else "")
    ax.plot(steps, lm, lw=1.4, color="tab:blue", label=label)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("cross-entropy (nats/token)")
    ax.grid(alpha=0.3)
    ax.legend()
    if has_lbc:
        lbc = [(r["step"], r["lbc_loss"]) for r in rows if r.get("lbc_loss") is not None]
        ax2 = axes[0][1]
        ax2.plot([s for s, _ in lbc], [v for _, v in lbc], lw=1.2, color="tab:orange", label="LBC loss (beta-weighted)")
        ax2.set_xlabel("optimizer step")
        ax2.grid(alpha=0.3)
        ax2.legend()
    for a in axes[0]:
        a.xaxis.set_major_locator(MaxNLocator(integer=True))
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
