"""Question deduplication: exact-duplicate hash, then greedy semantic dedup by cosine similarity.

- Exact first: a normalized-text key (:func:`~retain.generation.prompts.dedup_key`) catches
  verbatim repeats without embedding anything.
- Semantic: candidate i is dropped when ``cos(e_i, e_k) >= threshold`` for some already *kept* question k
  (anywhere in the tree: the index persists across levels). Greedy in candidate order, so the result is
  exactly what a one-by-one loop would give; ``tests/generation/test_dedup.py`` checks that against a
  brute-force reference.
- Blockwise, memory O(n·d): candidates go in blocks of ``block`` rows, compared against the kept set in
  chunks of ``ref_block`` rows, so the largest temporary is ``block x ref_block``; never n x n.
- Exact pruning (what makes 100k questions fit in seconds on 2 cores): with an orthonormal basis P of the
  top-r principal directions and Q its complement, for unit vectors
  ``cos(u, v) = <Pu, Pv> + <Qu, Qv> <= <Pu, Pv> + |Qu| |Qv|``. That bound is one (r+1)-dim dot product of
  the augmented vectors ``[Pu, |Qu|]``, computed in bfloat16 (~6x fewer flops than the 384-dim fp32
  product, and bf16 matmuls run ~2x faster on CPU). A pair is verified in fp32 only when the bound is
  ``>= threshold - margin``; ``margin`` (0.02) exceeds the bf16 rounding error of a dot product of unit
  vectors (< 2^-8 + 2^-9 ≈ 0.006), so no pair at or above the threshold is ever pruned: the result equals
  brute force. Small inputs skip the pruning (plain fp32 products).
- Approximate path (``index='approx'``, or ``'auto'`` from ``approx_above`` rows on, with faiss installed):
  the kept rows also go into an IVF index (:mod:`retain.generation.ann`) and each candidate is compared in
  fp32 with only the k kept rows the index proposes, not with every kept row; within a block the check
  stays exact. A drop still needs a verified cosine >= threshold, so nothing is dropped wrongly; a
  duplicate whose kept twin the index does not propose is kept (recall < 100 %, measured in
  ``benchmarks/bench_dedup.py``).
- Embeddings: all-MiniLM-L6-v2 through transformers ``AutoModel`` + attention-masked mean pooling + L2
  normalization, which is exactly the sentence-transformers pipeline of that model (its ``modules.json``:
  Transformer -> Pooling(mean) -> Normalize). sentence-transformers itself is not a dependency of retain.

Default threshold 0.92, measured with ``python benchmarks/bench_dedup.py --calibrate`` on 40 hand-written
question pairs embedded with MiniLM: 20 paraphrases (same question reworded) have cosine min 0.817 /
median 0.925 / max 0.978; 20 distinct questions on the same subject (what a follow-up tree produces)
have min 0.368 / median 0.644 / max 0.913 (the max is "When did World War II end?" vs "... begin?").
0.92 is the smallest round value above every distinct pair and still drops 55% of the paraphrases
(0.90: 70% of paraphrases but 1 distinct pair; 0.85: 90% and 1; 0.95: 20% and 0).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import torch

from retain.errors import RetainError
from retain.generation.prompts import dedup_key
from retain.utils import console

KEPT, SURPLUS, DUP_EXACT, DUP_SEMANTIC = "kept", "surplus", "duplicate_exact", "duplicate_semantic"
APPROX_ABOVE = 200_000
"""'auto' index: below this many rows (kept + candidates) the exact path runs; see the module docstring."""


class Embedder:
    """Sentence embeddings (n, d) float32, L2-normalized, from a BERT-style encoder folder."""

    def __init__(self, path: str, batch_size: int = 128, max_length: int = 128):
        from transformers import AutoModel, AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.model = AutoModel.from_pretrained(path, dtype=torch.float32, use_safetensors=True).eval()
        self.batch_size, self.max_length = batch_size, max_length

    @torch.inference_mode()
    def __call__(self, texts: Sequence[str]) -> np.ndarray:
        out = np.zeros((len(texts), self.model.config.hidden_size), dtype=np.float32)
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))  # similar lengths -> little padding
        for s in range(0, len(order), self.batch_size):
            idx = order[s : s + self.batch_size]
            enc = self.tokenizer([texts[i] for i in idx], padding=True, truncation=True,
                                 max_length=self.max_length, return_tensors="pt")
            hidden = self.model(**enc).last_hidden_state  # (b, t, d)
            mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)  # (b, t, 1)
            mean = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            out[idx] = torch.nn.functional.normalize(mean, dim=-1).numpy()
        return out


@functools.lru_cache(maxsize=2)
def load_embedder(name: str) -> Embedder:
    """Cached: the demo and tests call :func:`~retain.generation.run.decompress` many times per process."""
    from retain.assets import resolve_embedder

    return Embedder(resolve_embedder(name))


@dataclass
class Verdict:
    status: str
    """'kept', 'surplus' (its group was already full), 'duplicate_exact' or 'duplicate_semantic'."""
    of: int | None = None
    """For duplicates: position of the kept question it duplicates, in :attr:`QuestionIndex.texts`."""
    similarity: float | None = None


class SemanticIndex:
    """Greedy cosine dedup against a growing set of kept unit vectors (rows of :attr:`kept`)."""

    def __init__(self, threshold: float, dim: int, block: int = 2048, rank: int = 48,
                 margin: float = 0.02, exact_below: int = 4_000_000, ref_block: int = 8192,
                 index: str = "auto", approx_above: int = APPROX_ABOVE, ann: dict | None = None):
        self.threshold, self.block, self.rank, self.margin = threshold, block, rank, margin
        if index not in ("auto", "exact", "approx"):
            raise ValueError(f"index {index!r}: use auto, exact or approx")
        self.index, self.approx_above, self.ann_options = index, approx_above, dict(ann or {})
        """'exact', 'approx' (faiss candidates, verified exactly) or 'auto' (approx once kept + candidates
        reach ``approx_above`` rows and faiss is installed); ``ann``: options of :class:`~retain.generation.ann.KeptAnn`."""
        self._ann = None  # a KeptAnn over the kept rows, once the approximate path is on
        self.ref_block = ref_block
        """Kept rows compared per tile: the largest temporary is block x ref_block (64 MB fp32 at the defaults)."""
        self.exact_below = exact_below
        """Skip the pruning when candidates x kept pairs are fewer than this (plain fp32 is then cheaper)."""
        self._kept = torch.zeros((0, dim), dtype=torch.float32)  # (capacity, d); rows [:size] are kept
        self._aug = torch.zeros((0, rank + 1), dtype=torch.bfloat16)  # (capacity, r+1): [Pu, |Qu|]
        self.size = 0
        self._basis: torch.Tensor | None = None  # (d, r), set once pruning is first used
        self._basis_at = 0
        self._warned = False

    @property
    def kept(self) -> torch.Tensor:
        return self._kept[: self.size]

    def extend(self, emb: np.ndarray) -> None:
        """Append rows as kept without checking them (restoring a resumed run's index)."""
        x = torch.from_numpy(np.ascontiguousarray(emb, dtype=np.float32))
        self._append(x, None if self._basis is None else self._augment(x))

    def add(self, emb: np.ndarray, group: Sequence[int] | None = None,
            cap: Sequence[int] | None = None) -> list[tuple[str, int | None, float | None]]:
        """Decide each candidate row of ``emb`` (n, d) in order; kept rows join the index.

        ``group``/``cap``: at most ``cap[group[i]]`` candidates of a group are kept; later ones are
        'surplus' (checked before similarity, so a surplus candidate neither counts nor blocks others).
        Returns ``(status, kept row it duplicates or its own new row, cosine)`` per candidate.
        """
        x = torch.from_numpy(np.ascontiguousarray(emb, dtype=np.float32))
        n = x.shape[0]
        counts = None if cap is None else np.zeros(len(cap), dtype=np.int64)
        out: list[tuple[str, int | None, float | None]] = []
        prune = n * (self.size + n) >= self.exact_below and x.shape[1] > 2 * (self.rank + 1)
        self._reserve(self.size + n)
        if self._ann is None and self._wants_ann(self.size + n):
            self._start_ann(x)
        if prune and self._ann is None:
            self._refit_basis(x)
        for s in range(0, n, self.block):
            xb = x[s : s + self.block]
            ab = None if self._basis is None or self._ann is not None else self._augment(xb)
            prev_idx, prev_sim = self._match_ann(xb) if self._ann is not None else self._match_kept(xb, ab, prune)
            conflicts: dict[int, list[tuple[int, float]]] = {}  # block row -> earlier block rows similar to it
            for i, j, c in self._pairs(xb, xb, ab, ab, prune and ab is not None, lower=True):
                conflicts.setdefault(i, []).append((j, c))
            new_row: dict[int, int] = {}  # block row -> its kept row
            for i in range(xb.shape[0]):
                g = None if group is None else group[s + i]
                if counts is not None and counts[g] >= cap[g]:  # type: ignore[index]
                    out.append((SURPLUS, None, None))
                elif prev_idx[i] >= 0:
                    out.append((DUP_SEMANTIC, int(prev_idx[i]), float(prev_sim[i])))
                elif (hit := next(((new_row[j], c) for j, c in conflicts.get(i, []) if j in new_row), None)):
                    out.append((DUP_SEMANTIC, hit[0], hit[1]))
                else:
                    new_row[i] = self.size + len(new_row)
                    out.append((KEPT, new_row[i], None))
                    if counts is not None:
                        counts[g] += 1
            rows = list(new_row)
            self._append(xb[rows], None if ab is None else ab[rows])
        return out

    # -- internals -----------------------------------------------------------------------------------

    def _reserve(self, need: int) -> None:
        if need > self._kept.shape[0]:  # grow at least 2x: amortized O(1) per row, memory <= 2 n d
            cap = max(1024, need, 2 * self._kept.shape[0])
            self._kept = torch.cat([self.kept, torch.zeros((cap - self.size, self._kept.shape[1]))])
            self._aug = torch.cat([self._aug[: self.size],
                                   torch.zeros((cap - self.size, self.rank + 1), dtype=torch.bfloat16)])

    def _append(self, x: torch.Tensor, aug: torch.Tensor | None) -> None:
        need = self.size + x.shape[0]
        self._reserve(need)
        self._kept[self.size : need] = x
        if aug is not None:
            self._aug[self.size : need] = aug
        if self._ann is not None:
            self._ann.add(x.numpy())
        self.size = need

    def _wants_ann(self, total: int) -> bool:
        from retain.generation import ann

        if self.index == "exact" or (self.index == "auto" and total < self.approx_above):
            return False
        if ann.available():
            return True
        if self.index == "approx":
            raise RetainError("--dedup_index approx: faiss is not installed; pip install 'retain[ann]' (or faiss-cpu)")
        if not self._warned:
            console.warn(f"dedup of {total:,} questions on the exact path (quadratic); pip install 'retain[ann]' "
                 "for the approximate index")
            self._warned = True
        return False

    def _start_ann(self, x: torch.Tensor) -> None:
        """Build the IVF index on a seeded sample of (kept ∪ candidates) and load the kept rows into it."""
        from retain.generation.ann import KeptAnn

        gen = torch.Generator().manual_seed(0)
        sample = torch.cat([t[torch.randperm(t.shape[0], generator=gen)[:200_000]] for t in (self.kept, x)])
        self._ann = KeptAnn(sample.numpy(), expected=self.size + x.shape[0], **self.ann_options)
        for s in range(0, self.size, 65536):
            self._ann.add(self._kept[s : min(s + 65536, self.size)].numpy())

    def _match_ann(self, xb: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        """As :meth:`_match_kept`, over the index's candidates only: each verified in fp32 (k per row)."""
        cand = torch.from_numpy(self._ann.search(xb.numpy()))  # type: ignore[union-attr]  # (B, k)
        ok = cand >= 0
        cos = torch.einsum("bd,bkd->bk", xb, self._kept[cand.clamp(min=0)])  # exact cosine of each candidate
        hit = ok & (cos >= self.threshold)
        # the earliest kept row among the verified hits, as the exact path reports
        first = torch.where(hit, cand, torch.full_like(cand, torch.iinfo(torch.int64).max)).argmin(1)
        idx = torch.where(hit.any(1), cand.gather(1, first[:, None])[:, 0], -1)
        sim = cos.gather(1, first[:, None])[:, 0]
        return idx.numpy(), sim.numpy().astype(np.float32)

    def _refit_basis(self, x: torch.Tensor) -> None:
        """Top-r uncentered principal directions of (kept ∪ candidates); refit when the data doubled."""
        total = self.size + x.shape[0]
        if self._basis is not None and total < 2 * self._basis_at:
            return
        # A sample is enough for the directions (exactness never depends on them); sampling before the
        # concatenation avoids a transient copy of all n rows.
        gen = torch.Generator().manual_seed(0)
        data = torch.cat([t[torch.randperm(t.shape[0], generator=gen)[:10_000]] for t in (self.kept, x)])
        self._basis, self._basis_at = _top_subspace(data.T @ data, self.rank), total
        if self.size:
            self._aug[: self.size] = self._augment(self.kept)

    def _augment(self, x: torch.Tensor) -> torch.Tensor:
        """[Pu, |Qu|] in bf16 (n, r+1); |Qu| = sqrt(|u|^2 - |Pu|^2) since P ⊕ Q is orthonormal."""
        p = x @ self._basis  # type: ignore[operator]
        q = (x.pow(2).sum(1) - p.pow(2).sum(1)).clamp(min=0).sqrt()
        return torch.cat([p, q[:, None]], 1).to(torch.bfloat16)

    def _match_kept(self, xb: torch.Tensor, ab: torch.Tensor | None, prune: bool) -> tuple[np.ndarray, np.ndarray]:
        """For each block row: the first kept row with cosine >= threshold (-1 if none) and that cosine."""
        idx = np.full(xb.shape[0], -1, dtype=np.int64)
        sim = np.zeros(xb.shape[0], dtype=np.float32)
        for s in range(0, self.size, self.ref_block):
            ref = self._kept[s : min(s + self.ref_block, self.size)]
            ra = None if ab is None else self._aug[s : s + ref.shape[0]]
            for i, j, c in self._pairs(xb, ref, ab, ra, prune, lower=False):
                if idx[i] < 0:
                    idx[i], sim[i] = s + j, c
        return idx, sim

    def _pairs(self, a: torch.Tensor, b: torch.Tensor, aa: torch.Tensor | None, ba: torch.Tensor | None,
               prune: bool, lower: bool) -> list[tuple[int, int, float]]:
        """Pairs (i, j, cos) with cos(a_i, b_j) >= threshold, in (i, j) order; ``lower``: only j < i."""
        # Find candidate rows with one row-max pass, then look for columns only in those rows:
        # ``nonzero`` over a whole tile costs ~10x a matmul, and in practice few rows have any hit.
        tile = aa @ ba.T if prune else a @ b.T  # type: ignore[union-attr]  # bf16 bound or fp32 cosine
        cut = self.threshold - self.margin if prune else self.threshold
        if lower:
            tile = tile.tril(-1)
        rows = (tile.amax(1) >= cut).nonzero().squeeze(1) if tile.shape[1] else tile.new_zeros(0, dtype=torch.long)
        if rows.numel() == 0:
            return []
        ri, jj = (tile[rows] >= cut).nonzero(as_tuple=True)
        ii = rows[ri]
        cos = (a[ii] * b[jj]).sum(1)  # exact fp32 cosine of the surviving pairs
        keep = cos >= self.threshold
        return list(zip(ii[keep].tolist(), jj[keep].tolist(), cos[keep].tolist()))


def _top_subspace(m: torch.Tensor, rank: int, iters: int = 6) -> torch.Tensor:
    """Orthonormal (d, rank) basis of the top eigenvectors of the PSD matrix ``m`` (d, d).

    Subspace iteration + Rayleigh-Ritz instead of a full ``eigh``: a few (d x d)(d x ~rank) products,
    ~20x cheaper at d=384. An approximate basis is fine: the pruning bound is exact for any basis.
    """
    mm = m.double()
    q = torch.randn(m.shape[0], rank + 8, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    for _ in range(iters):
        q, _ = torch.linalg.qr(mm @ q)
    _, v = torch.linalg.eigh(q.T @ mm @ q)  # small (rank+8)^2 problem, ascending eigenvalues
    return (q @ v[:, -rank:]).float().contiguous()


@dataclass
class QuestionIndex:
    """Exact + semantic dedup over every kept question of a tree.

    ``embed``: texts -> (n, d) unit rows (an :class:`Embedder`); None or ``threshold >= 1`` = exact only.
    Order of checks per candidate: exact duplicate of a kept question, then its group's cap ('surplus':
    enough questions already kept for that parent), then similarity to kept questions (earlier ones of
    the same batch included). ``texts[k]`` is kept question k; a :class:`Verdict`'s ``of`` points there.
    """

    threshold: float
    embed: object | None = None
    index: str = "auto"
    """Semantic search: 'exact', 'approx' or 'auto' (see :class:`SemanticIndex`)."""
    approx_above: int = APPROX_ABOVE
    texts: list[str] = field(default_factory=list)
    _keys: dict[str, int] = field(default_factory=dict)
    _semantic: SemanticIndex | None = None

    @property
    def semantic(self) -> bool:
        return self.embed is not None and self.threshold < 1.0

    def preload(self, questions: Sequence[str]) -> None:
        """Add already-decided kept questions (a resumed run) without re-judging them."""
        if not questions:
            return
        if self.semantic:
            self._index_for(emb := self.embed(list(questions))).extend(emb)  # type: ignore[operator]
        for q in questions:
            self._keep(q, dedup_key(q))

    def add(self, questions: Sequence[str], group: Sequence[int] | None = None,
            cap: Sequence[int] | None = None) -> list[Verdict]:
        """Decide each question in order; kept ones join the index. ``group[i]`` indexes ``cap``."""
        keys = [dedup_key(q) for q in questions]
        verdicts: list[Verdict | None] = [None] * len(questions)
        for i, k in enumerate(keys):
            if k in self._keys:
                verdicts[i] = Verdict(DUP_EXACT, self._keys[k], 1.0)
        todo = [i for i, v in enumerate(verdicts) if v is None]
        if not todo:
            return verdicts  # type: ignore[return-value]
        sub_group = None if group is None else [group[i] for i in todo]
        if self.semantic:
            emb = self.embed([questions[i] for i in todo])  # type: ignore[operator]
            decided = self._index_for(emb).add(emb, group=sub_group, cap=cap)
        else:
            decided = self._exact_only([keys[i] for i in todo], sub_group, cap)
        for i, (status, of, sim) in zip(todo, decided):
            if status == KEPT:
                verdicts[i] = self._keep(questions[i], keys[i])
            elif status == DUP_SEMANTIC:  # cosine 1 within the batch is an exact repeat: say so
                exact = dedup_key(self.texts[of]) == keys[i]  # type: ignore[index]
                verdicts[i] = Verdict(DUP_EXACT if exact else DUP_SEMANTIC, of, sim)
            else:
                verdicts[i] = Verdict(status, of, sim)
        return verdicts  # type: ignore[return-value]

    def _index_for(self, emb: np.ndarray) -> SemanticIndex:
        if self._semantic is None:
            self._semantic = SemanticIndex(self.threshold, emb.shape[1], index=self.index,
                                           approx_above=self.approx_above)
        return self._semantic

    def _exact_only(self, keys: list[str], group, cap) -> list[tuple[str, int | None, float | None]]:
        counts = None if cap is None else np.zeros(len(cap), dtype=np.int64)
        seen: dict[str, int] = {}  # key -> its future position in self.texts
        out: list[tuple[str, int | None, float | None]] = []
        for r, k in enumerate(keys):
            if counts is not None and counts[group[r]] >= cap[group[r]]:
                out.append((SURPLUS, None, None))
            elif k in seen:
                out.append((DUP_SEMANTIC, seen[k], 1.0))
            else:
                # the caller appends kept questions in order, so this one lands at len(texts) + #kept so far
                seen[k] = len(self.texts) + len(seen)
                out.append((KEPT, None, None))
                if counts is not None:
                    counts[group[r]] += 1
        return out

    def _keep(self, q: str, key: str) -> Verdict:
        self._keys.setdefault(key, len(self.texts))
        self.texts.append(q)
        return Verdict(KEPT, len(self.texts) - 1)
