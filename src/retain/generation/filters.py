"""Answer filters: drop what would teach the student nothing or teach it to babble.

- ``empty_answer``: nothing but whitespace (a model that emitted EOS at once, or only special tokens).
- ``repetition``: a degenerate loop ("the cell is the cell is the cell ..."). Measured as the fraction
  of word 4-grams that repeat an earlier 4-gram of the same answer; fluent prose stays far below 0.2,
  while a loop approaches 1. Answers shorter than ``MIN_NGRAMS`` 4-grams are never judged (too little
  evidence). A loop without spaces ("!!!!!!!!...") is caught by the same rule on characters.
- ``cut_by_limit``: an answer the token limit ``L_i`` cut (``finish_reason == "length"``) is trimmed back to
  its last complete sentence or line (:func:`trim_to_sentence`; the node records ``cut_at_limit`` and
  the untrimmed text), so no training answer ends mid-sentence ("It's a"); when nothing complete is
  left (fewer than ``MIN_WORDS`` words) the node is dropped with this reason. ``manifest.json`` counts
  both per level (``truncated``: cut by the limit; ``trimmed``: kept after trimming).
- List-parsing failures (a follow-up request whose reply holds no parseable question) are counted where
  the lists are parsed (:func:`retain.generation.prompts.parse_questions`), under ``parse_failed``.

Each dropped node keeps its reasons in ``nodes.jsonl`` and is counted by reason in ``manifest.json``;
dropped nodes are never expanded and never exported.
"""

from __future__ import annotations

import re

EMPTY, REPETITION, PARSE_FAILED, CUT_BY_LIMIT = "empty_answer", "repetition", "parse_failed", "cut_by_limit"
NGRAM = 4
MIN_NGRAMS = 12
MIN_CHARS = 128
MIN_WORDS = 3
"""A trimmed answer needs at least this many words to be kept."""

_BARE_MARKER = re.compile(r"(?:^|\n)\s*(?:\d{1,3}[.)]|[-*•])$")
_SENTENCE_END = re.compile(r"""[.!?…。！？]["'”’)\]*_]*(?=\s|$)""")


def trim_to_sentence(text: str) -> str:
    """``text`` up to the end of its last complete sentence or line; ``""`` when it has none with at least
    ``MIN_WORDS`` words. For an answer cut by the token limit: "Lava is molten rock. It's a" -> "Lava is
    molten rock." A sentence ends at . ! ? followed by whitespace (so "3.5" does not end one)."""
    cuts = sorted({m.end() for m in _SENTENCE_END.finditer(text)} | {m.start() for m in re.finditer("\n", text)})
    for cut in reversed(cuts):
        kept = text[:cut].rstrip()
        if not _BARE_MARKER.search(kept):  # "...\n2." is a list item's number, not a sentence
            return kept if len(kept.split()) >= MIN_WORDS else ""
    return ""


def repeat_ratio(text: str, n: int = NGRAM) -> float:
    """Fraction of n-grams (words, or characters for space-free text) that occurred earlier in ``text``."""
    units: list[str] = text.split()
    if len(units) <= 2 and len(text) >= MIN_CHARS:
        units = list(text.replace(" ", ""))  # one or two long "words": judge characters
    grams = [tuple(units[i : i + n]) for i in range(len(units) - n + 1)]
    if len(grams) < MIN_NGRAMS:
        return 0.0
    return 1.0 - len(set(grams)) / len(grams)


def answer_drop_reasons(text: str, max_repeat_ratio: float = 0.5) -> list[str]:
    """Why an answer should be dropped; ``[]`` keeps it."""
    if not text.strip():
        return [EMPTY]
    if repeat_ratio(text) > max_repeat_ratio:
        return [REPETITION]
    return []
