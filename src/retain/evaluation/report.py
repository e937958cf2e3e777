"""The one report module: typed result rows, tables (markdown and rich), worded verdicts and plots, for
both ``retain demo`` (``demo.json``) and ``retain eval`` (``eval.json``).

- A :class:`Row` is one model's results. The demo and ``retain eval`` write the same keys, except the
  name: a demo row has ``name`` (the method key) and ``label``; an eval row has ``model`` (its label) and
  ``path``. :meth:`Row.from_dict` reads both, so every function here takes rows of either command.
- Every number shown comes from the rows the run wrote; nothing is recomputed here, the paired 95 %
  intervals included (``vs_base``, ``vs_full``, ``vs_lora``: :func:`retain.evaluation.compare.compare`
  entries stored by :func:`retain.demo.text.add_comparisons` and ``retain eval``).
- Two views of retention, named everywhere: **behaviour** (the tuned model's own chat-format answers to
  closed-book questions the base answered; what a user meets) and **knowledge** (multiple-choice
  log-likelihood and few-shot completion; robust to the answer format). :data:`HEADLINE_RULE` says
  which one heads the tables and the plot, and why; it was fixed before the comparison was re-run.
- Tables: per model, domain score with its gain over the base, behaviour and knowledge retention, the
  change of the known items' margins, reply change and KL drift (opening and whole reply), each with
  ``±`` the half-width of its paired 95 % interval against the base; then every method against plain full
  fine-tuning, and every other method against plain LoRA (the two baselines of both papers), intervals as ``[lo, hi]``.
- The wording rule (:func:`retain.evaluation.stats.verdict`): a sentence says "more", "less",
  "gained" or "lost" only when the 95 % interval of that difference excludes 0; otherwise it says
  "no detectable difference". A model that gives one option on :data:`COLLAPSE_SHARE` of the domain
  items or more is flagged as a label-prior shift rather than called learning.
- Plots: the demo's three panels (learned vs kept with error bars, KL drift with error bars, training
  loss) and ``retain eval``'s bars (scores, KL drift). Written atomically.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Iterable

from retain.evaluation.compare import interval
from retain.evaluation.stats import fmt_interval, fmt_pm, verdict
from retain.utils.console import stdout_console
from retain.utils.tables import md_table, print_rich_table

COLLAPSE_SHARE = 0.8
"""A model that gives one option on at least this share of the domain items is flagged: on a task with
few options its accuracy is then mostly the class prior (measured: SST-2 fine-tunes that answered one
label on 94-100 % of held-out items; see docs/domain.md)."""

HEADLINE_RULE = ("Headline retention = behaviour (chat-format answers), knowledge second. Rule fixed before the "
                 "comparison was re-run: the headline is the measure of what a user of the tuned model meets, their "
                 "own questions in the chat format; the knowledge view (log-likelihood, few-shot completion) is "
                 "robust to the answer format, so it shows whether a fact is still in the weights, not whether "
                 "the user still gets it.")
"""Which retention view heads the reports, and why (printed in the demo report)."""

BASELINES = {"full": "full FT", "lora": "LoRA"}
"""The reference methods every other method is compared with (row key ``vs_<name>``)."""


@dataclass
class Row:
    """One model's results. Fractions are in [0, 1]; margins in nats/char; KL in nats/token; seconds wall."""

    name: str
    """Method key (demo: ``full``, ``loramoe_tg``, ...) or model path (``retain eval``); ``base`` for the base."""
    label: str
    """Shown in tables and plots."""
    domain_score: float | None = None
    retention: float | None = None
    """Knowledge retention (multiple choice + few-shot completion)."""
    behaviour_retention: float | None = None
    """Behaviour retention (the model's own chat-format answers)."""
    behaviour: dict | None = None
    """``{"n", "accuracy", "known", "retained", "lost", "gained", "label_share", "reply_change"}``."""
    reply_change: float | None = None
    margin_change: float | None = None
    kl_drift: float | None = None
    kl_opening: float | None = None
    probe_accuracy: float | None = None
    probes: dict[str, dict] = field(default_factory=dict)
    """Per probe: ``{"accuracy", "known", "retained", ...}``."""
    domain: dict | None = None
    """``{"name", "n", "accuracy", "balanced_accuracy", "majority_share"}``."""
    seconds: float = 0.0
    """Evaluation time."""
    lr: float | None = None
    trainable_params: int | None = None
    train_seconds: float | None = None
    loss_curve: list[float] = field(default_factory=list)
    """Training loss per optimizer step (nats per assistant token)."""
    vs_base: dict | None = None
    vs_full: dict | None = None
    vs_lora: dict | None = None

    @property
    def is_base(self) -> bool:
        return self.name == "base" or self.label == "base"

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Row":
        """A demo row (``name``/``label``) or an eval row (``model``/``path``); other keys are ignored."""
        name = d.get("name") or ("base" if d.get("model") == "base" else d.get("path") or d.get("model") or "?")
        label = d.get("label") or d.get("model") or name
        known = {f.name for f in fields(cls)} - {"name", "label"}
        kw = {k: v for k, v in d.items() if k in known and v is not None}
        return cls(name=str(name), label=str(label), **kw)


