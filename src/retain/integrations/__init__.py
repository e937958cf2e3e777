"""retain.integrations: retain's own parts (LoRAMoE's LBC, sample types) inside other people's trainers.

- :mod:`.trl`: ``LoRAMoESFTTrainer`` (TRL) and ``LoRAMoETrainer`` (transformers), built from one mixin and a
  collator wrapper; a TRL script gains LoRAMoE + LBC by changing a few lines.
"""
