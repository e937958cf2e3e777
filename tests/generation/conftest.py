"""Fixtures for the generation tests: a deterministic fake backend and small configs.

``FakeBackend`` answers like a (very regular) chat model, deterministically from the conversation's
content, so results do not depend on batch composition: an interrupted-then-resumed run must equal an
uninterrupted one. Subprocess tests reach it through the plugin hook
``RETAIN_BACKEND_FACTORY=conftest:make_fake_backend`` with ``PYTHONPATH=tests/generation``.

Triggers in the text, to exercise the filters: a question containing ``EMPTY`` gets an empty answer,
``LOOP`` a repetition loop; a follow-up request under a node whose answer mentions ``JUNK`` gets a reply
with no parseable list. ``FAKE_BACKEND_DELAY`` (seconds per conversation) slows calls for kill tests.
"""

from __future__ import annotations

import hashlib
import os
import random
import re
import sys
import time
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[2] / "src"
if str(SRC) not in sys.path:  # subprocesses import this file directly
    sys.path.insert(0, str(SRC))

from retain.generation.backends.base import Completion, SamplingParams  # noqa: E402

SUBJECTS = ["volcanoes", "photosynthesis", "the Roman Empire", "vaccines", "black holes", "inflation",
            "the printing press", "coral reefs", "quantum computing", "the French Revolution", "glaciers",
            "antibiotics", "jazz", "bridges", "tax policy", "honeybees", "the immune system", "sourdough bread",
            "chess openings", "solar panels", "earthquakes", "Shakespeare", "the stock market", "DNA"]
ASPECTS = ["How does {s} work in practice?", "Why did {s} become important historically?",
           "What are common misconceptions about {s}?", "Which scientists first studied {s}?",
           "How is {s} measured or quantified?", "What risks are associated with {s}?",
           "How will {s} change over the next decade?", "What careers involve working with {s}?",
           "Can you compare {s} across different countries?", "What everyday examples illustrate {s}?"]


def _rng(messages) -> random.Random:
    blob = "\x00".join(f"{m['role']}:{m['content']}" for m in messages)
    return random.Random(int(hashlib.sha256(blob.encode()).hexdigest()[:16], 16))


class FakeBackend:
    name = "fake-model"

    def __init__(self, delay: float = 0.0):
        self.delay = delay
        self.calls: list[int] = []  # conversations per chat() call

    def chat(self, conversations, params: SamplingParams):
        self.calls.append(len(conversations))
        out = []
        for conv in conversations:
            if self.delay:
                time.sleep(self.delay)
            out.append(self._reply(conv, params))
        return out

    def _reply(self, conv, params) -> Completion:
        last = conv[-1]["content"]
        rng = _rng(conv)
        m = re.search(r"numbered list of (\d+)", last)
        if m:
            if any("JUNK" in t["content"] for t in conv if t["role"] == "assistant"):
                text = "I am sorry, I cannot think of anything."
            else:
                n = int(m.group(1))
                subject = rng.choice(SUBJECTS)
                aspects = rng.sample(ASPECTS, min(n, len(ASPECTS)))
                lines = [a.format(s=rng.choice(SUBJECTS) if i % 2 else subject) for i, a in enumerate(aspects)]
                if n >= 3:  # a verbatim repeat, as small models often produce
                    lines[-1] = lines[0]
                text = "Here are some questions:\n" + "\n".join(f"{i + 1}. {q}" for i, q in enumerate(lines))
        elif "EMPTY" in last:
            text = ""
        elif "LOOP" in last:
            text = "the cell is the cell is " * 30
        else:
            words = [rng.choice(SUBJECTS) for _ in range(4)]
            text = f"About '{last}': it relates to {', '.join(words)}. " + ("JUNK" if "JUNKQ" in last else "")
        toks = len(text.split())
        budget = params.max_new_tokens
        finish = "length" if toks > budget else "stop"
        text = " ".join(text.split(" ")[:budget]) if toks > budget else text
        return Completion(text=text, prompt_tokens=sum(len(t["content"].split()) for t in conv),
                          completion_tokens=min(toks, budget), finish_reason=finish)


def make_fake_backend(bcfg) -> FakeBackend:
    """Plugin-hook factory (``RETAIN_BACKEND_FACTORY=conftest:make_fake_backend``)."""
    return FakeBackend(delay=float(os.environ.get("FAKE_BACKEND_DELAY", "0")))


@pytest.fixture
def fake_backend() -> FakeBackend:
    return FakeBackend()


@pytest.fixture
def small_cfg(tmp_path):
    """A [3, 2, 2]-shaped tree config on the fake backend, exact dedup only (no embedder load)."""
    from retain.generation.config import DecompressConfig

    def make(**kw):
        base = dict(run_dir=str(tmp_path / "run"), levels=[(3, 64), (2, 64), (2, 64)], dedup_threshold=1.0,
                    progress=False, topics=["science", "history", "cooking"])
        base.update(kw)
        return DecompressConfig(**base)

    return make


class TinyHFQuestions:
    """The real ``hf`` backend on a tiny random model, whose question-list replies are mapped to
    parseable lists (a random model writes no numbered list): each list is drawn from a hash of the text
    the model sampled, so the questions depend on the sampling seeds exactly as the answers do.

    ``RETAIN_TEST_KILL_AT=k``: SIGKILL this process at the start of its k-th ``chat`` call (resume tests).
    """

    def __init__(self, bcfg):
        from retain.generation.backends.hf_backend import HFBackend

        self.hf = HFBackend(bcfg)
        self.name = self.hf.name
        self.kill_at = int(os.environ.get("RETAIN_TEST_KILL_AT", "0"))
        self.calls = 0

    def chat(self, conversations, params):
        self.calls += 1
        if self.calls == self.kill_at:
            import signal

            os.kill(os.getpid(), signal.SIGKILL)
        out = self.hf.chat(conversations, params)
        for conv, c in zip(conversations, out):
            m = re.search(r"numbered list of (\d+)", conv[-1]["content"])
            if m:
                rng = random.Random(hashlib.sha256(c.text.encode()).hexdigest())
                qs = [a.format(s=rng.choice(SUBJECTS)) for a in rng.sample(ASPECTS, int(m.group(1)))]
                c.text = "\n".join(f"{i + 1}. {q}" for i, q in enumerate(qs))
        return out


def make_tiny_hf_backend(bcfg) -> TinyHFQuestions:
    """Plugin-hook factory (``RETAIN_BACKEND_FACTORY=conftest:make_tiny_hf_backend``)."""
    return TinyHFQuestions(bcfg)