def as_rows(rows: Iterable[Row | dict[str, Any]]) -> list[Row]:
    return [r if isinstance(r, Row) else Row.from_dict(r) for r in rows]


def _pct(x: float | None) -> str:
    return "–" if x is None else f"{100 * x:.1f}"


def _params(n: int | None) -> str:
    if not n:
        return "–"
    return f"{n / 1e6:.2f}M" if n >= 1e5 else f"{n / 1e3:.1f}k"


# ---------------------------------------------------------------------------------------------
# The demo: methods side by side
# ---------------------------------------------------------------------------------------------

HEADER = ["method", "domain score %", "gain vs base (pts)", "behaviour kept %", "knowledge kept %",
          "margin change (nats/char)", "reply change %", "opening KL (nats/tok)", "KL drift (nats/tok)",
          "probe acc %", "lr", "trainable", "train s", "eval s"]
SHORT = {"domain score %": "domain %", "gain vs base (pts)": "gain (pts)", "behaviour kept %": "behav. kept %",
         "knowledge kept %": "knowl. kept %", "reply change %": "reply chg %", "KL drift (nats/tok)": "KL/tok"}
"""Terminal headers (the terminal table keeps a subset of columns and must fit 100 columns)."""


def header(domain: str = "domain score", domain_ref: str = "base") -> list[str]:
    """:data:`HEADER` with the domain columns named (``retain demo --scenario mllm``: VQA, gain vs stage 1)."""
    return [HEADER[0], f"{domain} %", f"gain vs {domain_ref} (pts)", *HEADER[3:]]


def vs_header(ref: str) -> list[str]:
    return [f"method vs {BASELINES[ref]}", "domain (pts)", "behaviour kept (pts)", "knowledge kept (pts)",
            "margin (nats/char)", "reply change (pts)", "KL drift (nats/tok)"]


def _kept(value: float | None, row: dict | None) -> str:
    """``92.3 ± 3.1 (6 lost)``: retention with the half-width of its interval and the known items lost."""
    cell = fmt_pm(value, row, 100, 1)
    if row and row.get("lost") is not None and value is not None:
        cell += f" ({row['lost']} lost)"
    return cell


