"""Your own domain: held-out items of your data, in any training format retain reads, scored by their shape.

``retain eval --domain PATH`` (and a recipe's ``eval: {domain: heldout}``) takes

- a file in any format of :mod:`retain.data.formats` (chat ``messages``, ShareGPT, Alpaca,
  prompt-completion; ``.jsonl`` or a ``.json`` list; the format is detected from the first record);
- a folder: a ``retain train`` run folder (its ``heldout.jsonl``, written by ``eval_split``), else every
  ``.jsonl`` / ``.json`` file inside, in name order.

Each record is one item: the conversation up to its **last assistant turn** is the prompt (through the
model's chat template, generation prompt added), that turn is the gold reply. Items are scored by shape:

- **choice items** (``label``): when the gold replies take at most :data:`MAX_LABELS` distinct values, each
  at most :data:`MAX_LABEL_WORDS` words, and some value repeats (``A``/``B``/``C``/``D``, ``positive``/
  ``negative``, ...), the options are those values. The model's answer is the option whose full text is
  most likely after the prompt (summed log-probability, nats); correct when it is the gold one. The margin
  is gold minus the best other option (nats). Domain score: accuracy; flips and lost/gained counts as for
  any 0/1 item.
- **free-form items** (``loglik``): otherwise. The score of an item is the mean log-likelihood of its gold
  reply, nats per reply token (:func:`retain.evaluation.scoring.continuation_logprobs` divided by the
  reply's token count): higher = the model finds your answers more likely. Domain score: the mean over
  items; its paired interval against the base is in nats/token. No generation, no right or wrong: these
  items do not flip. It is cheap (one forward per item) and continuous, so it moves with few items.
"""

from __future__ import annotations

from pathlib import Path

from retain.errors import RetainError
from retain.evaluation.probes import Probe, sample_items

MAX_LABELS = 10
"""At most this many distinct gold replies make a data set choice items."""
MAX_LABEL_WORDS = 3
"""A choice value has at most this many words."""
HELDOUT_FILE = "heldout.jsonl"
"""What ``retain train`` writes for a dataset's ``eval_split`` (messages format)."""


def is_domain_path(spec: str) -> bool:
    """True when ``--domain`` names a file or folder rather than a built-in domain set."""
    return Path(spec).expanduser().exists()


def domain_files(spec: str) -> list[Path]:
    """The data files behind ``--domain PATH`` (see the module docstring)."""
    p = Path(spec).expanduser()
    if p.is_file():
        return [p]
    if (p / HELDOUT_FILE).is_file():
        return [p / HELDOUT_FILE]
    files = sorted(f for f in p.iterdir() if f.suffix in (".jsonl", ".json") and f.is_file())
    if not files:
        raise RetainError(f"--domain {spec}: a folder without {HELDOUT_FILE} or any .jsonl/.json file; give a data "
                          "file, a folder of them or a retain train run folder with eval_split")
    return files


def items_from_examples(examples: list[dict], stem: str, where: str) -> list[dict]:
    """``{"id", "messages" (the prompt), "question" (last user turn), "reply" (the gold reply)}`` per example."""
    items = []
    for k, ex in enumerate(examples):
        if "messages" not in ex:
            raise RetainError(f"{where}: plain-text records have no reply to score; give chat records (messages, "
                              "ShareGPT, Alpaca or prompt-completion)")
        msgs = ex["messages"]
        last = max(i for i, m in enumerate(msgs) if m["role"] == "assistant")
        user = next((m["content"] for m in reversed(msgs[:last]) if m["role"] == "user"), "")
        items.append({"id": f"{stem}-{k + 1}", "messages": msgs[:last], "question": user,
                      "reply": msgs[last]["content"].strip()})
    return items


def shape(items: list[dict]) -> tuple[str, list[str]]:
    """(``"label"``, the options in order of first use) or (``"loglik"``, []), by the rule above."""
    values = list(dict.fromkeys(it["reply"] for it in items))
    if (len(values) <= MAX_LABELS and len(values) < len(items) and len(values) >= 2
            and all(len(v.split()) <= MAX_LABEL_WORDS for v in values)):
        return "label", values
    return "loglik", []


def load_domain_file(spec: str, n: int | None = None, seed: int = 0) -> Probe:
    """The domain probe ``domain:<name>`` of a data file or folder (kind ``label`` or ``loglik``);
    a seeded sample of ``n`` items (all when None). Errors name ``file:line``."""
    from retain.data.formats import load_examples

    files = domain_files(spec)
    items: list[dict] = []
    for f in files:
        items += items_from_examples(load_examples(str(f)), f.stem, str(f))
    kind, labels = shape(items)
    if kind == "label":
        for it in items:
            it["choices"], it["answer"] = labels, labels.index(it["reply"])
    p = Path(spec).expanduser()
    name = p.stem if p.is_file() else p.name
    return Probe(f"domain:{name}", kind, sample_items(items, n, seed, None))  # type: ignore[arg-type]


def prompts(tokenizer, items: list[dict]) -> list[str]:
    return [tokenizer.apply_chat_template(it["messages"], tokenize=False, add_generation_prompt=True) for it in items]


def score_domain_items(model, tokenizer, probe: Probe, *, batch_size: int = 16) -> list[dict]:
    """Per-item results of a domain file (see the module docstring): ``label`` items
    ``{"id", "correct", "margin", "pred", "gold", "k"}``; ``loglik`` items ``{"id", "correct": False,
    "margin", "score"}`` with ``score`` = margin = the gold reply's mean log-likelihood, nats/token."""
    from retain.evaluation import scoring

    items = probe.items
    if not items:
        return []
    ctx = prompts(tokenizer, items)
    if probe.kind == "label":
        lls = scoring.choice_logprobs(model, tokenizer, ctx, [it["choices"] for it in items], batch_size=batch_size,
                                      desc=probe.name)
        out = []
        for it, ll in zip(items, lls):
            pred = max(range(len(ll)), key=ll.__getitem__)
            other = max(x for j, x in enumerate(ll) if j != it["answer"])
            out.append({"id": it["id"], "correct": pred == it["answer"], "margin": ll[it["answer"]] - other,
                        "pred": pred, "gold": it["answer"], "k": len(ll)})
        return out
    sums = scoring.continuation_logprobs(model, tokenizer, list(zip(ctx, [it["reply"] for it in items])),
                                         batch_size=batch_size, desc=probe.name)
    out = []
    for it, s in zip(items, sums):
        n = max(1, len(tokenizer(it["reply"], add_special_tokens=False)["input_ids"]))
        out.append({"id": it["id"], "correct": False, "margin": s / n, "score": s / n})
    return out
