"""``retain train`` and its Python API :func:`train`.

Order of work, chosen so that bad input never leaves a half-written run folder:

1. recipe parsed and validated (:mod:`retain.training.recipe`);
2. every dataset read and validated, then mixed (:mod:`retain.data.formats`, :mod:`retain.data.mixture`);
   the base model's folder checked (no weights loaded);
3. the output folder locked (``.lock``, :class:`retain.utils.io.FolderLock`: a second ``retain train`` on
   the same folder stops here with one line) and checked (:func:`check_output_dir`: an existing run needs
   ``--resume``, which refuses changed settings; a file the run did not write is never overwritten);
4. model + tokenizer loaded, examples encoded, adapters injected (``prepare_model``);
5. only then files are written: ``recipe.yaml`` (the recipe with the flags applied, marked as the run's),
   ``train_log.jsonl`` (appended as steps finish), ``checkpoints/checkpoint-<step>/`` (the Trainer's, every
   ``save_every`` steps; complete once ``retain_state.json`` is in it), and at the end ``model/``
   (``save_finetuned``), ``loss.png`` and ``train_result.json``.

The loop is transformers' ``Trainer`` (:class:`retain.training.trainer.RetainTrainer`). Under ``torchrun``
or ``accelerate launch`` every rank runs the same code; only rank 0 writes files.
"""

from __future__ import annotations

import copy
import logging
import shutil
import time
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from retain.errors import RetainError
from retain.training.config import Recipe, TrainCommand
from retain.utils import console

log = logging.getLogger(__name__)

_RUN_FILES = ("train_log.jsonl", "checkpoints", "model", "train_result.json")


@dataclass
class TrainResult:
    output_dir: str
    """The run folder."""
    model_dir: str
    """The fine-tuned model/adapter folder (load it with retain.models.load_model)."""
    method: str
    steps: int
    final_loss: float
    """Mean LM loss (nats per assistant token, averaged as ``mixture.loss_balance`` says) of the last
    ``final_loss_steps`` steps (:func:`retain.training.trainer.final_loss`; what the progress bar shows last;
    the same whether or not the run was resumed)."""
    wall_time_s: float
    """Training-loop seconds (all sessions of a resumed run; model loading excluded)."""
    tokens_per_s: float
    """Input tokens (pad excluded, all processes) per second of this session's loop."""
    trainable_params: int
    total_params: int
    examples: int
    """Examples in the encoded mixture."""
    counts: dict[str, int] = field(default_factory=dict)
    """Examples taken from each dataset."""
    eval_loss: float | None = None
    """Validation loss on the datasets' ``eval_split`` records at the end of training (nats per assistant
    token, mean over evaluation batches); None without a held-out split."""
    heldout: int = 0
    """Held-out records (``eval_split``), in <output_dir>/heldout.jsonl."""
    final_loss_steps: int = 0
    """The steps ``final_loss`` averages (10, or fewer in a shorter run)."""
    model: Any = field(default=None, repr=False, compare=False)
    """The trained module in memory (rank 0; None when the run had already finished)."""

    def to_json(self) -> dict:
        """Every field but the in-memory model."""
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name != "model"}


def load_mixture(recipe: Recipe):
    """Read every dataset (validated) and mix them by weight → :class:`retain.data.mixture.Mixture`
    (held-out splits excluded: :func:`load_data`)."""
    return load_data(recipe)[0]


def split_heldout(examples: list[dict], split: float | None, seed: int, where: str) -> tuple[list[dict], list[dict]]:
    """(train, held out) of one dataset: ``split`` a share in (0, 1) (at least one) or a count of distinct
    records, a seeded sample; identical records stay on one side (so nothing held out is trained on), both
    sides in file order."""
    import json
    import random

    if not split:
        return examples, []
    keys = [json.dumps(ex.get("messages", ex.get("text")), sort_keys=True) for ex in examples]
    distinct = list(dict.fromkeys(keys))
    k = max(1, round(split * len(distinct))) if split < 1 else int(split)
    if k >= len(distinct):
        raise RetainError(f"{where}: eval_split={split} holds out {k} of {len(distinct)} distinct records, leaving "
                          "none to train on; lower it")
    held = set(random.Random(seed).sample(distinct, k))
    return [ex for ex, key in zip(examples, keys) if key not in held], [ex for ex, key in zip(examples, keys) if key in held]