def demo_cells(rows: Iterable[Row | dict]) -> list[list[str]]:
    cells = []
    for r in as_rows(rows):
        vb = r.vs_base or {}
        dom = interval(vb.get("domain"))
        cells.append([
            r.label, _pct(r.domain_score),
            "–" if dom is None else f"{100 * dom.diff:+.1f} ± {100 * dom.half_width:.1f}",
            _kept(r.behaviour_retention, vb.get("behaviour")),
            _kept(r.retention, vb.get("retention")),
            fmt_pm(r.margin_change, vb.get("margin"), 1, 3),
            fmt_pm(r.reply_change, vb.get("reply_change"), 100, 1),
            fmt_pm(r.kl_opening, vb.get("kl_opening"), 1, 3),
            fmt_pm(r.kl_drift, vb.get("drift"), 1, 3),
            _pct(r.probe_accuracy), f"{r.lr:g}" if r.lr else "–", _params(r.trainable_params),
            f"{r.train_seconds or 0:.0f}", f"{r.seconds:.0f}",
        ])
    return cells


def vs_cells(rows: Iterable[Row | dict], ref: str = "full") -> list[list[str]]:
    """Rows of the table "each method minus ``ref``" (``ref`` a key of :data:`BASELINES`)."""
    cells = []
    for r in as_rows(rows):
        vf = getattr(r, f"vs_{ref}")
        if not vf:
            continue
        cells.append([r.label, fmt_interval(interval(vf.get("domain")), 100),
                      fmt_interval(interval(vf.get("behaviour")), 100),
                      fmt_interval(interval(vf.get("retention")), 100), fmt_interval(interval(vf.get("margin")), 1, 3),
                      fmt_interval(interval(vf.get("reply_change")), 100),
                      fmt_interval(interval(vf.get("drift")), 1, 3)])
    return cells


def markdown_table(rows: Iterable[Row | dict], domain: str = "domain score", domain_ref: str = "base") -> str:
    return md_table(header(domain, domain_ref), demo_cells(rows))


def print_demo_table(rows: Iterable[Row | dict], domain: str = "domain score", domain_ref: str = "base") -> None:
    rows = as_rows(rows)
    keep = [HEADER.index(h) for h in ("method", "domain score %", "gain vs base (pts)", "behaviour kept %",
                                      "knowledge kept %", "reply change %", "KL drift (nats/tok)")]
    names = header(domain, domain_ref)
    print_rich_table("retain demo: what each fine-tune learned and kept (± = 95 % paired interval vs the base)",
                     [SHORT.get(HEADER[i], names[i]) for i in keep], [[c[i] for i in keep] for c in demo_cells(rows)])
    for ref, label in BASELINES.items():
        cells = vs_cells(rows, ref)
        if cells:
            print_rich_table(f"each method minus {label}: difference [95 % interval]", vs_header(ref), cells)


def _iv_words(row: dict | None, scale: float, unit: str, digits: int, more: str, less: str,
              same: str = "no detectable difference") -> str:
    iv = interval(row)
    if iv is None:
        return f"{same} (not measured)"
    return f"{verdict(iv, more=more, less=less, same=same)} ({fmt_interval(iv, scale, digits)} {unit})"


