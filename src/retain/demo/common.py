"""What both demo scenarios share (``retain demo``): the options (:class:`DemoConfig`), the arms
(:data:`METHODS`), the stage clock and the stages both run: open the run, calibrate the base, make the TG
corpus, train an arm, write its row and the summary.

The scenarios live beside it: :mod:`retain.demo.text` (domain SFT of the base LLM) and
:mod:`retain.demo.mllm` (a miniature LLaVA); neither imports the other.
"""

from __future__ import annotations

import dataclasses
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Optional

from retain.errors import RetainError
from retain.utils import console


@dataclass(frozen=True)
class DemoArm:
    """One row of the demo: a registered training method (:mod:`retain.adapters.registry`) and what is
    added to its training."""

    method: str
    """The training method: 'full', 'lora' or 'loramoe'."""
    label: str
    """The row's name in the tables."""
    tg: bool = False
    """Mix the TG corpus into the training data (as the world-knowledge type)."""
    kl_anchor: bool = False
    """Train with ``train.kl_anchor = DemoProfile.kl_anchor`` (KL-anchored SFT, a baseline)."""


METHODS: dict[str, DemoArm] = {
    "full": DemoArm("full", "full FT"),
    "lora": DemoArm("lora", "LoRA"),
    "full_tg": DemoArm("full", "full FT + TG", tg=True),
    "loramoe_tg": DemoArm("loramoe", "LoRAMoE + LBC + TG", tg=True),
    "lora_tg": DemoArm("lora", "LoRA + TG", tg=True),
    "full_kl": DemoArm("full", "full FT + KL anchor", kl_anchor=True),
    "lora_kl": DemoArm("lora", "LoRA + KL anchor", kl_anchor=True),
}


@dataclass
class DemoConfig:
    """retain demo: TG corpus, domain fine-tunes with each method, and the forgetting table."""

    scenario: Literal["text", "mllm"] = "text"
    """text: domain SFT of the base LLM; mllm: a miniature LLaVA (base LLM + EfficientNet-Lite0), stage-1
    projector alignment, then stage-2 visual instruction tuning (easy-VQA) four ways (retain.demo.mllm)."""
    out: Optional[str] = None
    """Output folder (default runs/demo; runs/demo_mllm for --scenario mllm): tg/, <method>/ (train run +
    demo_result.json), reference/, report.md, demo.json, demo.png."""
    profile: Literal["default", "full", "smoke"] = "default"
    """Budgets: default (CPU, ~20 min), full (GPU), smoke (seconds; plumbing only)."""
    model: str = "smollm2"
    """Base model: 'smollm2' (embedded SmolLM2-135M-Instruct), a local HF folder or a hub id."""
    methods: Optional[list[str]] = None
    """Methods to run (full, lora, full_tg, loramoe_tg, lora_tg); default: the profile's list."""
    domain: str = "sst2"
    """Domain data set (train split for SFT, held-out split for the domain score)."""
    tg_corpus: Optional[str] = None
    """Use this existing sft.jsonl (e.g. made with `retain decompress` on a vLLM server) instead of generating one."""
    steps: Optional[int] = None
    """Override the profile's optimizer steps per method."""
    device: str = "auto"
    """'auto' (cuda if available), 'cpu' or 'cuda'."""
    seed: int = 0
    """Seed for TG generation, data mixing and adapter init."""
    fresh: bool = False
    """Delete the output folder first instead of skipping finished stages."""


# ---------------------------------------------------------------- stages


def pick_profile(cfg: "DemoConfig", profiles: dict):
    """A copy of ``profiles[cfg.profile]`` (either scenario's table) with ``--steps`` applied."""
    if cfg.profile not in profiles:
        raise RetainError(f"--profile {cfg.profile}: unknown; choose one of: {', '.join(profiles)}")
    p = dataclasses.replace(profiles[cfg.profile])
    if cfg.steps is not None:
        if cfg.steps < 1:
            raise RetainError(f"--steps {cfg.steps}: must be >= 1")
        p.steps = cfg.steps
    return p


def _console():
    return console.stderr_console()  # status lines; results (the table, "wrote ...") go to stdout


