"""Options of ``retain eval`` and of the Python evaluation API (torch-free, so ``--help`` is fast).

- :class:`EvalSuite` says *what* is measured (probes and item counts, domain, drift prompts, seeds,
  the "known" criterion); the demo builds one in Python, the CLI exposes it as ``--suite.*``.
- ``profile`` picks item counts: ``default`` fits one evaluation of SmolLM2-135M in 60-80 s on a
  2-core CPU (measured in the demo run of 2026-11-22: 61-77 s per fine-tuned model, 77 s for the base
  calibration with its drift reference); ``quick`` about half that; ``full`` is for GPUs.
- :class:`RoutingReportConfig`: ``retain routing`` (:mod:`retain.evaluation.routing`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

DEFAULT_PROBES: dict[str, int] = {"sciq": 350, "arc_easy": 100}
"""Multiple-choice probes only by default: their margins give the continuous retention measure.
Chosen for known items per CPU-second, measured on SmolLM2-135M (2 cores): SciQ 113 known of 300 in
33 s (3.4 known/s), ARC-Easy 55 of 200 in 35 s (1.6/s), MMLU 13 of 60 in 19 s (0.7/s), ARC-Challenge
8 of 40 in 10 s (0.8/s); TriviaQA (generation) 5 of 100. The others are one flag away
(``--probes '{mmlu: 100, arc_challenge: 60, triviaqa: 100}'``) and in the ``full`` profile."""
FULL_PROBES: dict[str, int] = {"arc_easy": 570, "arc_challenge": 299, "mmlu": 2000, "sciq": 1000, "triviaqa": 2000,
                               "nq_open": 1000}


CHAT_INSTRUCTION = "Answer with just the name or short phrase."
"""The line after each behaviour question by default (``EvalSuite.behaviour_instruction``)."""

DEFAULT_BEHAVIOUR: dict[str, int] = {"common_knowledge": 600, "triviaqa": 400}
"""Closed-book questions asked in the chat format (the behaviour probe, ``chat:<name>``). Sized by the rule
in docs/behaviour.md (fixed on the base model alone, before any method was compared)."""


@dataclass
class EvalSuite:
    """What one evaluation measures. Item selection is a seeded sample, identical for every model."""

    probes: dict[str, int] = field(default_factory=lambda: dict(DEFAULT_PROBES))
    """Built-in knowledge probes and how many items each (arc_easy, arc_challenge, mmlu, sciq: multiple
    choice; triviaqa, nq_open: generation). MMLU excludes medical subjects (see retain.data.olmo_eval)."""
    behaviour: dict[str, int] = field(default_factory=lambda: dict(DEFAULT_BEHAVIOUR))
    """Behaviour probes: built-in closed-book sets (common_knowledge, triviaqa, nq_open) and how many questions each, asked
    through the tested model's chat template and scored on its own greedy reply (``chat:<name>``)."""
    behaviour_instruction: str = CHAT_INSTRUCTION
    """The line after each behaviour question ("" asks the bare question). The default resembles what many
    domain fine-tunes are trained on (an instruction line), so docs/behaviour.md also reports the bare form."""
    behaviour_unknown: int = 50
    """Fine-tuned models are asked every behaviour question the base answered correctly (retention needs only
    those) plus a seeded sample of this many questions per probe that the base got wrong (for the ``gained``
    count and an accuracy estimate); -1 asks every question. The base is always asked every question."""
    probe_files: list[str] = field(default_factory=list)
    """User probe files (JSONL; see the README for the two line formats)."""
    probe_prompt: Literal["chat", "fewshot", "zeroshot"] = "chat"
    """How the questions of user *generation* probe files are asked: chat (the model's chat template, a
    behaviour probe), fewshot (3 documented shots that never give an item away) or zeroshot."""
    domain: str | None = "sst2"
    """Domain set scored on its held-out split (sst2, skills, copycolors, ..., medmcqa, medqa); None to skip."""
    domain_items: int = 200
    """Held-out domain items scored."""
    drift_prompts: int = 32
    """Built-in general chat prompts used for the KL drift (at most 32); 0 to skip."""
    drift_new_tokens: int = 32
    """Length of the base model's greedy reply on which the KL is measured."""
    known_margin: float = 0.02
    """A multiple-choice item counts as *known* by the base only if the correct choice wins by at least
    this margin (nats per character of the choice, the acc_norm score) and also wins on the raw sum;
    a letter item needs this margin in nats. Filters items the base gets right by near-coin-flips."""
    max_item_chars: int = 400
    """Items whose question + longest choice exceed this many characters are not sampled (speed)."""
    seed: int = 0
    """Seed of the item samples."""
    batch_size: int = 16
    """Items per forward pass (multiple choice: contexts; their choices ride along)."""
    max_new_tokens: int = 12
    """Generation budget of few-shot generation probes (answers are short; cut at the first newline)."""
    chat_new_tokens: int = 32
    """Generation budget of behaviour (chat) probes; a reply also stops at EOS and at the end of its first line."""

    @classmethod
    def profile(cls, name: Literal["default", "quick", "full", "tiny"] = "default", **overrides) -> "EvalSuite":
        """``default`` (CPU, 60-80 s for SmolLM2 on 2 cores), ``quick`` (about half), ``full`` (GPU),
        ``tiny`` (tests and smoke runs: one probe of each kind, multiple choice, few-shot generation and
        chat, on a few items; 9-10 s of scoring per SmolLM2 model on one CPU core)."""
        if name == "default":
            suite = cls()
        elif name == "full":
            suite = cls(probes=dict(FULL_PROBES), behaviour={"common_knowledge": 1000, "triviaqa": 4000, "nq_open": 2000},
                        behaviour_unknown=-1, domain_items=817,
                        batch_size=64, max_item_chars=2000)
        elif name == "quick":  # about half the default cost, for demos that evaluate many models on a CPU
            suite = cls(probes={"sciq": 200, "arc_easy": 100, "mmlu": 50}, behaviour={"common_knowledge": 300, "triviaqa": 200},
                        domain_items=100, drift_prompts=16)
        elif name == "tiny":
            suite = cls(probes={"arc_easy": 12, "triviaqa": 8}, behaviour={"triviaqa": 8}, domain_items=12,
                        drift_prompts=4, drift_new_tokens=8, chat_new_tokens=12)
        else:
            from retain.errors import RetainError

            raise RetainError(f"unknown eval profile '{name}'; choose default, quick, full or tiny")
        for k, v in overrides.items():
            setattr(suite, k, v)
        return suite


