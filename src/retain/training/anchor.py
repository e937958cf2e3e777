"""KL-anchored fine-tuning: ``loss = LM loss + λ · KL(base ‖ model)`` on the training tokens.

The anchor keeps the tuned model's next-token distribution near the base model's exactly where it
is trained, the "anchored SFT" users ask for (LLaMA-Factory, NeMo-RL, ms-swift). Per labelled position
t (the positions the LM loss covers), with p = softmax(base logits) and q = softmax(model logits):

    KL_t = Σ_v p_v (log p_v − log q_v)      (nats)

summed over the step's labelled tokens and divided by the same count as the LM loss, so λ is per
token and gradient accumulation / process count do not change it. The base logits come from the
frozen base with no gradient:

- ``lora``: PEFT's ``disable_adapter()``; ``loramoe``: :func:`retain.adapters.loramoe.adapters_disabled`
  (no extra memory; one more forward per step);
- ``full``: a frozen copy of the base taken before training (one more model in memory).
"""

from __future__ import annotations

import copy
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from retain.data.collate import IGNORE_INDEX


def kl_sum(logits: torch.Tensor, base_logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Σ over labelled positions of KL(base ‖ model) (nats). logits, base_logits (B, T, V); labels (B, T).

    Position t predicts labels[:, t + 1], as in :func:`retain.training.trainer.token_loss_sum`."""
    keep = labels[:, 1:] != IGNORE_INDEX
    q = F.log_softmax(logits[:, :-1][keep].float(), dim=-1)  # (n, V)
    p = F.log_softmax(base_logits[:, :-1][keep].float(), dim=-1)
    return F.kl_div(q, p, log_target=True, reduction="sum")


class KLAnchor:
    """Base-model logits for the anchor term of one training run."""

    def __init__(self, model: nn.Module, method: str, weight: float):
        from retain.adapters.methods import get_method

        self.weight = weight
        self.method = get_method(method)
        # A method that changes the weights themselves (full): keep a frozen copy of the base; an adapter
        # method recovers the base by disabling its adapter.
        self.reference = None if self.method.is_adapter else copy.deepcopy(model).eval().requires_grad_(False)

    @torch.no_grad()
    def base_logits(self, model: nn.Module, inputs: dict[str, Any]) -> torch.Tensor:
        """(B, T, V) logits of the base model on this batch (no gradient)."""
        kw = {"input_ids": inputs["input_ids"], "attention_mask": inputs.get("attention_mask")}
        if self.reference is not None:
            ref = self.reference.to(inputs["input_ids"].device)
            return ref(**kw).logits
        with self.method.disabled(model):
            return model(**kw).logits
