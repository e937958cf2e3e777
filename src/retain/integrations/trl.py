"""LoRAMoE with the localized balancing constraint (LBC) in TRL's ``SFTTrainer`` and transformers' ``Trainer``.

The lines a TRL script changes (the dataset gains a ``sample_type`` column: ``"world"`` / ``"task"``, 1 / 0,
or -1 / None for unknown)::

      from transformers import AutoModelForCausalLM
    - from trl import SFTConfig, SFTTrainer
    + from trl import SFTConfig
    + from retain.adapters.config import LoRAMoEConfig
    + from retain.adapters.methods import prepare_model
    + from retain.models import load_finetuned
    + from retain.integrations.trl import LoRAMoESFTTrainer

      model = AutoModelForCausalLM.from_pretrained(name)
    + model = prepare_model(model, "loramoe", loramoe=LoRAMoEConfig())  # freeze, inject experts + routers
    - trainer = SFTTrainer(model=model, args=SFTConfig(...), train_dataset=ds)
    + trainer = LoRAMoESFTTrainer(model=model, args=SFTConfig(...), train_dataset=ds)
      trainer.train()                     # logs loss = lm_loss + lbc_loss, each on its own
      trainer.save_model("out")           # adapter_config.json + adapter_model.safetensors
    + model, tokenizer = load_finetuned("out")

A ``transformers.Trainer`` script uses :class:`~retain.integrations.hf.LoRAMoETrainer` the same way (re-exported
here); how the pieces fit (sample types, the loss, logging, saving): :mod:`retain.integrations.hf`.
"""

from __future__ import annotations

from trl import SFTTrainer

from retain.integrations.hf import LoRAMoETrainer, LoRAMoETrainerMixin, SampleTypeCollator

__all__ = ["LoRAMoESFTTrainer", "LoRAMoETrainer", "LoRAMoETrainerMixin", "SampleTypeCollator"]


class LoRAMoESFTTrainer(LoRAMoETrainerMixin, SFTTrainer):
    """TRL's ``SFTTrainer`` with sample types, the LBC and retain's adapter folder (how: :mod:`retain.integrations.hf`)."""
