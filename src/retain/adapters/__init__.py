"""retain.adapters: how a model is fine-tuned: full, LoRA (PEFT) or LoRAMoE with the LBC.

- :mod:`.registry` (the bottom: it imports no method): ``AdapterMethod`` and ``register_method``: one small
  class per method (prepare, save, detect, check, load), each registered by name where it is defined;
  :mod:`.methods` holds ``full`` and ``lora``, imports ``loramoe``, and asks the registry: ``prepare_model``,
  ``save_finetuned``, ``folder_kind``, ``check_finetuned_folder``, ``trainable_parameters``.
- :mod:`.loramoe`: the method's own folder: ``config.py``, ``layer.py``, ``lbc.py``, ``model.py``.
- :mod:`.config` (torch-free): ``LoRAConfig``, ``LoRAMoEConfig`` (from :mod:`.loramoe.config`).
- :mod:`.check`: the checks of a folder's files (weights, configs, tensor shapes) made before any weight
  loads; :mod:`.targets`: automatic FFN targets per architecture.
- Nothing here imports :mod:`retain.models` (which uses the adapters) or any higher layer; ``retain
  routing`` (it loads a model) is :mod:`retain.evaluation.routing`.
"""