@dataclass
class EvalConfig:
    """``retain eval``: evaluate the base model and fine-tuned folders; write eval.json, eval.md, eval.png."""

    tuned: list[str] = field(default_factory=list)
    """Fine-tuned output folders (full / lora / loramoe, as written by ``retain train``)."""
    base: str = "smollm2"
    """Base model: 'smollm2' (embedded SmolLM2-135M-Instruct), a local HF folder or a hub id."""
    out: str = "runs/eval"
    """Output folder: eval.json, eval.md, eval.png, calibration.json, base_reference.safetensors."""
    profile: Literal["default", "quick", "full", "tiny"] = "default"
    """Item counts: default (CPU, 60-80 s/model for SmolLM2 on 2 cores), quick (about half), full (GPU), tiny (smoke)."""
    probes: dict[str, int] | None = None
    """Override the profile's probes, e.g. '{arc_easy: 200, triviaqa: 0}' (0 drops a probe)."""
    behaviour: dict[str, int] | None = None
    """Override the profile's behaviour probes (chat-format closed-book questions), e.g. '{triviaqa: 400}';
    '{}' turns them off."""
    probe_files: list[str] = field(default_factory=list)
    """User probe files (JSONL) added to the suite."""
    probe_prompt: Literal["chat", "fewshot", "zeroshot"] = "chat"
    """How the questions of generation probe files are asked: chat (the model's chat template; counts as
    behaviour), fewshot (3 documented shots that never give an item away) or zeroshot. Multiple-choice
    files are always scored by log-likelihood."""
    domain: str | None = "sst2"
    """Domain scored on held-out items: a built-in set (sst2, skills, medmcqa, medqa, ...), your own data (a
    file in any training format retain reads, or a folder of them, or a retain train run folder: its
    heldout.jsonl), or 'none'. Scoring by shape: docs/eval.md."""
    domain_items: int | None = None
    """Override the profile's number of held-out domain items."""
    reference: str | None = None
    """Reuse a base reference folder (calibration.json + base_reference.safetensors) from an earlier run
    with the same suite instead of recomputing it."""
    skip_base: bool = False
    """Do not report the base model's own row (its reference is still computed or loaded)."""
    lm_eval_tasks: list[str] = field(default_factory=list)
    """Also run these lm-evaluation-harness tasks on each model (in memory; results under 'lm_eval')."""
    lm_eval_include: str | None = None
    """Folder of local lm-eval task YAMLs (offline: built-in tasks need their data already cached)."""
    lm_eval_limit: int | None = None
    """Items per lm-eval task (None = all)."""
    device: str = "auto"
    """'auto' (cuda, else mps, else cpu, as every other command), 'cpu', 'cuda', 'cuda:N', 'mps'."""
    vqa_items: int = 400
    """Held-out easy-VQA questions (a seeded sample of its test split) scored on image-text-to-text
    folders as their domain score; 0 = none. Text models ignore it."""
    seed: int = 0
    """Seed of the item samples."""
    allow_pickle: bool = False
    """Load pickle weights (pytorch_model.bin) where a folder has no safetensors; unpickling can run code,
    so only for folders you trust."""
    trust_remote_code: bool = False
    """Allow a model folder's own Python code to run (only for models you trust)."""
    gate: str | None = None
    """Forgetting gate: a YAML file of rules (or inline YAML), e.g. '{knowledge_retention: {min_diff: -3},
    drift: {max: 0.05}}'. Checked on the bounds of the paired 95 % intervals; exit 1 when a rule fails;
    writes gate.json. Without --tuned: gates the evaluation saved in --out (no model loads). Rules and modes:
    docs/eval.md."""
    gate_mode: Literal["strict", "lenient"] | None = None
    """strict: a loss must be shown to be small (the interval's bound clears the threshold); lenient: only
    not shown to be large. Overrides the gate file's 'mode' (default strict)."""
    show: Literal["none", "lost", "gained", "all"] = "none"
    """Print the flipped items (question, gold, base and tuned answer). Without --tuned, reads them from
    an earlier run's eval_items.jsonl in --out instead of evaluating."""

    def suite(self) -> EvalSuite:
        over: dict = {"probe_files": list(self.probe_files), "probe_prompt": self.probe_prompt, "seed": self.seed,
                      "domain": None if (self.domain or "").lower() in ("", "none") else self.domain}
        if self.probes is not None:
            over["probes"] = {k: int(v) for k, v in self.probes.items() if int(v) > 0}
        if self.behaviour is not None:
            over["behaviour"] = {k: int(v) for k, v in self.behaviour.items() if int(v) > 0}
        if self.domain_items is not None:
            over["domain_items"] = self.domain_items
        return EvalSuite.profile(self.profile, **over)


