"""Drift: mean per-token KL(base ‖ tuned) on a fixed set of general chat prompts, in nats/token.

- Prompts: :data:`DRIFT_PROMPTS`, 32 general-knowledge questions (none from the probes or the domain),
  rendered with the tokenizer's chat template. The base model writes its own greedy reply
  (``new_tokens`` tokens at most, EOS included when reached) once; both models are then
  teacher-forced on ``prompt + base reply``.
- Positions: every position that predicts a reply token (the first one is the generation-prompt's
  last token). KL is averaged over all such positions of all prompts (token-weighted mean).
- Memory: the base distribution at each position is stored as its top-``k`` log-probabilities plus one
  "tail" bucket holding the remaining mass (k=256 of 49,152 tokens: about 2 MB for 32 × 32 positions).
  KL is computed on that (k+1)-outcome coarse-graining of both distributions, which by the log-sum
  inequality is a lower bound of the exact KL, tight when the base's tail mass is small (it is
  typically < 2 % for greedy replies; :func:`drift_reference` records the mean tail mass).
  KL(base ‖ base) is exactly 0 because both sides run the same batched forward.
- **Opening KL** (:func:`kl_opening`): the same KL on the first :data:`FIRST_TOKENS` reply positions only,
  per prompt then averaged over prompts. A fine-tune that changes how replies open ("Answer: X" for "The
  capital of ... is X.") moves it while the per-token mean hardly moves (validated in docs/drift.md). The
  behaviour probe gives a third drift view, the share of replies that changed
  (:mod:`retain.evaluation.suite`, ``reply_change``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from retain.evaluation.scoring import eval_mode, generate_token_ids, last_logits
from retain.models import pad_token_id

DRIFT_PROMPTS: tuple[str, ...] = (
    "Why is the sky blue?",
    "What causes the seasons on Earth?",
    "Explain how a rainbow forms.",
    "What is photosynthesis?",
    "How does a bicycle stay upright when moving?",
    "What is the difference between weather and climate?",
    "Who was Albert Einstein?",
    "What is the capital of Japan, and what is it known for?",
    "How do vaccines work?",
    "Why do we have leap years?",
    "What is the water cycle?",
    "Describe how a volcano erupts.",
    "What are the three states of matter?",
    "How does the internet send information?",
    "What is gravity?",
    "Why do leaves change color in autumn?",
    "What is the tallest mountain in the world?",
    "Explain what a black hole is.",
    "How do bees make honey?",
    "What did the Romans build aqueducts for?",
    "What is the Pythagorean theorem?",
    "How does a refrigerator keep food cold?",
    "What is the largest ocean on Earth?",
    "Why does ice float on water?",
    "What is democracy?",
    "How do plants get water from the soil?",
    "What is the speed of light?",
    "Who painted the Mona Lisa?",
    "What is an atom made of?",
    "How do airplanes fly?",
    "What is the difference between a virus and a bacterium?",
    "Why is the ocean salty?",
)


@dataclass
class DriftReference:
    """What the base model contributes to the KL, computed once.

    ``seqs[i]``: token ids of prompt i + its base greedy reply; ``n_reply[i]``: reply length.
    ``topk_idx`` / ``topk_logp``: (P, k) base top-k token ids / log-probs at the P = Σ n_reply positions;
    ``tail_logp``: (P,) log of the remaining base mass.
    """

    seqs: list[list[int]]
    n_reply: list[int]
    topk_idx: torch.Tensor
    topk_logp: torch.Tensor
    tail_logp: torch.Tensor

    @property
    def mean_tail_mass(self) -> float:
        return float(self.tail_logp.exp().mean()) if self.tail_logp.numel() else 0.0

    def tensors(self) -> dict[str, torch.Tensor]:
        return {"drift_topk_idx": self.topk_idx.to(torch.int32), "drift_topk_logp": self.topk_logp,
                "drift_tail_logp": self.tail_logp}

    @classmethod
    def from_saved(cls, meta: dict, tensors: dict[str, torch.Tensor]) -> "DriftReference":
        return cls(meta["seqs"], meta["n_reply"], tensors["drift_topk_idx"].long(), tensors["drift_topk_logp"],
                   tensors["drift_tail_logp"])


def _reply_logprobs(model, seqs: list[list[int]], n_reply: list[int], pad_id: int, batch_size: int):
    """Yield (row index, (n_reply, V) log-probs at the reply positions), batched and left-padded."""
    with eval_mode(model):
        for start in range(0, len(seqs), batch_size):
            batch = list(range(start, min(start + batch_size, len(seqs))))
            keep = max(n_reply[i] for i in batch) + 1
            logp = torch.log_softmax(last_logits(model, [seqs[i] for i in batch], keep, pad_id), dim=-1)
            for row, i in enumerate(batch):
                n = n_reply[i]
                yield i, logp[row, keep - n - 1: keep - 1]


def _log1mexp(x: torch.Tensor) -> torch.Tensor:
    """log(1 - exp(x)) for x <= 0, clamped away from log(0)."""
    return torch.log((-torch.expm1(x)).clamp_min(1e-12))


def drift_reference(base_model, tokenizer, *, n_prompts: int = 32, new_tokens: int = 32, top_k: int = 256,
                    batch_size: int = 16, prompts: tuple[str, ...] = DRIFT_PROMPTS) -> DriftReference:
    """Generate the base replies and store the base top-k distributions at the reply positions."""
    chats = [tokenizer.apply_chat_template([{"role": "user", "content": p}], tokenize=False, add_generation_prompt=True)
             for p in prompts[:n_prompts]]
    replies = generate_token_ids(base_model, tokenizer, chats, max_new_tokens=new_tokens, batch_size=batch_size)
    seqs = [tokenizer(c, add_special_tokens=False)["input_ids"] + r for c, r in zip(chats, replies)]
    n_reply = [len(r) for r in replies]
    pad = pad_token_id(tokenizer)
    idx, vals, tails = [None] * len(seqs), [None] * len(seqs), [None] * len(seqs)
    for i, lp in _reply_logprobs(base_model, seqs, n_reply, pad, batch_size):
        v, ix = lp.topk(min(top_k, lp.shape[-1]), dim=-1)
        idx[i], vals[i], tails[i] = ix.cpu(), v.cpu(), _log1mexp(torch.logsumexp(v, dim=-1)).cpu()
    return DriftReference(seqs, n_reply, torch.cat(idx), torch.cat(vals), torch.cat(tails))


FIRST_TOKENS = 4
"""Positions of the opening-KL drift (:func:`kl_opening`): a reply's first words ("The capital of", "Answer:
X"), where a fine-tune's format shows. Fixed before the validation in docs/drift.md."""


