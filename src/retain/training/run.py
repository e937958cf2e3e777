"""``retain train`` and its Python API :func:`train`.

Order of work, chosen so that bad input never leaves a half-written run folder:

1. recipe parsed and validated (:mod:`retain.training.recipe`);
2. every dataset read and validated, then mixed (:mod:`retain.data.formats`, :mod:`retain.data.mixture`);
3. the output folder checked (an existing run needs ``--resume``);
4. model + tokenizer loaded, examples encoded, adapters injected (``prepare_model``);
5. only then the folder is created: ``recipe.yaml``, ``train_log.jsonl`` (appended as steps finish),
   ``checkpoints/checkpoint-<step>/`` (the Trainer's, every ``save_every`` steps; complete once
   ``retain_state.json`` is in it), and at the end ``model/`` (``save_finetuned``), ``loss.png`` and
   ``train_result.json``.

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
    """LM loss (nats per assistant token) of the final step (the same whether or not the run was resumed)."""
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
    model: Any = field(default=None, repr=False, compare=False)
    """The trained module in memory (rank 0; None when the run had already finished)."""

    def to_json(self) -> dict:
        """Every field but the in-memory model."""
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name != "model"}


def load_mixture(recipe: Recipe):
    """Read every dataset (validated) and mix them by weight → :class:`retain.data.mixture.Mixture`."""
    from retain.data.formats import load_examples
    from retain.data.mixture import Source, mix

    sources = []
    for i, d in enumerate(recipe.datasets):
        examples = load_examples(d.path, format=d.format, sample_type=d.type, limit=d.limit, image_folder=d.image_folder)
        sources.append(Source(name=f"datasets[{i}] {d.path}", examples=examples, weight=d.weight))
    return mix(sources, size=recipe.mixture.size, allow_repeat=recipe.mixture.allow_repeat, seed=recipe.train.seed)


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


def _check_output_dir(out: Path, resume: bool) -> None:
    existing = [name for name in _RUN_FILES if (out / name).exists()]
    if existing and not resume:
        raise RetainError(
            f"{out}: already holds a run ({', '.join(existing)}); pass --resume to continue it, or set "
            "--output_dir to a new folder"
        )


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
    import torch

    from retain.adapters.methods import prepare_model, save_finetuned, trainable_parameters
    from retain.data.collate import Collator, encode_examples
    from retain.models import pad_token_id, resolve_device
    from retain.training.plots import plot_loss
    from retain.training.recipe import dump_recipe
    from retain.training.trainer import (
        CHECKPOINTS, RetainTrainer, RunLogCallback, StepBarCallback, StreamDataset, check_resume,
        complete_checkpoints, read_log, total_steps,
    )
    from retain.utils.io import (
        _disk_full, is_no_space, no_space, read_json, write_json_atomic, write_jsonl_atomic, write_text_atomic,
    )
    from retain.utils.seed import seed_everything

    recipe.validate()
    out = Path(recipe.train.output_dir)
    if resume and (out / "train_result.json").exists():
        log.info("%s: run already finished; returning its result", out)
        return TrainResult(**read_json(out / "train_result.json"))
    mixture = load_mixture(recipe)
    _check_output_dir(out, resume)
    from retain.multimodal.methods import is_multimodal, prepare_mllm
    from retain.multimodal.model import is_mllm_folder

    if model is None:
        multimodal = is_mllm_folder(check_base(recipe))  # a pickle-only or incomplete base folder fails here
    else:
        multimodal = is_multimodal(model)
    check_modality(recipe, mixture, multimodal)

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
        collator = MultimodalCollator(tok, pad_token_id(tok.tokenizer))
    else:
        features, dropped = encode_examples(tok, mixture.examples, recipe.train.max_length)
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
        write_text_atomic(out / "recipe.yaml", dump_recipe(recipe))
        # Drop rows logged after the checkpoint we resume from: those steps run again.
        write_jsonl_atomic(log_path, read_log(log_path, max_step=start) if start else [])
        if resume and (out / CHECKPOINTS).is_dir():  # torn by a kill or a full disk, or newer than ckpts[-1]
            for p in (out / CHECKPOINTS).iterdir():
                if p.name.startswith("checkpoint-") and p not in ckpts:
                    shutil.rmtree(p, ignore_errors=True)
    state.wait_for_everyone()

    callback = RunLogCallback(log_path, recipe.train.seed, meta, saved, is_main)
    # The Trainer sets config.use_cache = TrainingArguments.use_cache (False) on the model it trains; the saved
    # folder (and the model returned) keep what the base had, so decoding elsewhere uses the KV cache.
    base_use_cache = getattr(getattr(trainee, "config", None), "use_cache", None)
    trainer = RetainTrainer(
        model=trainee, args=training_arguments(recipe, out, steps), recipe=recipe,
        train_dataset=StreamDataset(features, recipe.train.seed, steps * g,
                                    sort_window=g if recipe.train.sort_by_length else 0),
        # No processing_class: checkpoints hold weights and optimizer state only (the tokenizer goes to model/).
        data_collator=collator, callbacks=[callback],
        base_model=recipe.model.name,
    )
    callback.trainer = trainer
    if is_main:
        log.info("engine: transformers Trainer, accelerate %s", trainer.accelerator.distributed_type.value)
    # No per-step dicts on stdout (train_log.jsonl has them): without a bar the Trainer's PrinterCallback
    # prints them, and its tqdm bar writes them to stdout too; StepBarCallback shows the loss on the bar.
    from transformers import PrinterCallback, ProgressCallback

    trainer.remove_callback(PrinterCallback)
    if trainer.pop_callback(ProgressCallback) is not None:
        trainer.add_callback(StepBarCallback())
    try:
        trainer.train(resume_from_checkpoint=str(ckpts[-1]) if ckpts else None)
    except Exception as e:  # a checkpoint write on a full disk: one line; --resume skips the torn folder
        if is_no_space(e) or (isinstance(e, RuntimeError) and _disk_full(out)):
            raise no_space(out / CHECKPOINTS) from None
        raise
    if base_use_cache is not None:
        trainee.config.use_cache = base_use_cache

    rows = read_log(log_path) if is_main else []
    last = callback.rows or rows
    result = TrainResult(
        output_dir=str(out), model_dir=str(out / "model"), method=recipe.method, steps=trainer.state.global_step,
        final_loss=last[-1]["lm_loss"] if last else float("nan"),
        wall_time_s=round(callback.elapsed, 3),
        tokens_per_s=round(callback.session_tokens / callback.session_seconds, 2) if callback.session_seconds else 0.0,
        trainable_params=n_train, total_params=n_total, examples=len(features), counts=mixture.counts,
        model=trainee,
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


def run_train(cmd: TrainCommand) -> int:
    """CLI entry: ``retain train RECIPE.yaml [--resume] [--optim.lr 1e-4 ...]`` (a recipe + how to run it)."""
    recipe = cmd
    t0 = time.perf_counter()
    res = train(recipe, resume=cmd.resume)
    import os

    if int(os.environ.get("RANK", "0")) == 0:
        console.result(
            f"trained {res.method}: {res.steps} steps, final loss {res.final_loss:.4f}, "
            f"{res.trainable_params:,}/{res.total_params:,} params trainable, {res.tokens_per_s:.0f} tokens/s, "
            f"{time.perf_counter() - t0:.0f}s total -> {res.model_dir}"
        )
    return 0
