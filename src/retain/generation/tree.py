"""The TG tree: level-synchronous, batched expansion over an append-only, crash-safe journal.

Algorithm (levels ``[(N_1, L_1), ..., (N_D, L_D)]``), for depth d = 1..D:

1. **Ask.** Level 1 sends the root prompt (one request per topic slice, ``ceil(N_1 (1 + oversample))``
   candidates in all); level d > 1 sends, for every kept node of level d-1, its root-to-node dialogue plus
   the follow-up prompt asking for ``ceil(N_d (1 + oversample))`` questions. All requests of a chunk
   (``chunk_size`` conversations, default 512: the whole level for small trees) go in ONE backend call.
2. **Parse + dedup** the numbered lists: exact hash, then cosine >= threshold against every question
   kept so far in the tree, greedily in order; each parent keeps at most N_d (the rest is 'surplus').
3. **Journal the questions** (``questions.jsonl``, one record per parent) *before* answering, so a
   resumed run answers exactly the questions it asked instead of sampling new ones.
4. **Answer** every kept question of the level (chunked backend calls, max new tokens L_d), filter the
   answers, append the nodes to ``nodes.jsonl``. Dropped nodes are recorded but not expanded.

Reproducible resume: each backend call's seed is derived from the ids of the nodes it serves
(:func:`call_seed`), and chunks are cut from the same ordered work list, so a resumed run makes the
same calls with the same seeds as an uninterrupted one and (with the ``hf`` backend) writes the same corpus.

Crash safety: a record is one JSON line, written and fsync'd per chunk; node ids are deterministic
(``"3.1.2"`` = 2nd child of the 1st child of root question 3), so on resume the journal tells exactly
which parents still need questions and which questions still need answers. A line cut by ``kill -9``
is the only possible damage: :class:`Journal` truncates it away before appending.
"""

from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path
from typing import Any

from retain.utils.console import tqdm

from retain.errors import RetainError
from retain.generation.backends.base import Backend, Messages, SamplingParams
from retain.generation.config import DecompressConfig
from retain.generation.dedup import KEPT, SURPLUS, QuestionIndex
from retain.generation.filters import CUT_BY_LIMIT, PARSE_FAILED, answer_drop_reasons, trim_to_sentence
from retain.generation.prompts import parse_questions
from retain.utils.io import append_text, iter_jsonl

QUESTIONS, NODES = "questions.jsonl", "nodes.jsonl"

log = logging.getLogger(__name__)


class Journal:
    """Append-only JSONL file; each :meth:`append` writes one chunk's complete lines in one write and
    fsyncs them (:func:`retain.utils.io.append_text`: on a full disk the file is cut back, one line
    names it, and re-running the same command continues from the last complete chunk)."""

    def __init__(self, path: Path):
        self.path = path
        if path.exists():  # drop a last line cut by a crash, so the next append starts on a fresh line
            data = path.read_bytes()
            if data and not data.endswith(b"\n"):
                with open(path, "r+b") as f:
                    f.truncate(data.rfind(b"\n") + 1)
        else:
            path.touch()

    def append(self, rows: list[dict]) -> None:
        if rows:
            append_text(self.path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))

    def close(self) -> None:
        pass  # nothing held open between appends


def read_journal(path: Path, key: str) -> dict[str, dict]:
    """Records of a journal by ``rec[key]``; the first record per key wins (a chunk re-run after a crash
    appends its records again). A missing file reads as empty; a line torn by a crash is skipped."""
    out: dict[str, dict] = {}
    for rec in iter_jsonl(path, allow_truncated_tail=True) if path.exists() else []:
        out.setdefault(rec[key], rec)
    return out


def child_id(parent_id: str | None, k: int) -> str:
    """Deterministic node id: '3' (root question 3), '3.1' (its first follow-up), ..."""
    return str(k) if parent_id is None else f"{parent_id}.{k}"


def id_key(node_id: str) -> tuple[int, ...]:
    return tuple(int(x) for x in node_id.split("."))


