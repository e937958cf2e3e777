"""LoRAMoE with the localized balancing constraint (LBC) in transformers' ``Trainer``, and the mixin that
brings it to any Trainer subclass (TRL's ``SFTTrainer``: :mod:`retain.integrations.trl`).

A ``transformers.Trainer`` script swaps in :class:`LoRAMoETrainer` for ``Trainer``; a custom Trainer subclass
(LLaMA-Factory's, axolotl's) gains it as ``class MyTrainer(LoRAMoETrainerMixin, TheirTrainer)``. This module
imports transformers only, so ``retain train`` (built on :class:`LoRAMoETrainer`) does not import TRL.

How the pieces fit, all by subclassing and wrapping (no library code is patched):

- Sample types: the trainer wraps whatever collator it was given in :class:`SampleTypeCollator`, which takes
  the column out of each feature before the inner collator sees it and puts it back as a (B,) long tensor.
  ``compute_loss`` pops it and runs the forward inside :func:`~retain.adapters.loramoe.sample_types`, whose
  hook also takes the forward's ``attention_mask`` so padding stays out of the router mass.
- Dropped columns: transformers' ``remove_unused_columns=True`` (the default) keeps only the model's forward
  arguments (TRL: ``input_ids``, ``labels``, ``seq_lengths``); the trainer adds the sample-type column to
  that list (``_set_signature_columns_if_needed``, which TRL overrides the same way), so no setting has to
  change. TRL's dataset preparation keeps extra columns through tokenization and truncation but not through
  packing, and packing / ``padding_free`` put several samples in one row while the LBC needs one type per
  row: with the LBC on they are an error, as is a training set without the column (set
  ``LoRAMoEConfig.lbc_beta=0`` to train LoRAMoE without the LBC).
- The loss: ``loss = LM loss + beta * LBC`` on each micro-batch. transformers normalises the LM loss by the
  tokens of the whole accumulated batch when it can (``num_items_in_batch``) and otherwise divides the
  returned loss by the accumulation steps; the LBC, a per-micro-batch mean, is scaled so each optimizer step
  adds the mean LBC of its micro-batches either way (what ``retain train`` does, and TRL with its MoE aux
  loss). Under DDP each rank adds its own LBC and DDP averages the gradients.
- Logging: ``lm_loss`` and ``lbc_loss`` are logged beside ``loss`` with the same averaging over steps and
  processes, so ``loss = lm_loss + lbc_loss``; ``lbc_loss`` is absent when no batch carried sample types.
  Evaluation gives the LM loss only (sample types are dropped there).
- Saving: ``save_model`` and every ``checkpoint-N`` write retain's folder format through
  :func:`~retain.adapters.methods.save_finetuned` (adapter and router weights only, plus the tokenizer), so
  :func:`~retain.models.load_finetuned` and ``retain eval`` read them; files already in the
  folder (other checkpoints) are kept. ``resume_from_checkpoint`` reads them back. Models sharded over
  processes (FSDP, DeepSpeed ZeRO-3) are not saved here yet.
- Gradient checkpointing must be non-reentrant (transformers' default) or the LBC gets no gradient.
- A model without LoRAMoE layers (full or LoRA fine-tuning) trains and saves as with the base trainer (plus
  the ``lm_loss`` log), so baselines run from the same script.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from transformers import Trainer

from retain.adapters.loramoe import lbc_loss, load_adapter_state_dict, loramoe_config, loramoe_layers, sample_types
from retain.adapters.methods import ADAPTER_WEIGHTS, folder_kind, save_finetuned
from retain.data.types import as_sample_type
from retain.errors import RetainError

__all__ = ["LoRAMoETrainer", "LoRAMoETrainerMixin", "SampleTypeCollator"]


class SampleTypeCollator:
    """Wraps a collator so one column of the features reaches the batch as a (B,) long tensor.

    Values: 1 / ``"world"``, 0 / ``"task"``, -1 / None (unknown, left out of the LBC). A batch in which no
    feature has the column gets no such key. Other attributes are the inner collator's.
    """

    def __init__(self, collator: Callable[[list[dict]], dict], column: str = "sample_type"):
        self.collator, self.column = collator, column

    def __call__(self, features: Sequence[dict]) -> dict[str, Any]:
        if not any(self.column in f for f in features):
            return self.collator(features)
        types = [as_sample_type(_plain(f.get(self.column)), where=f"column {self.column!r}") for f in features]
        batch = self.collator([{k: v for k, v in f.items() if k != self.column} for f in features])
        batch[self.column] = torch.tensor(types, dtype=torch.long)
        return batch

    def __getattr__(self, name: str) -> Any:
        if name in ("collator", "column"):  # not set yet (e.g. while unpickling in a DataLoader worker)
            raise AttributeError(name)
        return getattr(self.collator, name)


def _plain(value: Any) -> Any:
    return value.item() if isinstance(value, torch.Tensor) or type(value).__module__ == "numpy" else value


class LoRAMoETrainerMixin:
    """Sample types in, the LBC added and logged, retain's adapter folder out. Put it first in the bases.

    sample_type_column: the dataset column holding each sample's type. base_model: recorded in the saved
    ``adapter_config.json`` for :func:`~retain.models.load_finetuned` (default: the folder or hub
    id the model was loaded from; the bundled model's cache folder is recorded as ``smollm2``).
    """

    def __init__(self, *args, sample_type_column: str = "sample_type", base_model: str | None = None, **kwargs):
        self.sample_type_column = sample_type_column
        super().__init__(*args, **kwargs)
        core = self.accelerator.unwrap_model(self.model)
        self.base_model = base_model or getattr(core, "name_or_path", None) or ""
        self.data_collator = SampleTypeCollator(self.data_collator, sample_type_column)
        self._parts: torch.Tensor | None = None  # (LM, LBC, micro-batches with an LBC) since the last log
        self._parts_from_step = 0
        cfg = loramoe_config(core)
        if cfg is not None and cfg.lbc_beta > 0:
            self._check_lbc_setup()

    def _check_lbc_setup(self) -> None:
        fix = "or set LoRAMoEConfig.lbc_beta=0 to train without the LBC"
        if getattr(self.args, "packing", False) or getattr(self, "padding_free", False):
            raise RetainError(
                "LoRAMoE's LBC needs one sample type per row, and packing / padding_free put several samples in "
                f"one row; set packing=False and padding_free=False, {fix}"
            )
        if self.args.n_gpu > 1:
            raise RetainError("LoRAMoE's LBC does not run under nn.DataParallel; launch with accelerate or torchrun")
        ckpt_kwargs = self.args.activation_checkpointing_kwargs or {}  # transformers 5.23's name for gradient_*
        if self.args.activation_checkpointing and ckpt_kwargs.get("use_reentrant") is True:
            raise RetainError(
                "activation_checkpointing_kwargs={'use_reentrant': True}: the LBC would get no gradient; "
                "use use_reentrant=False (the default)"
            )
        columns = _column_names(self.train_dataset)
        if columns is not None and self.sample_type_column not in columns:
            raise RetainError(
                f"train_dataset has no {self.sample_type_column!r} column (columns: {sorted(columns)}); add one "
                f"('world' / 'task' / None per row, or pass sample_type_column=...), {fix}"
            )

    def _set_signature_columns_if_needed(self) -> None:
        # remove_unused_columns keeps only these columns; the sample types must survive it.
        super()._set_signature_columns_if_needed()
        if self.sample_type_column not in self._signature_columns:
            self._signature_columns = [*self._signature_columns, self.sample_type_column]

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        types = inputs.pop(self.sample_type_column, None)
        if not model.training:  # evaluation: the LM loss only
            return super().compute_loss(model, inputs, return_outputs=return_outputs,
                                        num_items_in_batch=num_items_in_batch)
        core = self.accelerator.unwrap_model(model)
        with sample_types(core, types):
            result = super().compute_loss(model, inputs, return_outputs=return_outputs,
                                          num_items_in_batch=num_items_in_batch)
        loss, outputs = result if return_outputs else (result, None)
        # training_step divides the returned loss by the accumulation steps unless it is already scaled
        # for them (normalised by num_items_in_batch); either way each micro-batch's LBC gets weight 1/steps.
        steps = getattr(self, "current_gradient_accumulation_steps", self.args.gradient_accumulation_steps)
        scaled = self._loss_is_scaled(num_items_in_batch)
        aux = lbc_loss(core)
        self._record(loss.detach() / (1 if scaled else steps), None if aux is None else aux.detach() / steps)
        if aux is not None:
            loss = loss + (aux / steps if scaled else aux)
        return (loss, outputs) if return_outputs else loss

    def _loss_is_scaled(self, num_items_in_batch) -> bool:
        # The rule transformers' Trainer.training_step applies to the returned loss.
        if self.loss_is_scaled_for_ga is not None:
            return bool(self.loss_is_scaled_for_ga)
        return bool((self.model_accepts_loss_kwargs and num_items_in_batch is not None)
                    or self.compute_loss_func is not None)

    def _record(self, lm: torch.Tensor, lbc: torch.Tensor | None) -> None:
        if self._parts is None:
            self._parts = torch.zeros(3, device=lm.device)
            self._parts_from_step = self.state.global_step
        self._parts[0] += lm.float()
        if lbc is not None:
            self._parts[1] += lbc.float()
            self._parts[2] += 1

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        inputs = {k: v for k, v in inputs.items() if k != self.sample_type_column}
        return super().prediction_step(model, inputs, prediction_loss_only, ignore_keys=ignore_keys)

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        # "loss" marks the training log, written on every rank, so the reduce below is collective.
        if "loss" in logs and self._parts is not None:
            lm, lbc, n = self.accelerator.reduce(self._parts, reduction="mean").tolist()
            steps = max(1, self.state.global_step - self._parts_from_step)
            logs["lm_loss"] = lm / steps
            if n > 0:
                logs["lbc_loss"] = lbc / steps
            self._parts = None
        super().log(logs, start_time)

    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        core = self.accelerator.unwrap_model(self.model, keep_torch_compile=False)
        if loramoe_config(core) is None:
            return super()._save(output_dir, state_dict)
        if not self.args.should_save:
            return None
        if any(p.numel() == 0 or any(c.__name__ == "DTensor" for c in type(p).__mro__)
               for m in loramoe_layers(core) for p in m.adapter_parameters().values()):
            raise RetainError("saving a LoRAMoE adapter from a sharded model (FSDP, DeepSpeed ZeRO-3) is not "
                              "supported yet; train with DDP or DeepSpeed ZeRO-1/2")
        out = Path(output_dir if output_dir is not None else self.args.output_dir)
        out.mkdir(parents=True, exist_ok=True)
        # save_finetuned replaces the folder it writes; write a fresh one and move its files in, one
        # os.replace each, so what else is in `out` (checkpoints, optimizer state) stays.
        tmp = Path(tempfile.mkdtemp(prefix=".retain-save-", dir=out))
        try:
            save_finetuned(core, tmp / "adapter", base_model=self.base_model, tokenizer=self.processing_class)
            for f in (tmp / "adapter").iterdir():
                os.replace(f, out / f.name)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return None

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model=None) -> None:
        core = self.accelerator.unwrap_model(model if model is not None else self.model)
        if loramoe_config(core) is None or folder_kind(resume_from_checkpoint) != "loramoe":
            return super()._load_from_checkpoint(resume_from_checkpoint, model)
        from safetensors.torch import load_file

        weights = os.path.join(resume_from_checkpoint, ADAPTER_WEIGHTS)
        load_adapter_state_dict(core, load_file(weights), source=weights)
        return None

    def _load_best_model(self) -> None:
        if loramoe_config(self.accelerator.unwrap_model(self.model)) is None:
            return super()._load_best_model()
        return self._load_from_checkpoint(self.state.best_model_checkpoint)


def _column_names(dataset) -> list[str] | None:
    """Column names of a datasets.Dataset, or the keys of a list's first row; None when unknown (streaming)."""
    names = getattr(dataset, "column_names", None)
    if isinstance(names, dict):  # a DatasetDict
        return None
    if names is None and isinstance(dataset, Sequence) and len(dataset) and isinstance(dataset[0], dict):
        names = list(dataset[0])
    return None if names is None else list(names)


class LoRAMoETrainer(LoRAMoETrainerMixin, Trainer):
    """transformers' ``Trainer`` with sample types, the LBC and retain's adapter folder."""