def load_data(recipe: Recipe):
    """(mixture, held-out examples): every dataset read and validated, its ``eval_split`` held out (never
    trained on), the rest mixed by weight."""
    from retain.data.formats import load_examples
    from retain.data.mixture import Source, mix

    sources, heldout = [], []
    for i, d in enumerate(recipe.datasets):
        examples = load_examples(d.path, format=d.format, sample_type=d.type, limit=d.limit, image_folder=d.image_folder)
        examples, held = split_heldout(examples, d.eval_split, recipe.train.seed, f"datasets[{i}] ({d.path})")
        heldout += held
        sources.append(Source(name=f"datasets[{i}] {d.path}", examples=examples, weight=d.weight))
    mixture = mix(sources, size=recipe.mixture.size, allow_repeat=recipe.mixture.allow_repeat, seed=recipe.train.seed)
    return mixture, heldout


def check_base(recipe: Recipe) -> str:
    """The base model's path, its weights checked (safetensors unless ``model.allow_pickle``)."""
    from retain.adapters.check import check_weights
    from retain.assets import resolve_model

    if Path(recipe.model.name, "adapter_config.json").expanduser().exists():
        raise RetainError(f"model.name {recipe.model.name}: an adapter folder; training starts from a base model or "
                          "a full fine-tune (give the adapter's base model)")
    path = resolve_model(recipe.model.name)
    if Path(path).is_dir():
        check_weights(path, recipe.model.allow_pickle, opt_in="--model.allow_pickle true")
    return path


def load_base(recipe: Recipe, device):
    """Base model (``recipe.model``) and its tokenizer, on ``device``, through the one loader
    (:func:`retain.models.load_model`): a base name, a local folder or a full fine-tune; for an
    image-text-to-text (MLLM) folder the model and its processor. An adapter folder is refused: training
    puts a fresh adapter on a plain model."""
    from retain.models import load_model

    m = recipe.model
    model, tok = load_model(m.name, device=device, dtype=m.dtype, trust_remote_code=m.trust_remote_code,
                            allow_pickle=m.allow_pickle, key="model.name", device_key="model.device",
                            opt_in="--set model.allow_pickle=true")
    return model, tok


def check_modality(recipe: Recipe, mixture, multimodal: bool) -> None:
    """Images and the ``projector`` method need an image-text-to-text model: one line, before training."""
    if multimodal:
        return
    with_image = next((i for i, ex in enumerate(mixture.examples) if ex.get("images")), None)
    if with_image is not None:
        raise RetainError(f"model.name={recipe.model.name}: a text model, but the datasets hold images; give an "
                          "image-text-to-text model folder (e.g. one written by retain.multimodal.model.save_mllm)")
    if recipe.method == "projector":
        raise RetainError(f"method=projector: model.name={recipe.model.name} has no multimodal projector; use "
                          "full, lora or loramoe, or an image-text-to-text model folder")


RUN_RECIPE = "recipe.yaml"
RUN_RECIPE_HEADER = ("# Written by retain train: the recipe this run trains (the file's keys with the flags applied).\n"
                     "# Continue the run with: retain train <this file> --resume\n")
"""First lines of the run's own ``recipe.yaml``: how a later run tells its file from a user's recipe."""

RESUME_SAFE = ("train.output_dir", "train.progress", "train.log_every", "train.save_every", "train.keep_checkpoints",
               "train.snapshot_steps",
               "train.keep_final_checkpoint", "train.report_to")
"""Recipe keys a resumed run may change: where and how often it logs and checkpoints, never what it trains."""
RESUME_LENGTH = ("train.max_steps", "train.epochs")
"""Keys that set the run's length: a resumed run may change them when the learning rate of a step does not
depend on the run's length (``optim.schedule: constant`` and no ``warmup_ratio``), so the steps already
trained are those of the longer (or shorter) run."""


@dataclass
class OutputPlan:
    """What :func:`check_output_dir` found: a finished run to return, or how to go on."""

    finished: TrainResult | None = None
    """The run already finished with these settings: its result, nothing to train (else: train, from the
    last complete checkpoint when resuming; a finished run made longer continues from its final one)."""


