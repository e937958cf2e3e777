"""retain.integrations: retain's own parts (LoRAMoE's LBC, sample types) inside other people's trainers.

- :mod:`.hf`: ``LoRAMoETrainer`` (transformers' ``Trainer``), built from ``LoRAMoETrainerMixin`` and a collator
  wrapper; it imports transformers only (``retain train`` runs on it without importing TRL).
- :mod:`.trl`: ``LoRAMoESFTTrainer`` (TRL's ``SFTTrainer``, the same mixin); a TRL script gains LoRAMoE + LBC by
  changing a few lines.
"""