def kl_positions(model, tokenizer, ref: DriftReference, *, batch_size: int = 16) -> list[torch.Tensor]:
    """Per prompt: KL(base ‖ model) at each of its reply positions, (n_reply,) float32 nats."""
    pad = pad_token_id(tokenizer)
    offsets = [0]
    for n in ref.n_reply:
        offsets.append(offsets[-1] + n)
    out: list[torch.Tensor] = [torch.zeros(0)] * len(ref.seqs)
    for i, lq in _reply_logprobs(model, ref.seqs, ref.n_reply, pad, batch_size):
        sl = slice(offsets[i], offsets[i + 1])
        lp, ix, tail_p = ref.topk_logp[sl], ref.topk_idx[sl], ref.tail_logp[sl]
        lq_top = lq.cpu().gather(-1, ix)
        tail_q = _log1mexp(torch.logsumexp(lq_top, dim=-1))
        out[i] = ((lp.exp() * (lp - lq_top)).sum(-1) + tail_p.exp() * (tail_p - tail_q)).clamp_min(0)
    return out


def kl_per_prompt(model, tokenizer, ref: DriftReference, *, batch_size: int = 16) -> tuple[list[float], list[int]]:
    """Per prompt: (mean KL(base ‖ model) over its reply positions in nats/token, number of positions).

    The per-prompt values are what confidence intervals resample (:mod:`retain.evaluation.stats`);
    their token-weighted mean is :func:`kl_drift`."""
    return kl_means(kl_positions(model, tokenizer, ref, batch_size=batch_size)), list(ref.n_reply)


def kl_means(positions: list[torch.Tensor]) -> list[float]:
    """Per prompt: mean KL over its reply positions (nats/token; 0 for an empty reply)."""
    return [float(k.mean()) if k.numel() else 0.0 for k in positions]


def kl_opening(positions: list[torch.Tensor], first: int = FIRST_TOKENS) -> list[float]:
    """Per prompt: mean KL over the first ``first`` reply positions (nats/token). The per-token mean over a
    whole reply hides a changed opening (one token of 32); this does not."""
    return [float(k[:first].mean()) if k.numel() else 0.0 for k in positions]


def kl_drift(model, tokenizer, ref: DriftReference, *, batch_size: int = 16) -> float:
    """Mean KL(base ‖ model) over all reply positions, nats/token (coarse-grained, see module doc)."""
    kls, counts = kl_per_prompt(model, tokenizer, ref, batch_size=batch_size)
    return weighted_mean(kls, counts)


def weighted_mean(values: list[float], weights: list[int]) -> float:
    """Σ w·v / Σ w (0 when every weight is 0): per-prompt means → the token-weighted mean."""
    total = sum(weights)
    return sum(v * w for v, w in zip(values, weights)) / total if total else 0.0
