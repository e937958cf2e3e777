"""Options of ``retain decompress`` and ``retain export`` (torch-free: ``--help`` stays fast).

Tree shape. A run has levels ``[(N_1, L_1), ..., (N_D, L_D)]``: level i gives every kept node of level
i-1 ``N_i`` children (level 1: ``N_1`` root questions) and answers each with at most ``L_i`` new tokens.
The number of nodes at level k is ``prod_{i<=k} N_i``; the total is the sum over k; the number of
dialogues (root-to-leaf paths, the rows of ``sft.jsonl``) is the count of the last level.

=========  ====================================  ======================  ===========  =========
preset     levels ``[(N_i, L_i)]``               nodes per level         total nodes  dialogues
=========  ====================================  ======================  ===========  =========
wide       ``[(120, 256), (4, 192)]``            120, 480                600          480
balance    ``[(8, 256), (8, 192), (8, 192)]``    8, 64, 512              584          512
=========  ====================================  ======================  ===========  =========

Both presets make ~600 nodes, so they cost about the same; ``wide`` covers more subjects in two turns,
``balance`` goes three turns deep on fewer subjects. Dedup and filter drops make the real counts
smaller (each drop is recorded); ``--oversample`` asks for extra candidates so dedup can still fill N_i.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from dataclasses import dataclass, field
from typing import Literal

from retain.errors import RetainError
from retain.generation.backends.config import BackendConfig
from retain.generation.prompts import DEFAULT_TOPICS, Prompts

EXPORT_FORMATS = ("sft", "sharegpt", "pt")

PRESETS: dict[str, list[tuple[int, int]]] = {
    "wide": [(120, 256), (4, 192)],
    "balance": [(8, 256), (8, 192), (8, 192)],
}
"""Named tree shapes: name -> [(N_i children per node, L_i max new tokens per answer)]."""


MIN_LIST = 3
"""Level-1 lists ask for at least this many questions."""
LARGE_TREE_NODES = 20_000
"""A tree of more planned nodes than this needs ``--yes`` (the presets plan 600; 20,000 nodes of 256
tokens are ~5M generated tokens, hours on one GPU). The plan is printed before any run either way."""


def nodes_per_level(levels: list[tuple[int, int]]) -> list[int]:
    """Configured node count of each level: ``prod_{i<=k} N_i``."""
    out, n = [], 1
    for children, _ in levels:
        n *= children
        out.append(n)
    return out


@dataclass
class DecompressConfig:
    """TG self-decompression: grow a question/answer tree from a model's own knowledge."""

    run_dir: str
    """Run directory (created). Re-running the same command on it resumes; a finished run is re-exported."""
    model: str = "smollm2"
    """Model: 'smollm2' (bundled SmolLM2-135M-Instruct), a local HF folder, a hub id, or the served model name (openai)."""
    backend: BackendConfig = field(default_factory=BackendConfig)
    """How to run the model: kind hf|openai, server URL, batch size, concurrency, dtype, device (model is taken from --model)."""
    preset: str = "wide"
    """Tree shape when --levels is not given: wide = [(120,256),(4,192)] (600 nodes), balance = [(8,256),(8,192),(8,192)] (584 nodes)."""
    levels: list[list[int]] | None = None
    """Custom shape [[N_1, L_1], ...]: N_i children per node (>=1), L_i max new tokens per answer (>=1). Overrides --preset."""
    topics: list[str] = field(default_factory=lambda: list(DEFAULT_TOPICS))
    """Seed topics for level 1: the root questions are asked about these (round-robin)."""
    prompts: Prompts = field(default_factory=Prompts)
    """Prompt templates (root, followup, system); see retain.generation.prompts."""
    oversample: float = 0.5
    """Ask for ceil(N_i * (1 + oversample)) candidate questions so dedup and filters can still fill N_i."""
    max_list_size: int = 8
    """At most this many questions per request; larger asks (level 1) are split over several requests."""
    question_tokens: int = 48
    """Token budget per requested question when asking for a list (max_new_tokens = this x list size)."""
    dedup_threshold: float = 0.92
    """Drop a question whose cosine similarity to a kept question (whole tree) is >= this; 1.0 = exact duplicates only.
    0.92 = just above every distinct same-subject question pair measured (benchmarks/bench_dedup.py --calibrate)."""
    dedup_index: Literal["auto", "exact", "approx"] = "auto"
    """Semantic dedup search: exact (every kept question), approx (faiss IVF candidates, each verified exactly:
    no false drops, may miss a few duplicates; needs `pip install 'retain[ann]'`), or auto = exact below
    --dedup_approx_above questions, approx above when faiss is installed."""
    dedup_approx_above: int = 200_000
    """With --dedup_index auto: kept + candidate questions from which the approximate index is used
    (measured crossover: benchmarks/bench_dedup.py)."""
    embedder: str = "minilm"
    """Sentence embedder for semantic dedup: 'minilm' (bundled all-MiniLM-L6-v2) or a local HF encoder folder."""
    temperature: float = 0.7
    """Sampling temperature (0 = greedy)."""
    top_p: float = 0.95
    """Nucleus sampling mass."""
    seed: int = 0
    """Base seed; every backend call derives its own seed from it."""
    max_repeat_ratio: float = 0.5
    """Repetition filter: drop an answer whose fraction of repeated word 4-grams exceeds this (0 < x <= 1)."""
    cut_answers: Literal["trim", "drop", "keep"] = "trim"
    """An answer cut by the token limit L_i (finish_reason 'length'): trim = back to its last complete
    sentence or line (dropped as cut_by_limit when nothing complete is left), drop = drop it, keep = keep it
    as cut. Either way the node records cut_at_limit and manifest.json counts it (truncated, trimmed)."""
    chunk_size: int = 512
    """Conversations per backend call. Each chunk is journaled when it returns, so a kill loses at most one chunk."""
    progress: bool = True
    """Show tqdm progress bars and the summary table."""
    yes: bool = False
    """Start a tree of more than 20,000 planned nodes (LARGE_TREE_NODES); without it such a run stops with one
    line naming its size. The plan (nodes, requests, tokens) is printed before every run."""

    def __post_init__(self) -> None:
        if self.levels is None and self.preset not in PRESETS:
            raise RetainError(f"--preset {self.preset}: unknown preset; choose one of: {', '.join(PRESETS)}")
        for i, lv in enumerate(self.resolved_levels(), start=1):
            if len(lv) != 2 or not all(isinstance(x, int) and not isinstance(x, bool) for x in lv):
                raise RetainError(f"--levels: level {i} is {list(lv)}; give [N_i, L_i] pairs of integers, e.g. [[3,96],[2,96]]")
            n, max_tokens = lv
            if n < 1 or max_tokens < 1:
                raise RetainError(f"--levels: level {i} has N={n}, L={max_tokens}; both must be >= 1")
        if self.levels is not None and not self.levels:
            raise RetainError("--levels: empty; give at least one [N, L] pair")
        if not 0.0 < self.dedup_threshold <= 1.0:
            raise RetainError(f"--dedup_threshold {self.dedup_threshold}: must be in (0, 1]")
        if self.dedup_index not in ("auto", "exact", "approx"):
            raise RetainError(f"--dedup_index {self.dedup_index}: unknown; choose auto, exact or approx")
        if self.dedup_approx_above < 0:
            raise RetainError(f"--dedup_approx_above {self.dedup_approx_above}: must be >= 0")
        if self.cut_answers not in ("trim", "drop", "keep"):
            raise RetainError(f"--cut_answers {self.cut_answers}: unknown; choose trim, drop or keep")
        if not self.topics:
            raise RetainError("--topics: empty; give at least one topic")
        checks = [("oversample", self.oversample >= 0), ("max_list_size", self.max_list_size >= 1),
                  ("question_tokens", self.question_tokens >= 1), ("chunk_size", self.chunk_size >= 1),
                  ("temperature", self.temperature >= 0), ("top_p", 0 < self.top_p <= 1),
                  ("max_repeat_ratio", 0 < self.max_repeat_ratio <= 1)]
        for name, ok in checks:
            if not ok:
                raise RetainError(f"--{name} {getattr(self, name)}: out of range; see retain decompress --help")
        plan = self.plan()
        if plan["nodes"] > LARGE_TREE_NODES and not self.yes:
            raise RetainError(f"--levels {[list(x) for x in self.resolved_levels()]}: plans {plan['nodes']:,} nodes, "
                              f"{plan['requests']:,} requests and up to {plan['max_new_tokens']:,} generated tokens "
                              f"(over {LARGE_TREE_NODES:,} nodes); pass --yes to start it, or use fewer or smaller "
                              "levels")

    def plan(self) -> dict[str, int | list[int]]:
        """What the tree asks of the model at most (before dedup and filter drops): nodes per level and in all,
        backend requests (question lists and answers) and generated tokens (``question_tokens`` per asked
        question, ``L_i`` per answer)."""
        levels = self.resolved_levels()
        per_level = nodes_per_level(levels)
        requests = tokens = 0
        for d, ((n, max_tokens), nodes) in enumerate(zip(levels, per_level)):
            want = self.candidates(n)
            if d == 0:
                lists = self.root_requests(want)
            else:
                lists = per_level[d - 1] * math.ceil(want / self.max_list_size)
            parents = 1 if d == 0 else per_level[d - 1]
            requests += lists + nodes
            tokens += parents * want * self.question_tokens + nodes * max_tokens
        return {"nodes_per_level": per_level, "nodes": sum(per_level), "requests": requests, "max_new_tokens": tokens}

    def resolved_levels(self) -> list[tuple[int, int]]:
        lv = self.levels if self.levels is not None else PRESETS[self.preset]
        return [tuple(x) for x in lv]  # type: ignore[misc]

    def root_requests(self, want: int) -> int:
        """How many list requests level 1 sends for ``want`` candidates: spread over the topics, but lists of
        >= MIN_LIST questions (models asked for "1 question" tend to ramble) and <= max_list_size."""
        return max(math.ceil(want / self.max_list_size), min(len(self.topics), math.ceil(want / MIN_LIST)))

    def candidates(self, n: int) -> int:
        """How many candidate questions to ask for when N_i = n are wanted."""
        return max(n, math.ceil(n * (1.0 + self.oversample)))

    def fingerprint(self) -> dict:
        """Everything that decides *what* is generated (not how fast): compared when resuming a run dir."""
        d = dataclasses.asdict(self)
        for k in ("run_dir", "backend", "progress", "chunk_size", "preset", "levels", "yes"):
            d.pop(k)
        d["levels"] = [list(x) for x in self.resolved_levels()]
        if d["dedup_index"] == "auto" and d["dedup_approx_above"] == 200_000:
            del d["dedup_index"], d["dedup_approx_above"]  # the defaults: run dirs written before them still resume
        if d["cut_answers"] == "keep":
            del d["cut_answers"]  # what runs did before the option: their dirs resume with --cut_answers keep
        return d

    def fingerprint_hash(self) -> str:
        blob = json.dumps(self.fingerprint(), sort_keys=True, ensure_ascii=False)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


@dataclass
class ExportConfig:
    """Re-export a decompress run directory without generating."""

    run_dir: str
    """Run directory written by `retain decompress`."""
    format: str | list[str] = "sft,sharegpt,pt"
    """Which exports (comma-separated or a list): sft (sft.jsonl, TRL messages), sharegpt (sharegpt.json), pt (pt.jsonl, TG-PT text)."""
    out: str | None = None
    """Output folder (default: the run directory)."""
    allow_incomplete: bool = False
    """Export a run that has not finished (only its answered nodes)."""

    def __post_init__(self) -> None:
        items = self.format.split(",") if isinstance(self.format, str) else list(self.format)
        self.format = [f.strip() for f in items if f.strip()]
        bad = [f for f in self.format if f not in EXPORT_FORMATS]
        if bad or not self.format:
            raise RetainError(f"--format {','.join(bad) or '(empty)'}: unknown export format; choose from: {', '.join(EXPORT_FORMATS)}")
