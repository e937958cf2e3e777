"""retain.adapters: how a model is fine-tuned: full, LoRA (PEFT) or LoRAMoE with the LBC.

- :mod:`.config` (torch-free): ``LoRAMoEConfig``, ``LoRAConfig``, ``RoutingReportConfig``.
- :mod:`.methods`: ``prepare_model``, ``save_finetuned``, ``load_finetuned``, ``trainable_parameters``.
- :mod:`.loramoe`: the fused layer, injection, ``sample_types`` (context) and ``lbc_loss``.
- :mod:`.targets`: automatic FFN targets per architecture; :mod:`.routing`: ``retain routing``.
"""
