"""Every prompt TG self-decompression sends, in one place, and the parser of the model's question lists.

- Prompts are a typed dataclass, so each one is overridable from the CLI (``--prompts.followup '...'``),
  from YAML (``prompts: {followup: ...}``) and from Python, and is part of the run's config hash.
- Templates use ``str.format`` fields: ``{n}`` (how many questions to ask for) and ``{topic}`` (root only).
- The parser is lenient on purpose: small models number lines in many ways ("1.", "1)", "Q1:", "-",
  "**1.**"), wrap questions in quotes or bold, and add a preamble ("Here are 5 questions:") or trailing
  chatter. A line becomes a question when, after stripping the list marker, it has at least
  ``MIN_WORDS`` words and either had a list marker or ends with "?". Lines ending with ":" are headings.
- List-parsing leftovers are cleaned off a question: a heading glued before the marker ("Science: 1. What
  is science?" -> "What is science?"), a repeated marker ("1. 1. Why ...") and a "Question:" label.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

DEFAULT_TOPICS = [
    "science", "history", "health and medicine", "technology", "geography", "mathematics",
    "literature", "economics", "everyday life", "art and music", "law and government", "nature and animals",
    "food and cooking", "sports", "philosophy", "the environment",
]


@dataclass
class Prompts:
    """The user messages TG sends to the model (``str.format`` templates)."""

    root: str = (
        "Write a numbered list of {n} distinct questions about {topic} that you can answer well. "
        "Write one short question per line and nothing else."
    )
    """Level 1: asks for ``{n}`` questions about ``{topic}`` (one of ``topics``). No dialogue before it."""
    followup: str = (
        "Write a numbered list of {n} distinct follow-up questions that go deeper into what we just "
        "discussed. Write one short question per line and nothing else."
    )
    """Level i > 1: appended after the dialogue so far (root-to-parent turns); asks for ``{n}`` questions."""
    system: str | None = None
    """Optional system message put before every conversation (questions and answers). None = no system turn."""

    def root_message(self, n: int, topic: str) -> str:
        return self.root.format(n=n, topic=topic)

    def followup_message(self, n: int) -> str:
        return self.followup.format(n=n)


MIN_WORDS = 3
"""A parsed question needs at least this many words (drops fragments such as "1. Yes")."""

# "1." "1)" "(1)" "1:" "Q1." "Question 1:" "-" "*" "•" — optionally wrapped in markdown bold.
_MARKER = re.compile(
    r"^\s*(?:\*\*)?\s*(?:\(?\d{1,3}[.):]|[-*•·]|q(?:uestion)?\s*\d{1,3}\s*[.):]?)\s*(?:\*\*)?\s*",
    re.IGNORECASE,
)
_WRAP = re.compile(r'^[\s"“”\'*_`]+|[\s"“”\'*_`]+$')
# A heading or preamble glued before a list marker: "Science: 1. What ...", "**Biology:** 2) How ...",
# "Here are 3 questions: 1. What ...". Only stripped when a marker follows, so "Rome: why did it fall?" stays.
_LABEL_BEFORE_MARKER = re.compile(
    r"^\s*(?:\*\*)?\s*[^\W\d][^:?\n]{0,60}:\s*(?:\*\*)?\s*"  # the label, "Science:" or "**Biology:**"
    r"(?=(?:\*\*)?\s*(?:\(?\d{1,3}[.):]|q(?:uestion)?\s*\d{1,3}\s*[.):]))",  # followed by a list marker
    re.IGNORECASE,
)
# A bare question label: "Question: What ...", "Q: Why ...", "Follow-up question: How ...".
_QUESTION_LABEL = re.compile(r"^(?:follow[- ]?up\s+)?(?:q|question)\s*:\s*", re.IGNORECASE)


def _strip_list_leftovers(line: str) -> tuple[str, bool]:
    """``line`` without its list marker and the leftovers small models put around one (a heading before
    it, a repeated marker, a ``Question:`` label), and whether it had a marker."""
    marked = False
    while True:
        before = line
        line = _LABEL_BEFORE_MARKER.sub("", line, count=1)
        m = _MARKER.match(line)
        if m:
            line, marked = line[m.end():], True
        line = _QUESTION_LABEL.sub("", _WRAP.sub("", line))
        if line == before:
            return line, marked


def parse_questions(text: str, limit: int | None = None) -> list[str]:
    """Questions found in a model's list reply, in order, at most ``limit``.

    Returns ``[]`` when nothing parses (the caller counts that as a list-parsing failure).
    Only the first sentence ending in "?" is kept from a line ("1. What is X? It matters because ..."
    -> "What is X?"), so an answer glued to the question does not leak into the user turn.
    """
    out: list[str] = []
    for line in text.splitlines():
        body, marked = _strip_list_leftovers(line)
        body = body.strip()
        if not body or body.endswith(":"):
            continue
        q = body.find("?")
        if q >= 0:
            body = body[: q + 1]
        elif not marked:
            continue  # an unmarked line that is not a question: preamble or chatter
        body = _WRAP.sub("", body).strip()
        if len(body.split()) < MIN_WORDS or not re.search(r"[A-Za-z]", body):
            continue
        out.append(body)
        if limit is not None and len(out) >= limit:
            break
    return out


def dedup_key(text: str) -> str:
    """Key for exact-duplicate detection of generated questions: lower case, punctuation dropped,
    whitespace collapsed; letters of every script are kept (``"Qu'est-ce que l'ADN ?"`` ->
    ``"qu est ce que l adn"``). Not the split key of the evaluation sets
    (:func:`retain.data.olmo_eval.split_key`, ASCII only)."""
    text = re.sub(r"[^\w\s]", " ", text.lower())
    return " ".join(text.split())


normalize_question = dedup_key
"""Deprecated name of :func:`dedup_key`."""

__all__ = ["DEFAULT_TOPICS", "Prompts", "parse_questions", "dedup_key"]