def parent_of(node_id: str) -> str | None:
    return node_id.rpartition(".")[0] or None


def call_seed(cfg: DecompressConfig, depth: int, phase: int, ids: list[str | None]) -> int:
    """Seed of one backend call, from the ids of the nodes it serves (the parents asked, or the questions
    answered) and not from its position in this session's work list: a resumed run calls the backend
    with the same seeds as an uninterrupted one, so the ``hf`` backend writes the same corpus."""
    import hashlib

    key = f"{cfg.seed}|{depth}|{phase}|" + ",".join("root" if i is None else i for i in ids)
    return int.from_bytes(hashlib.sha256(key.encode()).digest()[:4], "big") % (2**31)


class TreeGrower:
    """Grows (or resumes) one tree inside ``run_dir``. ``stats`` accumulates seconds per level/phase."""

    def __init__(self, cfg: DecompressConfig, backend: Backend, run_dir: Path, index: QuestionIndex):
        self.cfg, self.backend, self.run_dir, self.index = cfg, backend, run_dir, index
        self.levels = cfg.resolved_levels()
        self.q_journal, self.n_journal = Journal(run_dir / QUESTIONS), Journal(run_dir / NODES)
        # parent id -> its questions record, node id -> node (first record wins, in journal order)
        self.asked: dict[str | None, dict] = read_journal(self.q_journal.path, "parent_id")
        self.nodes: dict[str, dict] = read_journal(self.n_journal.path, "id")
        # Rebuild the dedup index in journal order (= the order an uninterrupted run kept them in).
        self.qids: list[str] = []  # aligned with index.texts
        kept = [(q["id"], q["question"]) for rec in self.asked.values() for q in rec["questions"]]
        self.index.preload([q for _, q in kept])
        self.qids += [i for i, _ in kept]
        self.timings: dict[str, float] = {}

    def close(self) -> None:
        self.q_journal.close()
        self.n_journal.close()

    # -- the loop ------------------------------------------------------------------------------------

    def grow(self) -> None:
        for depth in range(1, len(self.levels) + 1):
            self._ask_level(depth)
            self._answer_level(depth)
            self._warn_if_thin(depth)

    def _warn_if_thin(self, depth: int) -> None:
        """One warning line when a level keeps under half of the nodes it asked for, with the reasons:
        a small tree used to end with a fraction of its nodes and no word about why."""
        n_wanted, max_tokens = self.levels[depth - 1]
        recs = [r for r in self.asked.values() if r["depth"] == depth]
        wanted = n_wanted * len(recs)
        kept = sum(1 for n in self.nodes.values() if n["depth"] == depth and not n["dropped"])
        if not wanted or kept * 2 >= wanted:
            return
        reasons: dict[str, int] = {}
        of_parent = 0  # duplicates of their own parent's (or an ancestor's) question
        for r in recs:
            for q in r["dropped"]:
                reasons[q["reason"]] = reasons.get(q["reason"], 0) + 1
                pid = r["parent_id"]
                of_parent += pid is not None and (q["of"] == pid or pid.startswith(q["of"] + "."))
            if r["parse_failed"]:
                reasons[PARSE_FAILED] = reasons.get(PARSE_FAILED, 0) + r["parse_failed"]
        for n in self.nodes.values():
            if n["depth"] == depth:
                for reason in n["dropped"]:
                    reasons[reason] = reasons.get(reason, 0) + 1
        why = ", ".join(f"{v} {k}" for k, v in sorted(reasons.items(), key=lambda kv: -kv[1])) or "too few candidates"
        if of_parent:
            why += f"; {of_parent} of the duplicates repeat their parent's question"
        log.warning("level %d kept %d of the %d nodes asked for (%s); ask for more candidates (--oversample), "
                    "loosen --dedup_threshold, or raise the level's token limit (L=%d)", depth, kept, wanted, why,
                    max_tokens)

    def _expandable(self, depth: int) -> list[str | None]:
        if depth == 1:
            return [None]
        ids = [i for i, n in self.nodes.items() if n["depth"] == depth - 1 and not n["dropped"]]
        return sorted(ids, key=id_key)  # type: ignore[return-value]

    def _ask_level(self, depth: int) -> None:
        n_wanted, _ = self.levels[depth - 1]
        want = self.cfg.candidates(n_wanted)
        todo = [p for p in self._expandable(depth) if p not in self.asked]
        bar = tqdm(total=len(todo), desc=f"level {depth}/{len(self.levels)} ask", unit="parent",
                   disable=not self.cfg.progress or not todo)
        for c0 in range(0, len(todo), self.cfg.chunk_size):
            parents = todo[c0 : c0 + self.cfg.chunk_size]
            t0 = time.perf_counter()
            requests: list[tuple[int, Messages, int]] = []  # (parent position, conversation, questions asked)
            for pos, pid in enumerate(parents):
                for conv, n in self._question_requests(pid, want):
                    requests.append((pos, conv, n))
            max_n = max(n for _, _, n in requests)
            params = SamplingParams(max_new_tokens=self.cfg.question_tokens * max_n, temperature=self.cfg.temperature,
                                    top_p=self.cfg.top_p, seed=call_seed(self.cfg, depth, 0, parents))
            replies = self._chat([conv for _, conv, _ in requests], params)
            t1 = time.perf_counter()
            records = [self._question_record(pid, depth, want, params) for pid in parents]
            cands: list[tuple[int, str]] = []  # (parent position, question)
            for (pos, _, n), reply in zip(requests, replies):
                qs = parse_questions(reply.text, limit=2 * n)
                rec = records[pos]
                rec["replies"].append(reply.text)
                rec["parse_failed"] += not qs
                rec["prompt_tokens"] += reply.prompt_tokens
                rec["completion_tokens"] += reply.completion_tokens
                cands += [(pos, q) for q in qs]
            verdicts = self.index.add([q for _, q in cands], group=[p for p, _ in cands], cap=[n_wanted] * len(parents))
            for (pos, q), v in zip(cands, verdicts):
                rec = records[pos]
                if v.status == KEPT:
                    qid = child_id(rec["parent_id"], len(rec["questions"]) + 1)
                    rec["questions"].append({"id": qid, "question": q})
                    self.qids.append(qid)
                elif v.status == SURPLUS:
                    rec["surplus"] += 1
                else:
                    rec["dropped"].append({"question": q, "reason": v.status, "of": self.qids[v.of],  # type: ignore[index]
                                           "similarity": None if v.similarity is None else round(v.similarity, 4)})
            for rec in records:
                if rec["parse_failed"]:
                    rec["drop_reasons"].append(PARSE_FAILED)
                rec["unfilled"] = n_wanted - len(rec["questions"])
            self.q_journal.append(records)
            for rec in records:
                self.asked[rec["parent_id"]] = rec
            self._time(depth, "ask_s", t1 - t0)
            self._time(depth, "dedup_s", time.perf_counter() - t1)
            bar.update(len(parents))
        bar.close()

    def _answer_level(self, depth: int) -> None:
        _, max_tokens = self.levels[depth - 1]
        todo = [q for pid in self._expandable(depth) if pid in self.asked
                for q in self.asked[pid]["questions"] if q["id"] not in self.nodes]
        bar = tqdm(total=len(todo), desc=f"level {depth}/{len(self.levels)} answer", unit="node",
                   disable=not self.cfg.progress or not todo)
        params = SamplingParams(max_new_tokens=max_tokens, temperature=self.cfg.temperature, top_p=self.cfg.top_p)
        for c0 in range(0, len(todo), self.cfg.chunk_size):
            chunk = todo[c0 : c0 + self.cfg.chunk_size]
            t0 = time.perf_counter()
            p = SamplingParams(**{**params.to_dict(), "seed": call_seed(self.cfg, depth, 1, [q["id"] for q in chunk])})
            convs = [self._dialogue(parent_of(q["id"])) + [{"role": "user", "content": q["question"]}] for q in chunk]
            replies = self._chat(convs, p)
            rows = []
            for q, reply in zip(chunk, replies):
                answer = reply.text.strip()
                row = {"id": q["id"], "parent_id": parent_of(q["id"]), "depth": depth, "question": q["question"]}
                dropped = answer_drop_reasons(answer, self.cfg.max_repeat_ratio)
                if reply.finish_reason == "length" and not dropped:  # cut by L_i (see --cut_answers)
                    row["cut_at_limit"] = True
                    if self.cfg.cut_answers == "drop":
                        dropped = [CUT_BY_LIMIT]
                    elif self.cfg.cut_answers == "trim":
                        trimmed = trim_to_sentence(answer)
                        row["untrimmed"] = answer
                        dropped = answer_drop_reasons(trimmed, self.cfg.max_repeat_ratio) if trimmed else [CUT_BY_LIMIT]
                        answer = trimmed or answer
                row.update({
                    "answer": answer, "dropped": dropped,
                    "model": self.backend.name, "params": p.to_dict(), "finish_reason": reply.finish_reason,
                    "prompt_tokens": reply.prompt_tokens, "completion_tokens": reply.completion_tokens,
                })
                rows.append(row)
            self.n_journal.append(rows)
            for r in rows:
                self.nodes[r["id"]] = r
            self._time(depth, "answer_s", time.perf_counter() - t0)
            bar.update(len(chunk))
        bar.close()

    # -- helpers -------------------------------------------------------------------------------------

    def _question_requests(self, pid: str | None, want: int) -> list[tuple[Messages, int]]:
        """Conversations asking for ``want`` candidates for parent ``pid``, split so none asks > max_list_size."""
        if pid is None:
            topics = self.cfg.topics
            # Spread the root questions over the topics (one list per topic gives more variety).
            n_req = self.cfg.root_requests(want)
            sizes = [want // n_req + (1 if r < want % n_req else 0) for r in range(n_req)]
            return [(self._system() + [{"role": "user", "content": self.cfg.prompts.root_message(n, topics[r % len(topics)])}], n)
                    for r, n in enumerate(sizes)]
        n_req = math.ceil(want / self.cfg.max_list_size)
        sizes = [want // n_req + (1 if r < want % n_req else 0) for r in range(n_req)]
        base = self._dialogue(pid)
        return [(base + [{"role": "user", "content": self.cfg.prompts.followup_message(n)}], n) for n in sizes]

    def _system(self) -> Messages:
        s = self.cfg.prompts.system
        return [{"role": "system", "content": s}] if s else []

    def _dialogue(self, node_id: str | None) -> Messages:
        """System turn (if any) + user/assistant turns from the root question down to ``node_id``."""
        chain = []
        while node_id is not None:
            chain.append(self.nodes[node_id])
            node_id = parent_of(node_id)
        msgs = self._system()
        for n in reversed(chain):
            msgs += [{"role": "user", "content": n["question"]}, {"role": "assistant", "content": n["answer"]}]
        return msgs

    def _chat(self, convs: list[Messages], params: SamplingParams) -> list[Any]:
        replies = self.backend.chat(convs, params)
        if len(replies) != len(convs):
            raise RetainError(f"backend {self.backend.name}: returned {len(replies)} replies for {len(convs)} conversations")
        return replies

    def _question_record(self, pid: str | None, depth: int, want: int, params: SamplingParams) -> dict:
        return {"parent_id": pid, "depth": depth, "asked": want, "questions": [], "dropped": [], "surplus": 0,
                "unfilled": 0, "parse_failed": 0, "drop_reasons": [], "replies": [], "model": self.backend.name,
                "params": params.to_dict(), "prompt_tokens": 0, "completion_tokens": 0}

    def _time(self, depth: int, key: str, seconds: float) -> None:
        k = f"{depth}:{key}"
        self.timings[k] = self.timings.get(k, 0.0) + seconds

