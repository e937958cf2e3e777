"""retain.adapters: how a model is fine-tuned: full, LoRA (PEFT) or LoRAMoE with the LBC.

- :mod:`.registry`: ``AdapterMethod`` and ``register_method``: one small class per method (prepare, save,
  detect, check, load), registered by name; :mod:`.methods` holds ``full`` and ``lora`` and the generic
  ``prepare_model``, ``save_finetuned``, ``folder_kind``, ``trainable_parameters``.
- :mod:`.loramoe`: the method's own folder: ``config.py``, ``layer.py``, ``lbc.py``, ``model.py``.
- :mod:`.config` (torch-free): ``LoRAConfig``, ``LoRAMoEConfig`` (from :mod:`.loramoe.config`),
  ``RoutingReportConfig``.
- :mod:`.check`: a folder checked before any weight loads; :mod:`.targets`: automatic FFN targets per
  architecture; :mod:`.routing`: ``retain routing``.
"""