def _run_files(out: Path) -> list[str]:
    """The run files in ``out``. A ``train_log.jsonl`` with no row and nothing else (a start that failed
    before its first step) is no run: the corrected command starts afresh without ``--resume``."""
    existing = [name for name in _RUN_FILES if (out / name).exists()]
    if existing == ["train_log.jsonl"] and not (out / "train_log.jsonl").read_text(encoding="utf-8").strip():
        return []
    return existing


def _written_by_run(path: Path) -> bool:
    with open(path, encoding="utf-8", errors="replace") as f:
        return f.read(len(RUN_RECIPE_HEADER)) == RUN_RECIPE_HEADER


def _flat(data: Any, prefix: str = "") -> dict[str, Any]:
    """Nested recipe dict -> ``{"optim.lr": 0.001, "datasets": [...], ...}`` (lists stay whole)."""
    if not isinstance(data, dict):
        return {prefix: data}
    out: dict[str, Any] = {}
    for k, v in data.items():
        out.update(_flat(v, f"{prefix}.{k}" if prefix else k))
    return out


def recipe_changes(old: Recipe, new: Recipe) -> dict[str, tuple[Any, Any]]:
    """``{dotted key: (old value, new value)}`` for every recipe key whose value differs."""
    import yaml

    from retain.training.recipe import dump_recipe

    a, b = (_flat(yaml.safe_load(dump_recipe(r))) for r in (old, new))
    return {k: (a.get(k), b.get(k)) for k in dict.fromkeys([*a, *b]) if a.get(k) != b.get(k)}


def _length_free_schedule(recipe: Recipe) -> bool:
    o = recipe.optim
    return o.schedule == "constant" and (o.warmup_steps > 0 or o.warmup_ratio == 0)


def check_output_dir(out: Path, recipe: Recipe, resume: bool) -> OutputPlan:
    """Refuse what would overwrite or misrecord a run, before any model loads.

    - A folder holding a run needs ``--resume``; a fresh run never overwrites a ``recipe.yaml`` or a
      ``loss.png`` it did not write (the user's own recipe, when ``output_dir`` is its folder).
    - ``--resume`` of a run with something to keep (a complete checkpoint, or a finished result) compares
      the recipe with the run's ``recipe.yaml``: a change of any key that alters what is trained is refused,
      naming the key; :data:`RESUME_SAFE` keys may change; :data:`RESUME_LENGTH` keys may change when the
      schedule does not depend on the run's length (a finished run then needs its final checkpoint:
      ``train.keep_final_checkpoint: true``).
    """
    from retain.training.recipe import load_recipe
    from retain.training.trainer import complete_checkpoints
    from retain.utils.io import read_json

    existing = _run_files(out)
    if existing and not resume:
        raise RetainError(
            f"{out}: already holds a run ({', '.join(existing)}); pass --resume to continue it, or set "
            "--output_dir to a new folder"
        )
    if not existing:
        for name in (RUN_RECIPE, "loss.png"):
            p = out / name
            if p.exists() and not (name == RUN_RECIPE and p.is_file() and _written_by_run(p)):
                raise RetainError(f"{p}: a file this run did not write (your recipe?); retain train writes its own "
                                  f"{name} there, so set --train.output_dir to another folder (or move the file)")
        return OutputPlan()
    finished = (out / "train_result.json").exists()
    if not finished and not complete_checkpoints(out):
        return OutputPlan()  # nothing kept: the run starts again at step 0 (with a warning), settings and all
    stored = out / RUN_RECIPE
    if not stored.is_file():
        raise RetainError(f"{stored}: missing, so --resume cannot check that the settings are the run's; "
                          "start a new --train.output_dir")
    changes = recipe_changes(load_recipe(stored), recipe)
    unsafe = {k: v for k, v in changes.items() if k not in RESUME_SAFE + RESUME_LENGTH}
    if unsafe:
        key, (was, now) = next(iter(unsafe.items()))
        more = f" (also {', '.join(list(unsafe)[1:])})" if len(unsafe) > 1 else ""
        raise RetainError(f"--resume: {key} was {was!r} in {stored}, now {now!r}{more}; a resumed run keeps the "
                          "settings it trained with: drop the change, or set --train.output_dir to a new folder")
    longer = {k: v for k, v in changes.items() if k in RESUME_LENGTH}
    if longer:
        key, (was, now) = next(iter(longer.items()))
        if not _length_free_schedule(recipe):
            raise RetainError(
                f"--resume: {key} was {was!r}, now {now!r}; with optim.schedule {recipe.optim.schedule}"
                f"{' and warmup_ratio' if recipe.optim.warmup_ratio and not recipe.optim.warmup_steps else ''} the "
                "learning rate of every step depends on the run's length, so the steps already trained would not be "
                "those of the new length: train a new --train.output_dir (runs with a constant schedule can be "
                "extended)")
    if not finished:
        return OutputPlan()
    result = TrainResult(**read_json(out / "train_result.json"))
    if not longer:
        return OutputPlan(finished=result)
    if recipe.train.max_steps is not None and recipe.train.max_steps <= result.steps:
        raise RetainError(f"--resume: train.max_steps={recipe.train.max_steps}, but the run in {out} already "
                          f"finished {result.steps} steps; give more steps, or a new --train.output_dir")
    if not complete_checkpoints(out):
        raise RetainError(f"--resume: {out} finished at step {result.steps} and kept no checkpoint to continue "
                          f"from, so {next(iter(longer))} cannot be raised; set train.keep_final_checkpoint: true "
                          "to make runs extendable, or train a new --train.output_dir")
    return OutputPlan()


