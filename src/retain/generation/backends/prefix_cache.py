"""Shared prompt prefixes for the ``hf`` backend: which rows share what, and a bounded LRU of their KV.

- **Grouping** (:func:`group_by_prefix`): prompts are sorted by token ids, so prompts that share a prefix
  (siblings under one parent: the parent's root-to-node dialogue) are adjacent. A contiguous run of them
  shares the shortest common prefix of adjacent pairs; a dynamic programme over the runs picks the split
  that saves the most prefill tokens, ``sum over groups of (members - 1) * shared``. A group of one
  still gets a prefix: its whole prompt but the last token (generation needs one token to start from).
- **Cache** (:class:`PrefixCache`): token ids -> the per-layer key/value tensors of those tokens, each
  ``(kv_heads, tokens, head_dim)``. A lookup returns the entry with the longest common prefix with the
  query (a radix-tree match, done by scanning at most ``max_entries`` entries), so a new prompt re-uses
  any cached prompt it starts like, not only exact prefixes: causal attention makes the keys/values of
  the first ``m`` tokens depend on those tokens only, so ``kv[:, :m]`` of a longer entry is exact.
- **Bound**: at most ``max_tokens`` tokens in all and ``max_entries`` entries; the least recently used
  entries are evicted first, and an entry larger than ``max_tokens`` is not stored. Memory =
  ``max_tokens * layers * 2 * kv_heads * head_dim * bytes per value`` (SmolLM2-135M in float32:
  30 * 2 * 3 * 64 * 4 B = 46 KB per token, so the default 4,096 tokens hold at most 189 MB).
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

import numpy as np
import torch

KV = list[tuple[torch.Tensor, torch.Tensor]]
"""Per layer (keys, values), each (kv_heads, tokens, head_dim)."""

MAX_GROUP = 256
"""A group spans at most this many adjacent prompts (keeps the programme O(n * MAX_GROUP))."""


def common_prefix(a: np.ndarray, b: np.ndarray) -> int:
    """Length of the longest common prefix of two 1-D id arrays."""
    n = min(len(a), len(b))
    diff = np.flatnonzero(a[:n] != b[:n])
    return int(diff[0]) if len(diff) else n


@dataclass
class Group:
    rows: list[int]
    """Indices into the prompt list, in sorted-id order."""
    shared: int
    """Tokens of the common prefix that are prefilled once for all rows (< every row's length)."""


def group_by_prefix(prompts: list[list[int]]) -> list[Group]:
    """Partition the prompts into groups of adjacent (sorted) prompts that share a prefix; see the module doc."""
    if not prompts:
        return []
    order = sorted(range(len(prompts)), key=lambda i: prompts[i])
    arrs = [np.asarray(prompts[i], dtype=np.int64) for i in order]
    n = len(order)
    adj = [common_prefix(arrs[k], arrs[k + 1]) for k in range(n - 1)]
    lens = [len(a) for a in arrs]
    best = [0] * (n + 1)  # best[j] = most tokens saved by grouping the first j prompts
    cut = [0] * (n + 1)
    for j in range(1, n + 1):
        best[j], cut[j] = best[j - 1], j - 1  # prompt j-1 alone
        shared = lens[j - 1] - 1
        for i in range(j - 2, max(-1, j - 1 - MAX_GROUP), -1):  # group = prompts i..j-1
            shared = min(shared, adj[i], lens[i] - 1)
            if shared <= 0:
                break
            saved = best[i] + (j - 1 - i) * shared
            if saved > best[j]:
                best[j], cut[j] = saved, i
    groups: list[Group] = []
    j = n
    while j > 0:
        i = cut[j]
        rows = [order[k] for k in range(i, j)]
        shared = lens[i] - 1 if j - i == 1 else min(min(adj[i : j - 1]), min(lens[i:j]) - 1)
        groups.append(Group(rows, shared))
        j = i
    return groups[::-1]


class PrefixCache:
    """LRU map from token-id prefixes to their KV, bounded in tokens and entries (see the module doc)."""

    def __init__(self, max_tokens: int = 4096, max_entries: int = 256):
        self.max_tokens, self.max_entries = max_tokens, max_entries
        self._entries: OrderedDict[int, tuple[np.ndarray, KV]] = OrderedDict()
        self._next = 0
        self.tokens = 0
        self.hits = 0
        """Lookups that re-used at least one cached token."""
        self.reused_tokens = 0
        """Prompt tokens served from the cache instead of being recomputed."""

    def __len__(self) -> int:
        return len(self._entries)

    def lookup(self, ids: np.ndarray) -> tuple[int, KV | None]:
        """(m, kv) for the entry sharing the longest prefix with ``ids``; kv covers at least m tokens."""
        best_m, best_key = 0, None
        for key, (eids, _) in self._entries.items():
            if len(eids) and len(ids) and eids[0] == ids[0]:
                m = common_prefix(eids, ids)
                if m > best_m:
                    best_m, best_key = m, key
        if best_key is None:
            return 0, None
        self._entries.move_to_end(best_key)
        self.hits += 1
        self.reused_tokens += best_m
        return best_m, self._entries[best_key][1]

    def put(self, ids: np.ndarray, kv: KV) -> None:
        """Store ``kv`` (exactly ``len(ids)`` tokens) for ``ids``, evicting least recently used entries."""
        n = len(ids)
        if n == 0 or n > self.max_tokens or self.max_entries < 1:
            return
        for key, (eids, _) in list(self._entries.items()):
            m = common_prefix(eids, ids)
            if m == n:  # already covered by a longer (or equal) entry
                self._entries.move_to_end(key)
                return
            if m == len(eids):  # a shorter entry the new one covers: drop it
                del self._entries[key]
                self.tokens -= len(eids)
        while self._entries and (self.tokens + n > self.max_tokens or len(self._entries) >= self.max_entries):
            _, (old, _) = self._entries.popitem(last=False)
            self.tokens -= len(old)
        self._entries[self._next] = (ids, kv)
        self._next += 1
        self.tokens += n

    def clear(self) -> None:
        self._entries.clear()
        self.tokens = 0