@dataclass
class RoutingReportConfig:
    """Where a trained LoRAMoE adapter routes tokens: router mass per expert group and layer, by sample type."""

    adapter_dir: str
    """Folder written by training with method loramoe (adapter_config.json + adapter_model.safetensors)."""
    data: str | None = None
    """JSONL file of {"messages": [...], "sample_type": 1|0|-1} rows (required; an option, not a positional,
    so the command reads `retain routing ADAPTER --data FILE`)."""
    out: str = "routing_report"
    """Output folder: routing.json, routing.md and routing.png."""
    base_model: str | None = None
    """Base model folder or id; None = the one recorded in adapter_config.json."""
    max_examples: int = 256
    """Use at most this many rows of --data (in file order)."""
    batch_size: int = 8
    """Sequences per forward pass."""
    max_length: int = 512
    """Truncate each chat-formatted example to this many tokens."""
    device: str = "auto"
    """'auto' (cuda, else mps, else cpu), 'cpu', 'cuda', 'cuda:N' or 'mps'."""

    def __post_init__(self) -> None:
        from retain.errors import RetainError

        if not self.data:
            raise RetainError("--data: required; give a JSONL file of {'messages': [...], 'sample_type': 1|0|-1}")
        if self.max_examples < 1 or self.batch_size < 1 or self.max_length < 2:
            raise RetainError(f"--max_examples {self.max_examples}, --batch_size {self.batch_size}, --max_length "
                              f"{self.max_length}: need max_examples >= 1, batch_size >= 1 and max_length >= 2")