class StageClock:
    """Wall seconds of each demo stage (both scenarios), kept in ``demo.json``'s ``stages``.

    ``clock(label, since)`` records ``time.perf_counter() - since`` and prints it. A re-run skips the stages
    it finds finished (``done_earlier=True``); their times are the ones recorded when they ran (read from
    ``out/demo.json``), listed in ``reused``, so a resumed run still reports what each stage cost. The clock
    starts when the run does (:func:`open_run` makes it).
    """

    def __init__(self, out: Path, con) -> None:
        from retain.utils.io import read_json

        self.con = con
        self.started = time.perf_counter()
        self.recorded: dict[str, float] = (
            read_json(out / "demo.json").get("stages", {}) if (out / "demo.json").exists() else {})
        self.stages: dict[str, float] = {}
        self.reused: list[str] = []

    def __call__(self, label: str, since: float, done_earlier: bool = False) -> None:
        if done_earlier and label in self.recorded:
            self.stages[label] = self.recorded[label]
            self.reused.append(label)
            self.con.print(f"[dim]{label}: done earlier ({self.stages[label]:.0f} s when it ran)[/]")
            return
        self.stages[label] = round(time.perf_counter() - since, 1)
        self.con.print(f"[dim]{label}: {self.stages[label]:.0f} s[/]")

    def total(self) -> float:
        """Seconds since this clock started (this invocation) plus the recorded times of skipped stages."""
        return time.perf_counter() - self.started + sum(self.stages[k] for k in self.reused)


def reference_stage(base, tok, suite, out: Path, stage: StageClock):
    """The base model's calibration and drift reference (both scenarios): loaded from ``out/reference`` when
    an earlier run saved it, else built and saved; timed as the stage "base calibration"."""
    from retain.evaluation.suite import BaseReference

    t0 = time.perf_counter()
    ref_dir = out / "reference"
    calibrated = (ref_dir / "calibration.json").exists()
    if calibrated:
        ref = BaseReference.load(ref_dir, suite)
    else:
        ref = BaseReference.build(base, tok, suite)
        ref.save(ref_dir)
    stage("base calibration", t0, done_earlier=calibrated)
    return ref


def tg_stage(cfg: "DemoConfig", prof, methods: list[str], out: Path, base, tok, stage: StageClock) -> Path | None:
    """The TG corpus when a method mixes it in (both scenarios; :func:`make_tg_corpus`), else None; timed as
    the stage "TG self-decompression" (done earlier when ``out/tg`` already holds it)."""
    t0 = time.perf_counter()
    tg_done = cfg.tg_corpus is None and (out / "tg" / "sft.jsonl").exists()
    tg_path = make_tg_corpus(cfg, prof, out, base, tok) if any(METHODS[m].tg for m in methods) else None
    stage("TG self-decompression", t0, done_earlier=tg_done)
    return tg_path


def run_summary(cfg: "DemoConfig", prof, rows: list[dict[str, Any]], tg_path: Path | None, stage: StageClock,
                ref) -> dict[str, Any]:
    """The ``demo.json`` fields both scenarios write: config, profile, rows, TG corpus and its seconds, the
    run's stage times (``stage``) and the base's known items per probe (``ref``)."""
    return {"config": dataclasses.asdict(cfg), "profile": dataclasses.asdict(prof), "rows": rows,
            "tg_corpus": str(tg_path) if tg_path else None, "tg_seconds": stage.stages["TG self-decompression"],
            "total_seconds": round(stage.total(), 1), "stages": stage.stages, "stages_done_earlier": stage.reused,
            "known": {k: len(v) for k, v in ref.known.items()},
            "prompts": {p.name: p.prompt_format for p in ref.probes}, "suite": ref.suite}


def open_run(cfg: "DemoConfig", out: Path):
    """Start a demo run in ``out`` (both scenarios): emptied first with ``--fresh``, else finished stages are
    kept; seeds set; -> ``(console, device, StageClock)``."""
    from retain.models import resolve_device
    from retain.utils.seed import seed_everything

    if cfg.fresh and out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    con = _console()
    seed_everything(cfg.seed)
    return con, str(resolve_device(cfg.device)), StageClock(out, con)


