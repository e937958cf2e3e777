"""What flipped: every probe and domain item whose correctness differs between the base and a tuned model.

- One record per flipped item: ``{"model", "probe", "id", "change": "lost" | "gained", "known", "question",
  "gold", "base_answer", "tuned_answer"}``. ``lost``: the base answered it correctly and the tuned model does
  not; ``gained``: the reverse. ``known``: the base knows it (the items retention counts); an item the base
  got right by a near-tie is not known, so it can flip without moving retention.
- Answers come from the per-item records of :func:`retain.evaluation.suite.compact_results`: the chosen
  option (``pred``, multiple choice and letter/label items) or the generated text (``prediction``); the
  question and gold answer from the probe's items. A base reference saved before answers were kept shows
  ``?`` for the base's answer.
- Free-form domain items (scored by log-likelihood, no right or wrong) do not flip.
- ``retain eval`` writes them to ``eval_items.jsonl``, puts the first few in ``eval.md`` and prints them with
  ``--show lost|gained|all``.
"""

from __future__ import annotations

from typing import Iterable

FLIPS_FILE = "eval_items.jsonl"
SHOWN_IN_REPORT = 10
"""Flipped items listed in eval.md (all of them are in eval_items.jsonl)."""


def gold_text(item: dict) -> str:
    """The gold answer of a probe item as text (accepted answers joined by ' | ')."""
    if "choices" in item and isinstance(item.get("answer"), int):
        return str(item["choices"][item["answer"]])
    if "answers" in item:
        return " | ".join(map(str, item["answers"]))
    return str(item.get("answer", "?"))


def answer_text(item: dict, rec: dict, j: int) -> str:
    """A model's answer to item ``j`` of a compact per-item record: generated text or the chosen option."""
    if "prediction" in rec:
        return rec["prediction"][j]
    if "pred" in rec and "choices" in item:
        p = rec["pred"][j]
        return str(item["choices"][p]) if 0 <= p < len(item["choices"]) else "?"
    return "?"


def item_flips(model: str, tuned_items: dict, base_items: dict, probes: Iterable, known: dict[str, list[str]]
               ) -> list[dict]:
    """Flipped items of one tuned model (see the module docstring), probes in suite order, items in probe order.

    tuned_items / base_items: ``metrics["items"]`` of the tuned model and of the base. probes: the
    :class:`retain.evaluation.probes.Probe` objects scored (the domain probe included). known: probe ->
    ids the base knows."""
    by_name = {p.name: {it["id"]: it for it in p.items} for p in probes if p is not None}
    out = []
    for name, rec in tuned_items.items():
        base = base_items.get(name)
        if base is None or "score" in rec:  # not scored on the base, or continuous (no right/wrong)
            continue
        where = {i: j for j, i in enumerate(base["ids"])}
        items, k = by_name.get(name, {}), set(known.get(name, ()))
        for j, i in enumerate(rec["ids"]):
            b = where.get(i)
            if b is None or bool(rec["correct"][j]) == bool(base["correct"][b]):
                continue
            it = items.get(i, {})
            out.append({"model": model, "probe": name, "id": i, "change": "lost" if base["correct"][b] else "gained",
                        "known": i in k, "question": it.get("question", "?"), "gold": gold_text(it) if it else "?",
                        "base_answer": answer_text(it, base, b), "tuned_answer": answer_text(it, rec, j)})
    return out


def _short(text: str, n: int) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= n else text[: n - 1] + "…"


def flip_lines(flips: list[dict], show: str = "all") -> list[str]:
    """One plain line per flipped item (``show``: lost, gained or all), full text, for the terminal."""
    return [f"[{f['change']}{', known' if f['known'] else ''}] {f['model']} {f['probe']} {f['id']}: "
            f"{' '.join(f['question'].split())} | gold: {f['gold']} | base: {f['base_answer']!r} | "
            f"tuned: {f['tuned_answer']!r}" for f in flips if show == "all" or f["change"] == show]


def flips_markdown(flips: list[dict], limit: int = SHOWN_IN_REPORT) -> str:
    """The first ``limit`` flipped items (lost first) as a markdown table, with how many there are."""
    from retain.utils.tables import md_table

    if not flips:
        return "No probe or domain item changed between the base and the tuned models.\n"
    lost = sum(f["change"] == "lost" for f in flips)
    shown = sorted(flips, key=lambda f: f["change"] != "lost")[:limit]
    cells = [[f["model"], f["probe"], f["change"] + (" (known)" if f["known"] else ""), _short(f["question"], 60),
              _short(f["gold"], 24), _short(f["base_answer"], 24), _short(f["tuned_answer"], 24)] for f in shown]
    head = (f"{len(flips)} items changed ({lost} lost, {len(flips) - lost} gained); the first {len(shown)} below, "
            f"all in `{FLIPS_FILE}` (`retain eval --out <this folder> --show lost` prints them).\n\n")
    return head + md_table(["model", "probe", "change", "question", "gold", "base", "tuned"],
                           [[c.replace("|", "\\|") for c in row] for row in cells])
