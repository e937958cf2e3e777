"""A frozen linear layer plus E LoRA experts mixed by a per-token softmax router, fused.

    y = W0 x + sum_e g_e(x) * (alpha / r) * B_e A_e dropout(x),        g(x) = softmax(W_r x)  (fp32)

Shapes: x (..., d_in); A = [A_1; ...; A_E] stacked to (E*r, d_in); B = [B_1 ... B_E] to (d_out, E*r);
W_r (E, d_in). Because B_e A_e h = B[:, e*r:(e+1)*r] (A h)[e*r:(e+1)*r], scaling each expert's r-slice of
the intermediate u = A h by g_e and applying B once is the mixture:

    u = A h  (..., E*r)  ->  u * repeat_interleave(g, r)  ->  B u  (..., d_out)

Two matrix products whatever E is; no Python loop over experts (the loop lives in the tests as the
reference). The gate broadcast uses a (E, r) view of u instead of materialising repeat_interleave(g).

- Dropout: by default one mask shared by the experts (the single stacked product above). With
  ``dropout_per_expert`` each expert sees its own mask, as in the authors' code (one ``lora_dropout(x)``
  call per expert) and MoE-PEFT: u_e = A_e dropout_e(x), one small product per expert, 1.64x slower
  per training step on SmolLM2-135M on a CPU (``LoRAMoEConfig.dropout_per_expert``).

- Init as in the paper/PEFT: A and W_r Kaiming-uniform (a = sqrt(5)), B zeros, so the adapted model is
  exactly the base model at step 0.
- The frozen ``base_layer`` (``nn.Linear`` or transformers' ``Conv1D``) is called as is, so its weight
  layout, bias and any quantisation wrapper stay the base model's business.
- Adapter weights are fp32 when the base is fp16/bf16 (PEFT's ``autocast_adapter_dtype`` default); the
  update is cast back to the base output's dtype.
- When a :class:`~retain.adapters.loramoe.model.LoRAMoEState` is recording, the layer hands it the
  router probabilities; the forward signature never changes.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from retain.adapters.targets import linear_shape


class LoRAMoELinear(nn.Module):
    """Wraps one frozen Linear/Conv1D with ``num_experts`` rank-``rank`` LoRA experts and a router."""

    def __init__(self, base_layer: nn.Module, num_experts: int, rank: int, alpha: float, dropout: float,
                 name: str = "", state=None, dropout_per_expert: bool = False):
        super().__init__()
        self.base_layer = base_layer
        self.in_features, self.out_features = linear_shape(base_layer)
        self.num_experts, self.rank = num_experts, rank
        self.scaling = alpha / rank
        self.name = name  # qualified module name, for the routing report
        self.state = state  # shared LoRAMoEState (a plain object, not a submodule)
        w = base_layer.weight
        dtype = torch.float32 if w.dtype in (torch.float16, torch.bfloat16) else w.dtype
        kw = dict(device=w.device, dtype=dtype)
        self.lora_A = nn.Parameter(torch.empty(num_experts * rank, self.in_features, **kw))
        self.lora_B = nn.Parameter(torch.zeros(self.out_features, num_experts * rank, **kw))
        self.router = nn.Parameter(torch.empty(num_experts, self.in_features, **kw))
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.dropout_per_expert = dropout_per_expert
        self.reset_adapter()

    def reset_adapter(self) -> None:
        # Kaiming-uniform on the stacked (E*r, d_in) A has the same fan_in (d_in) as on each A_e.
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
        nn.init.kaiming_uniform_(self.router, a=math.sqrt(5))
        nn.init.zeros_(self.lora_B)

    def gates(self, x: torch.Tensor) -> torch.Tensor:
        """Router probabilities g(x): (..., E), fp32 (softmax in fp32 as in the paper's code)."""
        return torch.softmax(F.linear(x.float(), self.router.float()), dim=-1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.base_layer(x)
        if self.state is not None and self.state.disabled:
            return y
        g = self.gates(x)  # (..., E) fp32
        if self.state is not None and self.state.recording:
            self.state.record(self, g)
        if self.training and self.dropout_per_expert and isinstance(self.dropout, nn.Dropout):
            # One dropout mask per expert, as the authors' code (and MoE-PEFT) draws it: each expert's
            # lora_dropout(x) is a separate call there. u_e = A_e dropout_e(x): (..., r) each.
            xa = x.to(self.lora_A.dtype)
            u = torch.cat([F.linear(self.dropout(xa), a_e) for a_e in self.lora_A.split(self.rank)], dim=-1)
        else:  # one mask for all experts (or none: eval / dropout 0): one stacked matmul
            u = F.linear(self.dropout(x).to(self.lora_A.dtype), self.lora_A)  # (..., E*r)
        gs = (g * self.scaling).to(u.dtype)
        u = (u.unflatten(-1, (self.num_experts, self.rank)) * gs.unsqueeze(-1)).flatten(-2)
        return y + F.linear(u, self.lora_B).to(y.dtype)

    def adapter_parameters(self) -> dict[str, nn.Parameter]:
        return {"lora_A": self.lora_A, "lora_B": self.lora_B, "router": self.router}

    def extra_repr(self) -> str:
        return (f"in={self.in_features}, out={self.out_features}, experts={self.num_experts}, "
                f"rank={self.rank}, scaling={self.scaling:g}")