def train_arm(recipe, run_dir: Path, model, tokenizer, device: str):
    """Train one demo arm into ``run_dir`` (both scenarios) -> ``(TrainResult, trained model)``.

    A killed run resumes from its last checkpoint (the Trainer's resume is bit-exact, tested) and a finished
    one whose evaluation was lost is reused; a folder from an attempt that died before its first checkpoint
    is removed first. A run finished by an earlier process is loaded from its saved folder.
    """
    from retain.models import load_model
    from retain.training.run import train

    resume = (run_dir / "checkpoints").exists() or (run_dir / "train_result.json").exists()
    if not resume and run_dir.exists():
        shutil.rmtree(run_dir)
    result = train(recipe, resume=resume, model=model, tokenizer=tokenizer)
    trained = result.model
    if trained is None:
        trained, _ = load_model(result.model_dir, device=device)
    return result, trained


def arm_row(name: str, make_recipe, model, tokenizer, device: str, out: Path, stage: "StageClock", con, score) -> dict:
    """One fine-tuned row of either scenario: read from ``out/<name>/demo_result.json`` when an earlier run wrote
    it, else train ``make_recipe()`` from ``model`` (:func:`train_arm`), evaluate the result with
    ``score(trained_model)`` (the scenario's metrics) and write the row; both steps are timed on ``stage``."""
    from retain.utils.io import read_json, write_json_atomic

    result_file = out / name / "demo_result.json"
    if result_file.exists():
        con.print(f"{name}: done earlier ({result_file})")
        now = time.perf_counter()  # no recorded time (demo.json lost): this invocation's ~0 s
        stage(f"train {name}", now, done_earlier=True)
        stage(f"evaluate {name}", now, done_earlier=True)
        return read_json(result_file)
    con.print(f"[bold]{METHODS[name].label}[/] ({name})")
    recipe = make_recipe()
    t0 = time.perf_counter()
    result, trained = train_arm(recipe, out / name, model, tokenizer, device)
    stage(f"train {name}", t0)
    t0 = time.perf_counter()
    metrics = score(trained)
    stage(f"evaluate {name}", t0)
    row = result_row(name, METHODS[name].label, metrics, result, recipe.optim.lr, out / name)
    write_json_atomic(result_file, row)
    return row


def result_row(name: str, label: str, metrics: dict, result, lr: float, run_dir: Path) -> dict:
    """One report row (both scenarios): the evaluation's metrics plus what training recorded (loss curve in
    nats per token, from ``run_dir/train_log.jsonl``)."""
    from retain.training.trainer import read_log

    return {"name": name, "label": label, **metrics, "trainable_params": result.trainable_params,
            "total_params": result.total_params, "train_seconds": result.wall_time_s, "steps": result.steps,
            "final_loss": result.final_loss, "examples": result.examples, "counts": result.counts,
            "lr": lr, "loss_curve": [round(r["lm_loss"], 5) for r in read_log(run_dir / "train_log.jsonl")]}


def check_tg_corpus(path: str) -> Path:
    """A given ``--tg_corpus``: it exists and every record is a valid chat example (``file:line``
    errors). Run before any model loads."""
    from retain.data.formats import load_examples

    if not Path(path).is_file():
        raise RetainError(f"--tg_corpus {path}: file not found; run `retain decompress DIR` first or drop the flag")
    load_examples(path, format="messages")
    return Path(path)


def make_tg_corpus(cfg: DemoConfig, prof, out: Path, model, tok) -> Path:
    """Stage 1: TG self-decompression with the in-memory base model → ``out/tg/sft.jsonl``; a given
    ``--tg_corpus`` (checked by :func:`check_tg_corpus` when the run starts) is used as it is."""
    if cfg.tg_corpus:
        return Path(cfg.tg_corpus)
    from retain.generation.backends.hf_backend import HFBackend
    from retain.generation.config import DecompressConfig
    from retain.generation.run import decompress

    # cut_answers="keep": the README's measured tables were made with answers cut by the token limit kept as
    # they were (retain decompress now trims them by default); switching the demo needs a re-run of both.
    dcfg = DecompressConfig(run_dir=str(out / "tg"), model=cfg.model, levels=prof.tg_levels, seed=cfg.seed,
                            cut_answers="keep")
    backend = HFBackend(dcfg.backend, model=model, tokenizer=tok, name=cfg.model)
    run_dir = decompress(dcfg, backend=backend)
    path = run_dir / "sft.jsonl"
    if not path.exists() or path.stat().st_size == 0:
        raise RetainError(f"{path}: the TG run produced no dialogue (every question was dropped); see {run_dir}/manifest.json")
    return path


