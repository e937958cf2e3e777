"""The localized balancing constraint (LBC) of LoRAMoE, as a pure function of one layer's router mass.

For one adapted layer and a batch of B samples with types t_b (1 = world knowledge, 0 = downstream task,
-1 = unknown):

    Q[e, b] = sum_t mask[b, t] * g_e(x_{b,t})        router mass of expert e on sample b's real tokens
    I[e, b] = 1 - delta  if group(e) == type(b)  else  1 + delta     (see "The sign of I" below)
    Z       = I * Q                                   (elementwise, over the samples with a known type)
    L       = Var(Z) / (Mean(Z)^2 + eps)              squared coefficient of variation

Choices, each checked against the authors' code (Ablustrund/LoRAMoE, ``peft/tuners/lora.py``,
``Linear.cv_squared`` and ``forward``):

- ``Var`` is the **unbiased** variance over all E*B entries of Z (``torch.Tensor.var()``'s default
  ``correction=1``), and a single entry gives 0: both as in ``cv_squared``.
- The world group is the **first** ``num_world`` experts (the authors use the first E/2 for type 1).
- The sign of I. The paper and the authors' code put 1+delta on the *matching* group. But L is smallest
  when Z is constant, i.e. Q proportional to 1/I: minimizing it moves each sample's router mass *away*
  from its own group (with two groups the optimum gives the matching group a share (1-delta)/2). We
  measured it (world samples end up on the "task" experts) and it is reported upstream
  (Ablustrund/LoRAMoE issue 22). We therefore put 1-delta on the matching group, so world samples go to
  the world experts; with equal groups this is the authors' training run with the two groups' names
  swapped (experts are exchangeable at init). ``paper_sign=True`` restores the literal sign.
- Differences from the authors' code, on purpose: padding tokens are **excluded** from Q (they sum the
  router weights over every position, padding included), and unknown-type samples (-1) are **left out**
  of Z (their code would give them 1-delta on every expert). The group sizes are configurable instead of
  fixed halves.
"""

from __future__ import annotations

import torch

from retain.errors import RetainError


def router_mass(gates: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Q (E, B): router weights summed over each sample's real tokens.

    gates: (B, T, E) probabilities (fp32); mask: (B, T) 1 for real tokens, 0 for padding, or None (all real).
    """
    if mask is None:
        return gates.sum(dim=1).transpose(0, 1)
    return torch.einsum("bte,bt->eb", gates, mask.to(gates.dtype))


def importance(types: torch.Tensor, num_experts: int, num_world: int, delta: float,
               paper_sign: bool = False) -> torch.Tensor:
    """I (E, B) for samples of known type (0 or 1).

    Default: 1-delta where the expert's group matches the sample's type, 1+delta elsewhere. paper_sign:
    the literal paper/code sign, 1+delta on the matching group (see the module docstring for why it is
    not the default).
    """
    expert_is_world = torch.arange(num_experts, device=types.device) < num_world  # (E,)
    sample_is_world = types == 1  # (B,)
    match = expert_is_world[:, None] == sample_is_world[None, :]
    on_match = 1.0 + delta if paper_sign else 1.0 - delta
    return torch.where(match, on_match, 2.0 - on_match).to(torch.float32)


def check_types(types: torch.Tensor) -> None:
    """Every entry of ``types`` (B,) is one of :data:`retain.data.types.SAMPLE_TYPES`."""
    from retain.data.types import SAMPLE_TYPES

    bad = ~torch.isin(types, torch.tensor(SAMPLE_TYPES, device=types.device))
    if bool(bad.any()):
        raise RetainError(
            f"sample_type values must be 1 (world), 0 (task) or -1 (unknown); got {sorted(set(types[bad].tolist()))}"
        )


def lbc_term(q: torch.Tensor, types: torch.Tensor, num_world: int, delta: float, eps: float,
             paper_sign: bool = False) -> torch.Tensor:
    """Unweighted LBC of one layer: Var(Z) / (Mean(Z)^2 + eps), a scalar (0 when < 2 entries remain).

    q: (E, B) router mass (fp32); types: (B,) long in {1, 0, -1}; -1 columns are dropped.
    """
    keep = types >= 0
    q, types = q[:, keep], types[keep]
    z = importance(types, q.shape[0], num_world, delta, paper_sign) * q
    if z.numel() < 2:
        return q.new_zeros(())
    return z.var() / (z.mean() ** 2 + eps)