def verdicts(rows: Iterable[Row | dict], domain: str = "domain score", domain_ref: str = "base") -> list[str]:
    """One measured sentence per fine-tuned model; every comparative word follows the 95 % interval rule.
    ``domain_ref``: what the domain gain in ``vs_base`` is paired against."""
    rows = as_rows(rows)
    names = {r.name for r in rows}
    out = []
    for r in rows:
        if r.is_base:
            continue
        vb = r.vs_base or {}
        collapse = (r.domain or {}).get("majority_share")
        warn = (f" — but {100 * collapse:.0f} % of its answers are one option (balanced accuracy "
                f"{100 * r.domain.get('balanced_accuracy', 0):.1f} %): a label-prior shift, not learning"
                if collapse is not None and collapse >= COLLAPSE_SHARE else "")
        beh = r.behaviour or {}
        lost = (f", {beh['lost']} of {beh['known']} known answers lost, {beh['gained']} gained"
                if beh.get("known") else "")
        label = (f", {100 * beh['label_share']:.0f} % of replies open with an answer label"
                 if beh.get("label_share") else "")
        parts = [
            f"{domain}: " + _iv_words(vb.get("domain"), 100, f"pts vs {domain_ref}", 1,
                                      f"learned (gain over the {domain_ref})", f"got worse than the {domain_ref}") + warn,
            *(["behaviour (its own chat answers): " + _iv_words(
                vb.get("behaviour"), 100, "pts vs base", 1, "gained", "forgot some (retention below 100 %)",
                same="no detectable forgetting") + lost + label] if vb.get("behaviour") else []),
            "knowledge (log-likelihood, few-shot): " + _iv_words(
                vb.get("retention"), 100, "pts vs base", 1, "gained", "forgot some (retention below 100 %)",
                same="no detectable forgetting"),
            "margins: " + _iv_words(vb.get("margin"), 1, "nats/char vs base", 3, "grew", "shrank",
                                    same="no detectable change"),
        ]
        for ref, label in BASELINES.items():
            vf = getattr(r, f"vs_{ref}")
            if not vf or ref not in names:
                continue
            parts += [
                f"vs {label}, domain: " + _iv_words(vf.get("domain"), 100, "pts", 1, "learned more", "learned less"),
                *([f"vs {label}, behaviour: " + _iv_words(vf.get("behaviour"), 100, "pts", 1, "kept more",
                                                          "kept less")] if vf.get("behaviour") else []),
                f"vs {label}, knowledge: " + _iv_words(vf.get("retention"), 100, "pts", 1, "kept more", "kept less"),
                f"vs {label}, margins: " + _iv_words(vf.get("margin"), 1, "nats/char", 3, "kept more", "kept less"),
                *([f"vs {label}, replies changed: " + _iv_words(vf.get("reply_change"), 100, "pts", 1, "more often",
                                                                "less often")] if vf.get("reply_change") else []),
                f"vs {label}, drift: " + _iv_words(vf.get("drift"), 1, "nats/token", 3, "drifted more", "drifted less"),
            ]
        out.append(f"**{r.label}**: " + "; ".join(parts) + ".")
    return out


def probe_table(rows: Iterable[Row | dict]) -> str:
    """Per probe: accuracy % and (kept/known)."""
    rows = as_rows(rows)
    names = list(dict.fromkeys(n for r in rows for n in r.probes))
    cells = []
    for r in rows:
        line = [r.label]
        for n in names:
            p = r.probes.get(n)
            if not p:
                line.append("–")
                continue
            c = _pct(p.get("accuracy"))
            if p.get("known") is not None:
                c += f" ({p.get('retained')}/{p.get('known')})"
            line.append(c)
        cells.append(line)
    return md_table(["method"] + [f"{n} % (kept/known)" for n in names], cells).rstrip("\n")


def _retention_legend(known: dict[str, int], suite: dict | None = None) -> list[str]:
    """The legend lines of the two retention views (``known``: probe name -> items the base knows; ``suite``:
    the evaluation suite as saved, for the behaviour prompt and its token bound)."""
    from retain.evaluation.config import EvalSuite

    suite = suite or {}
    instruction = suite.get("behaviour_instruction", EvalSuite.behaviour_instruction)
    bound = suite.get("chat_new_tokens", EvalSuite.chat_new_tokens)
    ask = f'the question + \"{instruction}\"' if instruction else "the bare question"
    beh = {k: v for k, v in known.items() if k.startswith("chat:")}
    kno = {k: v for k, v in known.items() if k not in beh}
    out = []
    if beh:
        out.append(f"- **behaviour kept** (headline): {sum(beh.values())} closed-book questions the base answered "
                   f"correctly in its own chat replies ({', '.join(f'{k} {v}' for k, v in beh.items())}); the share "
                   f"the tuned model still answers correctly when asked the same way (its chat template, {ask}, "
                   f"greedy, first line, {bound} tokens at most; a gold alias anywhere in the "
                   "reply counts, so \"Answer: Ottawa\" and \"The capital is Ottawa.\" are both right). "
                   "`(n lost)`: known answers the tuned model no longer gives.")
    if kno:
        out.append(f"- **knowledge kept**: of the {sum(kno.values())} multiple-choice / few-shot probe items the base "
                   f"answered correctly with a margin ({', '.join(f'{k} {v}' for k, v in kno.items())}), the share "
                   "still answered correctly, scored by log-likelihood, which is blind to the answer format.")
    return out