def training_arguments(recipe: Recipe, out: Path, steps: int):
    """transformers ``TrainingArguments`` for the recipe; checkpoints go to ``out/checkpoints/``.

    Only what the recipe fixes is set; a launcher's accelerate config (DDP, FSDP, DeepSpeed, mixed
    precision) reaches the Trainer through the environment accelerate sets.
    """
    from transformers import TrainingArguments

    from retain.models import resolve_device

    from retain.training.trainer import CHECKPOINTS

    t, dev = recipe.train, recipe.model.device
    return TrainingArguments(
        output_dir=str(out / CHECKPOINTS),
        max_steps=steps,
        per_device_train_batch_size=t.batch_size,
        gradient_accumulation_steps=t.grad_accum,
        learning_rate=recipe.optim.lr,  # the optimizer and scheduler are built by RetainTrainer
        max_grad_norm=recipe.optim.max_grad_norm or 0.0,
        bf16=t.bf16_autocast,
        seed=t.seed,
        use_cpu=resolve_device(dev, key="model.device").type == "cpu",
        logging_strategy="steps",
        logging_steps=t.log_every,
        logging_nan_inf_filter=False,
        save_strategy="steps" if t.save_every else "no",
        save_steps=t.save_every or 1,
        save_total_limit=t.keep_checkpoints,
        include_num_input_tokens_seen="non_padding",
        remove_unused_columns=False,
        ddp_find_unused_parameters=False,
        dataloader_pin_memory=False,
        disable_tqdm=not console.show_progress(t.progress),
        report_to=list(t.report_to) or "none",
    )


def train(recipe: Recipe, resume: bool = False, model: Any = None, tokenizer: Any = None,
          copy_model: bool = True) -> TrainResult:
    """Fine-tune by ``recipe``; returns a :class:`TrainResult` (``.model`` holds the trained module).

    model/tokenizer: an already-loaded base model (skips loading ``recipe.model.name``; the name is
    still recorded as the base of the saved adapter). It is deep-copied first unless ``copy_model=False``
    (then it is trained in place, and LoRA/LoRAMoE inject layers into it).
    """
    import contextlib
    import os

    from retain.multimodal.methods import is_multimodal
    from retain.multimodal.model import is_mllm_folder
    from retain.utils.io import FolderLock

    recipe.validate()
    out = Path(recipe.train.output_dir)
    mixture, heldout = load_data(recipe)
    if model is None:
        multimodal = is_mllm_folder(check_base(recipe))  # a pickle-only or incomplete base folder fails here
    else:
        multimodal = is_multimodal(model)
    check_modality(recipe, mixture, multimodal)
    # One process per run folder, locked before the folder is checked and any model loads (rank 0 of a
    # launch holds it for all ranks); the kernel releases it when the process ends, however it ends.
    rank0 = int(os.environ.get("RANK", "0")) == 0
    lock = FolderLock(out, "retain train", "wait for it to finish or set --train.output_dir to another folder")
    with lock if rank0 else contextlib.nullcontext():
        plan = check_output_dir(out, recipe, resume)
        if plan.finished is not None:
            log.info("%s: run already finished; returning its result", out)
            return plan.finished
        return _train_locked(recipe, out, mixture, heldout, multimodal, resume, model, tokenizer, copy_model)


