"""retain: fine-tune language models on new data without forgetting what they knew.

Architecture (folders follow the data flow):

- ``retain.data``        — load SFT data (messages / ShareGPT / Alpaca / prompt-completion), mix sources.
- ``retain.generation``  — TG self-decompression: backends (hf, openai), tree expansion, semantic dedup, exports.
- ``retain.adapters``    — LoRAMoE with the localized balancing constraint; LoRA / full fine-tuning baselines.
- ``retain.training``    — YAML recipes and the training loop.
- ``retain.evaluation``  — knowledge probes, known-fact retention, KL drift, domain score, reports.
"""

from retain.errors import RetainError

__version__ = "0.1.0"
__all__ = ["RetainError", "__version__"]