def _drift_legend() -> list[str]:
    return [
        "- **reply change**: share of the behaviour questions whose reply text differs from the base's reply "
        "(normalized): how often a user sees a different answer.",
        "- **opening KL**: KL(base ‖ tuned) on the first 4 tokens of the base's replies to general chat prompts, "
        "where a changed format shows; **KL drift**: the same averaged over the whole reply (32 tokens), which "
        "hides a changed opening (see docs/drift.md).",
    ]


def demo_markdown(summary: dict[str, Any]) -> str:
    rows, prof, cfg = as_rows(summary["rows"]), summary["profile"], summary["config"]
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
        HEADLINE_RULE,
        "",
        markdown_table(rows),
        "- **domain score**: accuracy on held-out domain items (never trained on); the gain is paired against "
        "the base, item by item.",
        *_retention_legend(known, summary.get("suite")),
        "- **margin change**: on the known items, the mean change of the gold answer's lead over the best wrong "
        "answer (acc_norm score, nats per character); negative = the model moved away from what the base knew. "
        "It is continuous, so it does not churn at chance like a 0/1 outcome.",
        *_drift_legend(),
        "- ± is the half-width of a paired bootstrap 95 % interval (2,000 resamples) of the difference from the "
        "base; `[lo, hi]` below are intervals of the difference from full fine-tuning, then from LoRA.",
        "",
        *[md_table(vs_header(ref), vs_cells(rows, ref)) + "\n" for ref in BASELINES if vs_cells(rows, ref)],
        "## What the numbers say",
        "",
        "A difference is called a gain, a loss, more or less only when its 95 % interval excludes 0.",
        "",
    ]
    lines += [f"- {v}" for v in verdicts(rows)] or ["- (no fine-tuned row)"]
    lines += ["", "Per-probe accuracy (retained/known):", "", probe_table(rows), "", *prompt_lines(summary)]
    if stages:
        lines += ["Stage times (s): " + ", ".join(f"{k} {v:.0f}" for k, v in stages.items()), ""]
    lines += ["![demo](demo.png)", ""]
    return "\n".join(lines)


def prompt_lines(summary: dict[str, Any]) -> list[str]:
    """How each probe's items were put to the models (``summary["prompts"]``: probe name -> format)."""
    prompts = summary.get("prompts") or {}
    if not prompts:
        return []
    return ["How each probe asks its questions:", "", *[f"- `{k}`: {v}" for k, v in prompts.items()], ""]


