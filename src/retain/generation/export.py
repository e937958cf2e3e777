"""Exports of a run directory's tree: SFT dialogues, ShareGPT, and TG-PT plain text.

- Only kept nodes count (no drop reason); a *leaf* is a kept node without kept children, so a branch
  cut short by drops still yields its (shorter) dialogue.
- ``sft.jsonl``: one root-to-leaf path per line, TRL's conversational format
  ``{"messages": [{"role": "user", ...}, {"role": "assistant", ...}, ...]}`` (roles alternate,
  a system turn first when the run used one). Loads with ``datasets.load_dataset("json", ...)``.
- ``sharegpt.json``: the same dialogues as ``[{"id", "conversations": [{"from": "human"|"gpt",
  "value"}], "system"?}]``, the layout LLaMA-Factory (``formatting: sharegpt``) and LLaVA read.
- ``pt.jsonl`` (TG-PT): one ``{"text"}`` document per root question, holding its whole subtree in
  depth-first order, each question/answer pair once. Paths would repeat every ancestor once per
  leaf, which is fine for dialogue SFT but just duplicate text for continued pre-training.
- All files are written atomically; ids are kept in ``sharegpt.json`` to trace a row back to nodes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

from retain.generation.tree import NODES, id_key, parent_of, read_journal
from retain.utils.io import write_json_atomic, write_jsonl_atomic

FILES = {"sft": "sft.jsonl", "sharegpt": "sharegpt.json", "pt": "pt.jsonl"}


def kept_nodes(run_dir: Path) -> dict[str, dict]:
    """Kept nodes by id, in tree order (first record per id wins, as in the journal reader)."""
    nodes = read_journal(run_dir / NODES, "id")
    kept = {i: n for i, n in nodes.items() if not n["dropped"]}
    # A kept node whose ancestor was dropped cannot exist (dropped nodes are not expanded), but be safe.
    kept = {i: n for i, n in kept.items() if all(a in kept for a in _ancestors(i))}
    return dict(sorted(kept.items(), key=lambda kv: id_key(kv[0])))


def _ancestors(node_id: str) -> list[str]:
    out, p = [], parent_of(node_id)
    while p is not None:
        out.append(p)
        p = parent_of(p)
    return out[::-1]


def dialogues(nodes: dict[str, dict]) -> list[tuple[str, list[dict]]]:
    """(leaf id, [node, ...] root-to-leaf) for every leaf, in tree order."""
    parents = {n["parent_id"] for n in nodes.values()}
    return [(i, [nodes[a] for a in _ancestors(i)] + [n]) for i, n in nodes.items() if i not in parents]


def to_messages(path: list[dict], system: str | None) -> list[dict]:
    msgs = [{"role": "system", "content": system}] if system else []
    for n in path:
        msgs += [{"role": "user", "content": n["question"]}, {"role": "assistant", "content": n["answer"]}]
    return msgs


def pt_documents(nodes: dict[str, dict]) -> Iterable[dict]:
    """One text per root question: its subtree depth-first (``nodes`` is already in DFS/id order)."""
    doc_root, parts = None, []
    for i, n in nodes.items():
        root = i.split(".")[0]
        if root != doc_root and parts:
            yield {"text": "\n\n".join(parts)}
            parts = []
        doc_root = root
        parts.append(f"{n['question']}\n{n['answer']}")
    if parts:
        yield {"text": "\n\n".join(parts)}


def export(run_dir: Path, formats: Iterable[str], out_dir: Path | None = None,
           system: str | None = None) -> dict[str, tuple[Path, int]]:
    """Write the requested exports; returns ``{format: (path, rows)}``."""
    out_dir = out_dir or run_dir
    nodes = kept_nodes(run_dir)
    paths = dialogues(nodes)
    written: dict[str, tuple[Path, int]] = {}
    for fmt in dict.fromkeys(formats):
        target = out_dir / FILES[fmt]
        if fmt == "sft":
            n = write_jsonl_atomic(target, ({"messages": to_messages(p, system)} for _, p in paths))
        elif fmt == "sharegpt":
            rows = []
            for leaf, p in paths:
                conv = [{"from": f, "value": n[k]} for n in p for f, k in (("human", "question"), ("gpt", "answer"))]
                rows.append({"id": leaf, "conversations": conv, **({"system": system} if system else {})})
            write_json_atomic(target, rows)
            n = len(rows)
        else:
            n = write_jsonl_atomic(target, pt_documents(nodes))
        written[fmt] = (target, n)
    return written
