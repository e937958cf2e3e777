"""``retain decompress`` / ``retain export`` and the Python API :func:`decompress`.

- Every check that can fail on user input runs before the run directory is touched: config values
  (in ``DecompressConfig.__post_init__``), a run directory made with another config (its
  ``config.json`` fingerprint hash differs), the backend (its model loads through ``load_model``, which
  checks any folder `retain train` writes; an unreachable server raises while the backend is built or
  first called, before any node is written), then the embedder.
- Layout of a run directory::

      config.json      the full config + fingerprint hash (written once, atomically)
      questions.jsonl  journal: one record per expanded parent (asked, kept, dropped questions)
      nodes.jsonl      journal: one record per answered node (id, parent_id, depth, question, answer,
                       model, generation params, drop reasons, tokens)
      manifest.json    config, model, seed, counts per level, tokens, timings, status (atomic rewrites)
      sft.jsonl, sharegpt.json, pt.jsonl   exports (atomic; written when the tree is complete)
      .lock            held while a process works on the directory

- Counts in the manifest are recomputed from the journals, so they are right after any crash;
  timings add up over resumed sessions.
- Plugin hook: ``RETAIN_BACKEND_FACTORY=module:function`` builds the backend from the
  :class:`BackendConfig` instead of the registry (custom backends; the tests' fake backend).
"""

from __future__ import annotations

import dataclasses
import importlib
import logging
import os
import time
from pathlib import Path

from retain.errors import RetainError
from retain.generation.backends.base import Backend
from retain.generation.backends.config import BackendConfig
from retain.generation.config import DecompressConfig, ExportConfig, nodes_per_level
from retain.generation.tree import NODES, QUESTIONS, TreeGrower, read_journal
from retain.utils import console
from retain.utils.io import FolderLock, read_json, write_json_atomic

CONFIG, MANIFEST = "config.json", "manifest.json"
log = logging.getLogger(__name__)
BACKEND_FACTORY_ENV = "RETAIN_BACKEND_FACTORY"


def run_decompress(cfg: DecompressConfig) -> int:
    decompress(cfg)
    return 0


def decompress(cfg: DecompressConfig, backend: Backend | None = None) -> Path:
    """Grow (or resume, or just re-export) the TG tree of ``cfg`` in ``cfg.run_dir``; returns the run dir."""
    run_dir = Path(cfg.run_dir).expanduser()
    previous = _check_run_dir(run_dir, cfg)
    if previous.get("status") == "complete":
        _finish(run_dir, cfg, previous)
        return run_dir
    # The backend first: its model loads through the one loader (retain.models.load_model), which checks any
    # folder `retain train` writes (LoRA and LoRAMoE folders have no config.json) before anything is written.
    backend = backend or _make_backend(_backend_config(cfg))
    index = _question_index(cfg)
    if cfg.progress:  # after the checks, so a bad input stays one line (a tree over LARGE_TREE_NODES needs --yes)
        plan = cfg.plan()
        log.info("plan: %s = %s nodes, %s requests, up to %s generated tokens (before dedup and filter drops)%s",
                 " + ".join(f"{n:,}" for n in plan["nodes_per_level"]), f"{plan['nodes']:,}", f"{plan['requests']:,}",
                 f"{plan['max_new_tokens']:,}", "; resuming" if previous else "")
    with FolderLock(run_dir, "retain decompress", "wait for it to finish or choose another run_dir"):
        if not (run_dir / CONFIG).exists():
            write_json_atomic(run_dir / CONFIG, {"fingerprint": cfg.fingerprint_hash(), "fields": cfg.fingerprint(),
                                                 "config": dataclasses.asdict(cfg)})
        started = time.time()
        grower = TreeGrower(cfg, backend, run_dir, index)
        timings = dict(previous.get("timings", {}))
        try:
            _write_manifest(run_dir, cfg, backend.name, "running", timings, previous)
            grower.grow()
        finally:
            for k, v in grower.timings.items():
                timings[k] = round(timings.get(k, 0.0) + v, 3)
            timings["total_s"] = round(timings.get("total_s", 0.0) + time.time() - started, 3)
            grower.close()
            _write_manifest(run_dir, cfg, backend.name, "running", timings, previous)
        manifest = _write_manifest(run_dir, cfg, backend.name, "complete", timings, previous)
        _finish(run_dir, cfg, manifest)
    return run_dir