def mllm_markdown(summary: dict[str, Any]) -> str:
    """The report of ``retain demo --scenario mllm`` (``demo.json`` with ``"scenario": "mllm"``)."""
    rows, prof, cfg = as_rows(summary["rows"]), summary["profile"], summary["config"]
    known, stages, vqa = summary.get("known") or {}, summary.get("stages") or {}, summary["vqa"]
    lines = [
        "# retain demo report: multimodal (MLLM) scenario",
        "",
        f"Command: `retain demo --scenario mllm --profile {cfg['profile']}` · base LLM `{cfg['model']}` · "
        f"total {summary['total_seconds'] / 60:.1f} min"
        + (f" ({len(summary['stages_done_earlier'])} stages done by an earlier invocation, counted at the times "
           "they took then)" if summary.get("stages_done_earlier") else ""),
        "",
        f"MLLM: {cfg['model']} + frozen EfficientNet-Lite0 (ImageNet) + 2-layer MLP projector, "
        f"{prof['image_size']} px images ({(prof['image_size'] // 32) ** 2} image tokens). Stage 1: the projector "
        f"alone, {prof['stage1_steps']} steps × batch {prof['batch_size']} at lr {prof['lr_projector']:g} "
        f"({vqa['stage1_examples']} easy-VQA questions). Stage 2: {prof['steps']} steps × batch {prof['batch_size']} "
        f"per method on the next {vqa['stage2_examples']} questions, lr {prof['lr']}; a TG run gives "
        f"{prof['tg_share']:.0%} of each batch to the base LLM's TG corpus (text only; tree {prof['tg_levels']}, "
        f"{summary.get('tg_seconds', 0):.0f} s to generate). Budgets fixed by the rule in docs/mllm.md.",
        "",
        HEADLINE_RULE,
        "",
        markdown_table(rows, "VQA acc", "stage 1"),
        f"- **VQA acc**: accuracy on {vqa['heldout_items']} held-out easy-VQA questions (test images, never "
        f"trained on), the answer with the highest next-token log-probability among the 13; always answering "
        f"'{vqa['majority_answer']}' scores {100 * vqa['majority_share']:.1f} %. The gain is paired item by item "
        "against stage 1 (the MLLM before stage 2).",
        "- **behaviour kept**, **knowledge kept**, **margin change**, **reply change**, **KL drift**: the text "
        "path against the base LLM (the model asked without an image). The stage-1 MLLM's text path is the base "
        "LLM's, so these are also the changes from before stage 2.",
        *_retention_legend(known, summary.get("suite")),
        *_drift_legend(),
        "- ± is the half-width of a paired bootstrap 95 % interval (2,000 resamples); `[lo, hi]` below are "
        "intervals of the difference from full fine-tuning, then from LoRA (stage 2).",
        "",
        *[md_table(vs_header(ref), vs_cells(rows, ref)) + "\n" for ref in BASELINES if vs_cells(rows, ref)],
        "## What the numbers say",
        "",
        "A difference is called a gain, a loss, more or less only when its 95 % interval excludes 0.",
        "",
    ]
    lines += [f"- {v}" for v in verdicts(rows, "VQA", "stage 1")] or ["- (no fine-tuned row)"]
    lines += ["", "Per-probe accuracy (retained/known):", "", probe_table(rows), "", *prompt_lines(summary)]
    if stages:
        lines += ["Stage times (s): " + ", ".join(f"{k} {v:.0f}" for k, v in stages.items()), ""]
    lines += ["![demo](demo.png)", ""]
    return "\n".join(lines)


def _save(fig, path: str | Path) -> None:
    import matplotlib.pyplot as plt

    from retain.utils.io import atomic_path

    fig.tight_layout()
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=120, format="png")
    plt.close(fig)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_demo(rows: Iterable[Row | dict], path: str | Path, domain: str = "domain score % (learned)",
              domain_ref: str = "base") -> None:
    """Left: domain score vs the headline retention (behaviour when measured, else knowledge) with 95 % error
    bars. Middle: KL drift with error bars. Right: training-loss curves."""
    plt = _pyplot()
    rows = as_rows(rows)
    fig, (ax1, ax2, ax3) = plt.subplots(1, 3, figsize=(15, 4.4))
    tuned = [r for r in rows if not r.is_base]
    behaviour = any(r.behaviour_retention is not None for r in rows)
    key, metric = ("behaviour_retention", "behaviour") if behaviour else ("retention", "retention")
    for i, r in enumerate(rows):
        if r.domain_score is None or getattr(r, key) is None:
            continue
        vb = r.vs_base or {}
        dom, ret = interval(vb.get("domain")), interval(vb.get(metric))
        x, y = 100 * getattr(r, key), 100 * r.domain_score
        xerr = None if ret is None else [[100 * (ret.diff - ret.lo)], [100 * (ret.hi - ret.diff)]]
        yerr = None if dom is None else [[100 * (dom.diff - dom.lo)], [100 * (dom.hi - dom.diff)]]
        ax1.errorbar(x, y, xerr=xerr, yerr=yerr, fmt="o", color=f"C{i}", capsize=3, label=r.label)
    ax1.set_xlabel("behaviour retention %: known answers kept in its own chat replies" if behaviour
                   else "known-fact retention % (kept)")
    ax1.set_ylabel(domain)
    ax1.set_title("learned vs kept (95 % paired intervals vs base)" if domain_ref == "base" else
                  f"learned (vs {domain_ref}) vs kept (vs base), 95 % paired intervals", fontsize=9)
    ax1.grid(alpha=0.3)
    ax1.legend(fontsize=7)
    _drift_bars(ax2, rows, tuned)
    for r in tuned:
        if r.loss_curve:
            ax3.plot(range(1, len(r.loss_curve) + 1), r.loss_curve, color=f"C{rows.index(r)}",
                     label=f"{r.label} (lr {r.lr or 0:g})")
    ax3.set_xlabel("optimizer step")
    ax3.set_ylabel("training loss (nats/assistant token)")
    ax3.set_title("training loss")
    ax3.grid(alpha=0.3)
    if any(r.loss_curve for r in tuned):
        ax3.legend(fontsize=7)
    _save(fig, path)


