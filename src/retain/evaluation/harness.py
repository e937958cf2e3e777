"""lm-evaluation-harness on an in-memory model (HF, PEFT LoRA, or LoRAMoE-injected).

- lm-eval 0.4.13's ``HFLM`` accepts an instantiated model as ``pretrained`` (it then only reads
  ``model.device`` and ``model.config``; PEFT models forward both to the base model), so no wrapper
  class is needed: LoRAMoE layers are ordinary injected modules and run inside the normal forward.
- Offline by construction: ``HF_DATASETS_OFFLINE`` / ``HF_HUB_OFFLINE`` are set before lm-eval (and
  so ``datasets``) is imported, and ``TaskManager(include_defaults=False)`` indexes only the user's
  task folder unless built-in tasks are asked for (built-ins download their data, so they only work
  where the data is cached).
- A local task is a YAML over local files, e.g. ``dataset_path: json`` with
  ``dataset_kwargs: {data_files: {test: /abs/path/items.jsonl}}`` (see ``tests/evaluation``).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any


def _offline() -> None:
    for k in ("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        os.environ.setdefault(k, "1")
    import sys

    if "datasets" in sys.modules:  # already imported: its config read the environment at import time
        import datasets.config

        datasets.config.HF_DATASETS_OFFLINE = True
        datasets.config.HF_HUB_OFFLINE = True


def harness_model(model, tokenizer, *, batch_size: int = 16, max_length: int | None = None):
    """Wrap an in-memory causal LM as an ``lm_eval`` ``LM`` (``HFLM`` with ``pretrained=model``)."""
    _offline()
    from lm_eval.models.huggingface import HFLM

    kw: dict[str, Any] = {"pretrained": model, "tokenizer": tokenizer, "batch_size": batch_size}
    if max_length is not None:
        kw["max_length"] = max_length
    return HFLM(**kw)


def run_harness(model, tokenizer, tasks: list[str], *, include_path: str | Path | None = None,
                include_defaults: bool = False, limit: int | float | None = None, num_fewshot: int | None = None,
                batch_size: int = 16, log_samples: bool = False, seed: int = 0) -> dict:
    """``lm_eval.simple_evaluate`` on the in-memory model; returns lm-eval's results dict
    (``results[task]["acc,none"]`` etc., plus ``samples`` when ``log_samples``)."""
    _offline()
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    from retain.errors import RetainError

    tm = TaskManager(include_path=str(include_path) if include_path else None, include_defaults=include_defaults)
    missing = [t for t in tasks if t not in tm.all_tasks]
    if missing:
        raise RetainError(f"lm-eval tasks not found: {missing}; put their YAML under include_path "
                          f"({include_path}) or enable built-in tasks")
    lm = harness_model(model, tokenizer, batch_size=batch_size)
    return simple_evaluate(model=lm, tasks=list(tasks), task_manager=tm, limit=limit, num_fewshot=num_fewshot,
                           log_samples=log_samples, bootstrap_iters=0, random_seed=seed, numpy_random_seed=seed,
                           torch_random_seed=seed, fewshot_random_seed=seed)


PRIMARY_METRICS = ("acc_norm", "acc", "exact_match")
"""The per-sample metric a task is paired on: the first of these it reports, else its first numeric one."""


def sample_outcomes(out: dict) -> dict[str, dict]:
    """Per task, the per-sample values of its primary metric from a ``log_samples=True`` result:
    ``{task: {"metric", "doc_ids", "values"}}`` (first filter only; tasks without a numeric per-sample
    metric are left out)."""
    tasks: dict[str, dict] = {}
    for task, samples in (out.get("samples") or {}).items():
        if not samples:
            continue
        first = samples[0].get("filter")
        samples = sorted((s for s in samples if s.get("filter") == first), key=lambda s: s["doc_id"])
        names = [m for m in samples[0].get("metrics", []) if all(isinstance(s.get(m), (int, float)) for s in samples)]
        metric = next((m for m in PRIMARY_METRICS if m in names), names[0] if names else None)
        if metric is None:
            continue
        tasks[task] = {"metric": metric, "doc_ids": [s["doc_id"] for s in samples],
                       "values": [float(s[metric]) for s in samples]}
    return tasks


def paired_tasks(tuned: dict[str, dict], base: dict[str, dict], *, n_boot: int = 2000, seed: int = 0) -> dict:
    """``{"lm_eval:<task>": entry}``: the tuned model's per-sample metric minus the base's, paired by
    ``doc_id``, as :func:`retain.evaluation.compare.compare` entries (paired bootstrap 95 % interval; for
    0/1 metrics McNemar p and lost/gained counts), plus ``"metric"`` and ``"binary"``."""
    from retain.evaluation.compare import binary_counts
    from retain.evaluation.stats import paired_bootstrap

    out = {}
    for task, t in tuned.items():
        b = base.get(task)
        if b is None or b["metric"] != t["metric"]:
            continue
        where = dict(zip(b["doc_ids"], b["values"]))
        pairs = [(v, where[d]) for d, v in zip(t["doc_ids"], t["values"]) if d in where]
        if not pairs:
            continue
        a, r = [p[0] for p in pairs], [p[1] for p in pairs]
        entry = paired_bootstrap(a, r, n_boot=n_boot, seed=seed).to_json()
        binary = all(x in (0.0, 1.0) for x in a + r)
        if binary:
            entry.update(binary_counts(a, r))
        out[f"lm_eval:{task}"] = {**entry, "metric": t["metric"], "binary": binary}
    return out