def run_export(cfg: ExportConfig) -> int:
    from retain.generation.export import export

    run_dir = Path(cfg.run_dir).expanduser()
    if not (run_dir / CONFIG).exists() or not (run_dir / NODES).exists():
        raise RetainError(f"{run_dir}: not a decompress run directory (no {CONFIG} / {NODES}); run `retain decompress` first")
    manifest = read_json(run_dir / MANIFEST) if (run_dir / MANIFEST).exists() else {}
    if manifest.get("status") != "complete" and not cfg.allow_incomplete:
        raise RetainError(f"{run_dir}: the run has not finished; resume it with the same `retain decompress` command, "
                          "or pass --allow_incomplete to export its answered nodes")
    system = read_json(run_dir / CONFIG)["config"].get("prompts", {}).get("system")
    out = Path(cfg.out).expanduser() if cfg.out else None
    for fmt, (path, n) in export(run_dir, cfg.format, out, system).items():
        console.result(f"{fmt:9s} {n:7d} rows -> {path}")
    return 0


# -- run directory -----------------------------------------------------------------------------------


def _check_run_dir(run_dir: Path, cfg: DecompressConfig) -> dict:
    """The previous manifest ({} for a new run); RetainError if the directory belongs to another config."""
    if run_dir.exists() and not run_dir.is_dir():
        raise RetainError(f"{run_dir}: exists and is not a directory; choose another run_dir")
    if not (run_dir / CONFIG).exists():
        if run_dir.exists() and any((run_dir / f).exists() for f in (NODES, QUESTIONS)):
            raise RetainError(f"{run_dir}: has journals but no {CONFIG}; not a retain run directory, choose another run_dir")
        return {}
    stored = read_json(run_dir / CONFIG)
    if stored.get("fingerprint") != cfg.fingerprint_hash():
        old, new = stored.get("fields", {}), cfg.fingerprint()
        diff = ", ".join(k for k in new if old.get(k) != new[k]) or "generation settings"
        raise RetainError(f"{run_dir}: made with a different config ({diff} differ); rerun with the original "
                          "options or choose a new run_dir")
    return read_json(run_dir / MANIFEST) if (run_dir / MANIFEST).exists() else {}


def _backend_config(cfg: DecompressConfig) -> BackendConfig:
    default = BackendConfig().model
    if cfg.backend.model not in (default, cfg.model):
        raise RetainError(f"--backend.model {cfg.backend.model} and --model {cfg.model} disagree; give the model once, with --model")
    return dataclasses.replace(cfg.backend, model=cfg.model, progress=cfg.backend.progress and cfg.progress)


def _make_backend(bcfg: BackendConfig) -> Backend:
    spec = os.environ.get(BACKEND_FACTORY_ENV)
    if spec:
        module, _, fn = spec.partition(":")
        try:
            return getattr(importlib.import_module(module), fn)(bcfg)
        except (ImportError, AttributeError) as e:
            raise RetainError(f"{BACKEND_FACTORY_ENV}={spec}: cannot load ({e}); use module:function") from None
    from retain.generation.backends.config import make_backend

    return make_backend(bcfg)


def _question_index(cfg: DecompressConfig):
    from retain.generation.dedup import QuestionIndex, load_embedder

    if cfg.dedup_threshold >= 1.0:
        return QuestionIndex(cfg.dedup_threshold)
    try:
        return QuestionIndex(cfg.dedup_threshold, load_embedder(cfg.embedder), index=cfg.dedup_index,
                             approx_above=cfg.dedup_approx_above)
    except OSError as e:
        raise RetainError(f"--embedder {cfg.embedder}: cannot load ({str(e).splitlines()[0]}); use 'minilm' or a local encoder folder") from None


# -- manifest and summary ----------------------------------------------------------------------------