def _drift_bars(ax, rows: list[Row], shown: list[Row]) -> None:
    """KL drift per model with its 95 % interval vs the base as error bars; colours follow ``rows``."""
    kls = [r.kl_drift or 0 for r in shown]
    errs = []
    for r, kl in zip(shown, kls):
        iv = interval((r.vs_base or {}).get("drift"))
        errs.append([0, 0] if iv is None else [kl - iv.lo, iv.hi - kl])
    ax.bar(range(len(shown)), kls, yerr=[[e[0] for e in errs], [e[1] for e in errs]] if errs else None,
           color=[f"C{rows.index(r)}" for r in shown], capsize=3)
    ax.set_xticks(range(len(shown)), [r.label for r in shown], rotation=20, ha="right", fontsize=8)
    ax.set_ylabel("KL(base ‖ tuned), nats/token")
    ax.set_title("drift from the base model (lower = closer)")
    ax.set_ylim(bottom=0)


# ---------------------------------------------------------------------------------------------
# retain eval: models side by side, one column per probe
# ---------------------------------------------------------------------------------------------

def _axis_label(axis, domain: str | None) -> str:
    """``learned (sst2) %``, ``kept knowledge %``, ``drift nats/tok``: the axis and its unit, short."""
    name = f"learned ({domain})" if axis.label == "learned" and domain else axis.label
    return f"{name} %" if axis.unit == "pts" else f"{name} {axis.unit.replace('token', 'tok')}"


def eval_cells(rows: Iterable[dict]) -> tuple[list[str], list[list[str]]]:
    """The headline table, one line per (model, axis), so it fits 80 columns whatever the number of axes:
    ``model | axis | score | vs base [95 %] | items``. Axes come from :data:`retain.evaluation.verdict.AXES`
    (an axis no row measured is left out), plus margins and probe accuracy; ``vs base`` is the paired
    difference with its interval as ``[lo, hi]`` (intervals are not symmetric)."""
    from retain.evaluation.verdict import AXES, Axis, axis_entry, domain_axis, row_axes

    rows = [dict(r) for r in rows]
    header = ["model", "axis", "score", "vs base [95 %]", "items"]
    margins = Axis("margin_change", ("margin",), "margins", "", scale=1.0, unit="nats/char", digits=3)
    cells = []
    for r in rows:
        axes = [domain_axis(r) if a.metric == "domain_score" else a for a in AXES]
        axes = [a for a in axes if r.get(a.metric) is not None or axis_entry(r, a) is not None]
        axes += [margins] if r.get("margin_change") is not None else []
        dom = (r.get("domain") or {}).get("name")
        for a in axes:
            iv = interval(axis_entry(r, a))
            value = r.get(a.metric)
            cells.append([r.get("model") or r.get("label") or "?", _axis_label(a, dom),
                          "–" if value is None else f"{value * a.scale:.{a.digits}f}",
                          "–" if iv is None else fmt_interval(iv, a.scale, a.digits), "–" if iv is None else str(iv.n)])
        for a, entry in row_axes(r):
            if a.metric.startswith("lm_eval:"):
                iv = interval(entry)
                cells.append([r.get("model") or "?", a.label, "", fmt_interval(iv, a.scale, a.digits), str(iv.n)])
        if r.get("probe_accuracy") is not None:
            cells.append([r.get("model") or "?", "probe accuracy %", _pct(r["probe_accuracy"]), "–", "–"])
    return header, cells