def _train_locked(recipe: Recipe, out: Path, mixture, heldout: list[dict], multimodal: bool, resume: bool, model: Any,
                  tokenizer: Any, copy_model: bool) -> TrainResult:
    """:func:`train` once the inputs are checked and ``out`` is locked: load, train, save."""
    import torch

    from retain.adapters.methods import prepare_model, save_finetuned, trainable_parameters
    from retain.data.collate import Collator, encode_examples
    from retain.models import pad_token_id, resolve_device
    from retain.multimodal.methods import prepare_mllm
    from retain.training.plots import plot_loss
    from retain.training.recipe import dump_recipe
    from retain.training.trainer import (
        CHECKPOINTS, LossBalance, RetainTrainer, RunLogCallback, SnapshotCallback, StepBarCallback, StreamDataset,
        check_resume, complete_checkpoints, final_loss, read_log, total_steps, type_shares,
    )
    from retain.utils.io import (
        _disk_full, is_no_space, no_space, write_json_atomic, write_jsonl_atomic, write_text_atomic,
    )
    from retain.utils.seed import seed_everything
    from accelerate import PartialState

    # The process group (torchrun / accelerate launch) is joined here, as TrainingArguments would.
    dev = recipe.model.device
    state = PartialState(cpu=resolve_device(dev, key="model.device").type == "cpu")
    world, is_main = state.num_processes, state.is_main_process
    seed_everything(recipe.train.seed)
    if model is None:
        base, tok = load_base(recipe, state.device)
    else:
        if tokenizer is None:
            raise RetainError("train(model=...): pass the tokenizer too")
        base, tok = (copy.deepcopy(model) if copy_model else model), tokenizer
        base.to(state.device)
    if multimodal:  # tok is the processor: images expanded to their tokens, pixels loaded per batch
        from retain.multimodal.collate import MultimodalCollator, encode_mm_examples

        features, dropped = encode_mm_examples(tok, mixture.examples, recipe.train.max_length)
        held_features = encode_mm_examples(tok, heldout, recipe.train.max_length)[0] if heldout else []
        collator = MultimodalCollator(tok, pad_token_id(tok.tokenizer))
    else:
        features, dropped = encode_examples(tok, mixture.examples, recipe.train.max_length)
        held_features = encode_examples(tok, heldout, recipe.train.max_length)[0] if heldout else []
        collator = Collator(pad_token_id(tok))
    if dropped:
        log.warning("%d examples have no assistant token within max_length=%d; skipped",
                    dropped, recipe.train.max_length)
    if not features:
        raise RetainError(f"train.max_length={recipe.train.max_length}: no example keeps an assistant token; raise it")
    g = recipe.train.batch_size * recipe.train.grad_accum * world
    steps = total_steps(recipe, len(features), world)
    if is_main:
        log.info("mixture: %s", ", ".join(f"{n}: {c}" for n, c in mixture.counts.items()))
        log.info("%d examples, global batch %d, %d steps (%.2f epochs), %d process(es) on %s",
                 len(features), g, steps, steps * g / len(features), world, state.device)
        log.info("loss balance: %s", recipe.mixture.loss_balance)
    if recipe.model.gradient_checkpointing:
        base.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    torch.manual_seed(recipe.train.seed)  # adapter init: identical on every rank and every run
    if multimodal:  # vision tower frozen; projector / LLM + projector / adapters on the LLM
        trainee = prepare_mllm(base, recipe.method, lora=recipe.lora, loramoe=recipe.loramoe)
    else:
        trainee = prepare_model(base, recipe.method, lora=recipe.lora, loramoe=recipe.loramoe)
    trainee.to(state.device)
    n_train, n_total = trainable_parameters(trainee)

    meta = {"world_size": world, "batch_size": recipe.train.batch_size,
            "grad_accum": recipe.train.grad_accum, "examples": len(features), "seed": recipe.train.seed,
            "sort_by_length": recipe.train.sort_by_length}
    ckpts = complete_checkpoints(out) if resume else []
    saved = check_resume(ckpts[-1], meta) if ckpts else None
    start = saved["step"] if saved else 0
    if resume and not ckpts and is_main:
        console.warn(f"--resume: {out} has no checkpoint to resume from; starting a fresh run at step 0")
    log_path = out / "train_log.jsonl"
    if is_main:
        out.mkdir(parents=True, exist_ok=True)
        write_text_atomic(out / RUN_RECIPE, RUN_RECIPE_HEADER + dump_recipe(recipe))
        if (out / "train_result.json").exists():  # a finished run made longer: finished again at the end
            (out / "train_result.json").unlink()
        if heldout:  # the eval_split records, never trained on: retain eval --domain <output_dir>
            write_jsonl_atomic(out / "heldout.jsonl", [{k: ex[k] for k in ("messages", "images") if k in ex}
                                                       for ex in heldout])
        # Drop rows logged after the checkpoint we resume from: those steps run again.
        write_jsonl_atomic(log_path, read_log(log_path, max_step=start) if start else [])
        if resume and (out / CHECKPOINTS).is_dir():  # torn by a kill or a full disk, or newer than ckpts[-1]
            for p in (out / CHECKPOINTS).iterdir():
                if p.name.startswith("checkpoint-") and p not in ckpts:
                    shutil.rmtree(p, ignore_errors=True)
    state.wait_for_everyone()

    # mixture.shares holds each dataset's normalised weight, in the order of recipe.datasets
    balance = LossBalance(recipe.mixture.loss_balance,
                          type_shares([d.type for d in recipe.datasets], list(mixture.shares.values())))
    callback = RunLogCallback(log_path, recipe.train.seed, meta, saved, is_main,
                              save_last=recipe.train.keep_final_checkpoint)
    # The Trainer sets config.use_cache = TrainingArguments.use_cache (False) on the model it trains; the saved
    # folder (and the model returned) keep what the base had, so decoding elsewhere uses the KV cache.
    base_use_cache = getattr(getattr(trainee, "config", None), "use_cache", None)
    trainer = RetainTrainer(
        model=trainee, args=training_arguments(recipe, out, steps), recipe=recipe, balance=balance,
        train_dataset=StreamDataset(features, recipe.train.seed, steps * g,
                                    sort_window=g if recipe.train.sort_by_length else 0),
        # No processing_class: checkpoints hold weights and optimizer state only (the tokenizer goes to model/).
        data_collator=collator, callbacks=[callback],
        base_model=recipe.model.name, eval_dataset=held_features or None,
    )
    callback.trainer = trainer
    if recipe.train.snapshot_steps:
        if trainer.is_fsdp_enabled or trainer.is_deepspeed_enabled:
            raise RetainError("train.snapshot_steps: not supported with FSDP / DeepSpeed (sharded weights); drop it "
                              "or keep checkpoints (train.save_every)")

        def snapshot(dest: Path) -> None:  # the final model's format and use_cache (the Trainer turns it off)
            cache = getattr(trainee.config, "use_cache", None)
            if base_use_cache is not None:
                trainee.config.use_cache = base_use_cache
            save_finetuned(trainee, dest, base_model=recipe.model.name, tokenizer=tok)
            if cache is not None:
                trainee.config.use_cache = cache

        trainer.add_callback(SnapshotCallback(recipe.train.snapshot_steps, out / "snapshots", snapshot, is_main))
    if is_main and state.num_processes > 1:  # one process says nothing (the line above names the device)
        log.info("engine: transformers Trainer under accelerate (%s)", trainer.accelerator.distributed_type.value)
    # No per-step dicts on stdout (train_log.jsonl has them): without a bar the Trainer's PrinterCallback
    # prints them, and its tqdm bar writes them to stdout too; StepBarCallback shows the loss on the bar.
    from transformers import PrinterCallback, ProgressCallback

    trainer.remove_callback(PrinterCallback)
    if trainer.pop_callback(ProgressCallback) is not None:
        trainer.add_callback(StepBarCallback(read_log(log_path) if is_main and start else None))
    try:
        trainer.train(resume_from_checkpoint=str(ckpts[-1]) if ckpts else None)
    except Exception as e:  # a checkpoint write on a full disk: one line; --resume skips the torn folder
        if is_no_space(e) or (isinstance(e, RuntimeError) and _disk_full(out)):
            raise no_space(out / CHECKPOINTS) from None
        raise
    if base_use_cache is not None:
        trainee.config.use_cache = base_use_cache

    # Validation loss on the held-out split, once at the end (every rank takes part; nats per assistant token,
    # averaged over evaluation batches).
    eval_loss = trainer.evaluate()["eval_loss"] if held_features else None
    rows = read_log(log_path) if is_main else []
    loss, loss_steps = final_loss(rows or callback.rows)
    result = TrainResult(
        output_dir=str(out), model_dir=str(out / "model"), method=recipe.method, steps=trainer.state.global_step,
        final_loss=loss, final_loss_steps=loss_steps,
        wall_time_s=round(callback.elapsed, 3),
        tokens_per_s=round(callback.session_tokens / callback.session_seconds, 2) if callback.session_seconds else 0.0,
        trainable_params=n_train, total_params=n_total, examples=len(features), counts=mixture.counts,
        eval_loss=None if eval_loss is None else round(float(eval_loss), 6), heldout=len(heldout), model=trainee,
    )
    if trainer.is_fsdp_enabled or trainer.is_deepspeed_enabled:
        # Sharded parameters: the Trainer gathers them (every rank takes part) into the method's format.
        trainer.save_model(str(out / "model"))
    elif is_main:
        save_finetuned(trainee, out / "model", base_model=recipe.model.name, tokenizer=tok)
    if is_main:
        if rows:
            plot_loss(rows, out / "loss.png", title=f"{recipe.method} on {len(features)} examples")
        write_json_atomic(out / "train_result.json", result.to_json())
        if not recipe.train.keep_final_checkpoint:
            shutil.rmtree(out / CHECKPOINTS, ignore_errors=True)
    state.wait_for_everyone()
    trainee.eval()
    return result