def level_counts(run_dir: Path, cfg: DecompressConfig) -> list[dict]:
    """Per-level counts recomputed from the journals (exact after any crash)."""
    asked, nodes = read_journal(run_dir / QUESTIONS, "parent_id"), read_journal(run_dir / NODES, "id")
    levels = cfg.resolved_levels()
    out = []
    for d, ((n, max_tokens), configured) in enumerate(zip(levels, nodes_per_level(levels)), start=1):
        recs = [r for r in asked.values() if r["depth"] == d]
        ns = [x for x in nodes.values() if x["depth"] == d]
        drops: dict[str, int] = {}
        for r in recs:
            for q in r["dropped"]:
                drops[q["reason"]] = drops.get(q["reason"], 0) + 1
            if r["parse_failed"]:
                drops["parse_failed"] = drops.get("parse_failed", 0) + r["parse_failed"]
        for x in ns:
            for reason in x["dropped"]:
                drops[reason] = drops.get(reason, 0) + 1
        out.append({
            "depth": d, "N": n, "L": max_tokens, "configured": configured,
            "parents": len(recs), "requests": sum(len(r["replies"]) for r in recs),
            "candidates": sum(len(r["questions"]) + len(r["dropped"]) + r["surplus"] for r in recs),
            "questions": sum(len(r["questions"]) for r in recs), "surplus": sum(r["surplus"] for r in recs),
            "unfilled": sum(r["unfilled"] for r in recs), "answered": len(ns),
            "kept": sum(1 for x in ns if not x["dropped"]),
            "truncated": sum(1 for x in ns if x.get("finish_reason") == "length"),
            "trimmed": sum(1 for x in ns if "untrimmed" in x and not x["dropped"]),
            "drops": dict(sorted(drops.items())),
            "prompt_tokens": sum(r["prompt_tokens"] for r in recs) + sum(x["prompt_tokens"] for x in ns),
            "completion_tokens": sum(r["completion_tokens"] for r in recs) + sum(x["completion_tokens"] for x in ns),
        })
    return out


def _write_manifest(run_dir: Path, cfg: DecompressConfig, model: str, status: str, timings: dict, previous: dict) -> dict:
    levels = level_counts(run_dir, cfg)
    manifest = {
        "status": status, "model": model, "seed": cfg.seed, "fingerprint": cfg.fingerprint_hash(),
        "config": dataclasses.asdict(cfg), "levels": levels,
        "totals": {k: sum(lv[k] for lv in levels) for k in ("questions", "answered", "kept", "prompt_tokens", "completion_tokens")},
        "timings": timings, "exports": previous.get("exports", {}),
    }
    write_json_atomic(run_dir / MANIFEST, manifest)
    return manifest


def _finish(run_dir: Path, cfg: DecompressConfig, manifest: dict) -> None:
    from retain.generation.export import export

    written = export(run_dir, ["sft", "sharegpt", "pt"], None, cfg.prompts.system)
    manifest["exports"] = {fmt: {"path": p.name, "rows": n} for fmt, (p, n) in written.items()}
    write_json_atomic(run_dir / MANIFEST, manifest)
    if cfg.progress:
        print_summary(run_dir, manifest)


def print_summary(run_dir: Path, manifest: dict) -> None:
    from rich.table import Table

    t = Table(title=f"TG self-decompression: {manifest['model']} -> {run_dir}")
    for col in ("level", "N", "L", "target", "asked", "dup ex/sem", "no list", "answered", "cut", "dropped", "kept",
                "tok out", "sec"):
        t.add_column(col, justify="right")
    timings = manifest.get("timings", {})
    for lv in manifest["levels"]:
        d, dr = lv["depth"], lv["drops"]
        secs = sum(v for k, v in timings.items() if k.startswith(f"{d}:"))
        t.add_row(str(d), str(lv["N"]), str(lv["L"]), str(lv["configured"]), str(lv["candidates"]),
                  f"{dr.get('duplicate_exact', 0)}/{dr.get('duplicate_semantic', 0)}", str(dr.get("parse_failed", 0)),
                  str(lv["answered"]), str(lv.get("truncated", 0)), str(lv["answered"] - lv["kept"]), str(lv["kept"]),
                  str(lv["completion_tokens"]),
                  f"{secs:.1f}")
    c = console.stdout_console()
    c.print(t)
    tot = manifest["totals"]
    secs = timings.get("total_s", 0.0)
    c.print(f"{tot['kept']} nodes kept of {tot['answered']} answered; {tot['completion_tokens']} tokens generated"
            + (f" in {secs:.0f} s ({tot['completion_tokens'] / secs:.0f} tok/s)" if secs else ""))
    for fmt, e in manifest.get("exports", {}).items():
        c.print(f"  {fmt:9s} {e['rows']:6d} rows  {run_dir / e['path']}")