def probe_cells(rows: Iterable[dict]) -> tuple[list[str], list[list[str]]]:
    """Per model and probe: ``accuracy %``, ``kept / known`` ('–' where the base knows no item of it)."""
    cells = []
    for r in rows:
        r = dict(r)
        for name, p in (r.get("probes") or {}).items():
            known = p.get("known")
            kept = "–" if not known else f"{p.get('retained')} / {known}"
            cells.append([r.get("model") or "?", name, _pct(p.get("accuracy")), str(p.get("n", "–")), kept])
    return ["model", "probe", "accuracy %", "items", "kept / known"], cells


def eval_markdown_table(rows: Iterable[dict]) -> str:
    rows = list(rows)
    return md_table(*eval_cells(rows)) + "\n" + md_table(*probe_cells(rows))


def print_eval_table(rows: Iterable[dict], console=None) -> None:
    """One table per model on stdout, its axes then its probes (``probe <name> %``: accuracy, with
    ``kept / known`` in the interval column); every table fits an 80-column terminal (tested)."""
    rows = list(rows)
    header, cells = eval_cells(rows)
    _, probes = probe_cells(rows)
    for model in dict.fromkeys(c[0] for c in cells):  # one table per model: no column repeats its name
        mine = [c[1:] for c in cells if c[0] == model]
        mine += [[f"probe {p[1]} %", p[2], p[4] if p[4] == "–" else f"kept {p[4]}", p[3]] for p in probes if p[0] == model]
        if all(c[2] in ("–",) or c[2].startswith("kept") for c in mine):
            print_rich_table(f"retain eval: {model}", [header[1], header[2], "kept / known", header[4]], mine,
                             console=console)
        else:
            print_rich_table(f"retain eval: {model} vs base", header[1:], mine, console=console)
    (console or stdout_console()).print("vs base: the paired difference model - base [its 95 % interval]; "
                                        "the legend is in eval.md", highlight=False, markup=False)


def plot_eval(rows: Iterable[Row | dict], path: str | Path) -> list[str]:
    """Grouped bars (domain score when measured, retention, probe accuracy, %) per model, and KL drift
    with its 95 % interval on a second panel. Returns the bar groups drawn."""
    plt = _pyplot()
    rows = as_rows(rows)
    metrics = [("domain_score", "domain")] if any(r.domain_score is not None for r in rows) else []
    metrics += [("retention", "retention"), ("probe_accuracy", "probe acc")]
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(10, 4), gridspec_kw={"width_ratios": [3, 1]})
    width = 0.8 / max(1, len(rows))
    for i, r in enumerate(rows):
        vals = [100 * (getattr(r, k) or 0) for k, _ in metrics]
        ax.bar([j + i * width for j in range(len(metrics))], vals, width, label=r.label, color=f"C{i}")
    ax.set_xticks([j + width * (len(rows) - 1) / 2 for j in range(len(metrics))], [m for _, m in metrics])
    ax.set_ylabel("%")
    ax.set_ylim(0, 105)
    ax.legend(fontsize=8)
    ax.set_title("higher is better")
    _drift_bars(ax2, rows, rows)
    _save(fig, path)
    return [m for _, m in metrics]