def eval_config(recipe: Recipe, result: TrainResult):
    """The recipe's ``eval:`` section made concrete for this run: base = model.name, tuned = the run's
    model/, out = <output_dir>/eval unless set, device = model.device unless set."""
    import dataclasses

    from retain.evaluation.config import EvalConfig

    ev = recipe.eval
    held = Path(result.output_dir) / "heldout.jsonl"
    return dataclasses.replace(
        ev, base=recipe.model.name, tuned=[result.model_dir],
        domain=str(held) if ev.domain == "heldout" or (ev.domain == EvalConfig.domain and held.exists()) else ev.domain,
        out=str(Path(result.output_dir) / "eval") if ev.out == EvalConfig.out else ev.out,
        device=recipe.model.device if ev.device == "auto" else ev.device,
        allow_pickle=ev.allow_pickle or recipe.model.allow_pickle,
        trust_remote_code=ev.trust_remote_code or recipe.model.trust_remote_code)


def run_train(cmd: TrainCommand) -> int:
    """CLI entry: ``retain train RECIPE.yaml [--resume] [--optim.lr 1e-4 ...]`` (a recipe + how to run it).
    With an ``eval:`` section, ``retain eval`` runs on the trained model (verdict, and the gate when
    ``eval.gate`` is set: exit 1 when it fails; the run folder stays as it is)."""
    recipe = cmd
    t0 = time.perf_counter()
    if recipe.eval is not None:  # a bad gate or probe file fails now, not after training
        from retain.evaluation.gate import load_gate
        from retain.evaluation.probes import load_probe_file

        if recipe.eval.gate is not None:
            load_gate(recipe.eval.gate, recipe.eval.gate_mode)
        for f in recipe.eval.probe_files:
            load_probe_file(f)
    res = train(recipe, resume=cmd.resume)
    import os

    if int(os.environ.get("RANK", "0")) != 0:
        return 0
    console.result(
        f"trained {res.method}: {res.steps} steps, final loss {res.final_loss:.4f} (mean LM loss of the last "
        f"{res.final_loss_steps} steps), "
        + (f"validation loss {res.eval_loss:.4f} on {res.heldout} held-out records, " if res.eval_loss is not None
           else "")
        + f"{res.trainable_params:,}/{res.total_params:,} params trainable, {res.tokens_per_s:.0f} tokens/s, "
        f"{time.perf_counter() - t0:.0f}s total -> {res.model_dir}"
    )
    if recipe.eval is None:
        return 0
    from retain.evaluation.run import run_eval

    cfg = eval_config(recipe, res)
    console.status(f"evaluating {res.model_dir} against {recipe.model.name} -> {cfg.out} ...")
    rc = run_eval(cfg)
    if rc:
        console.warn(f"{res.output_dir}: the trained model failed the forgetting gate (see {cfg.out}/gate.json); "
                     "the run folder is kept")
    return rc
