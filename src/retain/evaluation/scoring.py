"""Batched scoring primitives on any in-memory causal LM (HF, PEFT, LoRAMoE-injected): log-likelihood
of continuations, next-token choice among letters, greedy generation, top-k log-probabilities.

- Inputs are **left-padded** so every continuation ends at the last position; ``position_ids`` are
  derived from the attention mask so padding does not shift positions, and ``logits_to_keep`` makes
  the LM head run only on the last positions we read (the vocabulary projection of SmolLM2,
  49,152 × 576, would otherwise dominate memory and time).
- Rows are sorted by length before batching (less padding) and results are returned in input order.
- Context and continuation are tokenized separately and concatenated (lm-eval's convention), so the
  continuation's tokens are the same whatever the context.
- Everything runs under ``torch.inference_mode()`` with the model in eval mode (dropout off); the
  model's training flag is restored afterwards.
"""

from __future__ import annotations

import contextlib
from typing import Iterator, Sequence

import torch
from retain.utils.console import tqdm

from retain.models import pad_token_id


@contextlib.contextmanager
def eval_mode(model: torch.nn.Module) -> Iterator[None]:
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            yield
    finally:
        model.train(was_training)


def model_device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


def _left_pad(seqs: Sequence[Sequence[int]], pad_id: int, device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(input_ids, attention_mask, position_ids), each (B, T), left-padded."""
    T = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), T), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), T), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, T - len(s):] = torch.tensor(s, dtype=torch.long)
        mask[i, T - len(s):] = 1
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    return ids.to(device), mask.to(device), pos.to(device)


def last_logits(model, seqs: Sequence[Sequence[int]], keep: int, pad_id: int) -> torch.Tensor:
    """Logits (B, keep, V) at the last ``keep`` positions of left-padded ``seqs`` (float32)."""
    ids, mask, pos = _left_pad(seqs, pad_id, model_device(model))
    try:
        out = model(input_ids=ids, attention_mask=mask, position_ids=pos, logits_to_keep=keep, use_cache=False)
    except TypeError:  # a model without ``logits_to_keep``: compute all positions, slice
        out = model(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=False)
    return out.logits[:, -keep:].float()


def _batches(order: list[int], lengths: list[int], batch_size: int, max_batch_tokens: int) -> Iterator[list[int]]:
    """Consecutive groups of ``order`` with at most ``batch_size`` rows and ``max_batch_tokens`` padded tokens."""
    batch: list[int] = []
    for i in order:
        longest = max([lengths[j] for j in batch] + [lengths[i]])
        if batch and (len(batch) >= batch_size or longest * (len(batch) + 1) > max_batch_tokens):
            yield batch
            batch = []
        batch.append(i)
    if batch:
        yield batch


def continuation_logprobs(
    model, tokenizer, pairs: Sequence[tuple[str, str]], *, batch_size: int = 32,
    max_batch_tokens: int = 4096, desc: str | None = None,
) -> list[float]:
    """Sum of log p(continuation tokens | context) in nats, one per ``(context, continuation)`` pair."""
    ctx_cache: dict[str, list[int]] = {}
    seqs, n_cont = [], []
    for ctx, cont in pairs:
        if ctx not in ctx_cache:
            ctx_cache[ctx] = tokenizer(ctx, add_special_tokens=False)["input_ids"]
        c = tokenizer(cont, add_special_tokens=False)["input_ids"]
        seqs.append(ctx_cache[ctx] + c)
        n_cont.append(len(c))
    out = [0.0] * len(pairs)
    lengths = [len(s) for s in seqs]
    order = sorted(range(len(seqs)), key=lambda i: -lengths[i])
    pad = pad_token_id(tokenizer)
    with eval_mode(model):
        for batch in tqdm(list(_batches(order, lengths, batch_size, max_batch_tokens)), desc=desc, leave=False, disable=desc is None):
            keep = max(n_cont[i] for i in batch) + 1
            logp = torch.log_softmax(last_logits(model, [seqs[i] for i in batch], keep, pad), dim=-1)
            for row, i in enumerate(batch):
                k = n_cont[i]
                # positions -k-1 .. -2 predict the k continuation tokens (the last position predicts nothing)
                targets = torch.tensor(seqs[i][-k:], device=logp.device)
                out[i] = logp[row, keep - k - 1: keep - 1].gather(-1, targets[:, None]).sum().item()
    return out


def choice_logprobs(
    model, tokenizer, contexts: Sequence[str], choices: Sequence[Sequence[str]], *, batch_size: int = 16,
    desc: str | None = None,
) -> list[list[float]]:
    """Sum of log p(choice | context) in nats for every choice of every item, sharing the context.

    Each context is run once (KV cache kept); its cache rows are then repeated for the item's
    choices and only the choice tokens are run on top. For 4-choice items with short answers this
    processes about a third of the tokens of scoring every ``context + choice`` from scratch
    (:func:`continuation_logprobs`, which gives the same numbers up to float error).
    """
    pad = pad_token_id(tokenizer)
    ctx_ids = [tokenizer(c, add_special_tokens=False)["input_ids"] for c in contexts]
    ch_ids = [[tokenizer(c, add_special_tokens=False)["input_ids"] for c in cs] for cs in choices]
    out: list[list[float]] = [[0.0] * len(cs) for cs in choices]
    order = sorted(range(len(contexts)), key=lambda i: -len(ctx_ids[i]))
    device = model_device(model)
    with eval_mode(model):
        for start in tqdm(range(0, len(order), batch_size), desc=desc, leave=False, disable=desc is None):
            batch = order[start: start + batch_size]
            ids, mask, pos = _left_pad([ctx_ids[i] for i in batch], pad, device)
            o = model(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=True, logits_to_keep=1)
            first = torch.log_softmax(o.logits[:, -1].float(), dim=-1)  # (B, V): predicts each choice's 1st token
            rows = [(b, j) for b, i in enumerate(batch) for j in range(len(ch_ids[i]))]
            conts = [ch_ids[batch[b]][j] for b, j in rows]
            scores = [first[b, conts[r][0]].item() for r, (b, _) in enumerate(rows)]
            longest = max(len(c) for c in conts)
            if longest > 1:
                # Feed tokens 1..n-1 of each choice (right-padded) on top of the repeated context cache;
                # their logits predict tokens 2..n.
                src = torch.tensor([b for b, _ in rows], device=device)
                cache = o.past_key_values
                cache.batch_select_indices(src)
                inp = torch.full((len(rows), longest - 1), pad, dtype=torch.long)
                cmask = torch.zeros((len(rows), longest - 1), dtype=torch.long)
                for r, c in enumerate(conts):
                    inp[r, : len(c) - 1] = torch.tensor(c[:-1])
                    cmask[r, : len(c) - 1] = 1
                full_mask = torch.cat([mask[src], cmask.to(device)], dim=1)
                cpos = (mask[src].sum(-1, keepdim=True) + torch.arange(longest - 1, device=device)[None])
                o2 = model(input_ids=inp.to(device), attention_mask=full_mask, position_ids=cpos,
                           past_key_values=cache, use_cache=True)
                logp = torch.log_softmax(o2.logits.float(), dim=-1)
                for r, c in enumerate(conts):
                    if len(c) > 1:
                        tgt = torch.tensor(c[1:], device=device)
                        scores[r] += logp[r, : len(c) - 1].gather(-1, tgt[:, None]).sum().item()
            for r, (b, j) in enumerate(rows):
                out[batch[b]][j] = scores[r]
    return out


def _prefix_state(model, tokenizer, prefix: str):
    """(prefix token ids, KV cache of the prefix for one row) or (None, None) for an empty prefix."""
    ids = tokenizer(prefix, add_special_tokens=False)["input_ids"] if prefix else []
    if not ids:
        return [], None
    out = model(input_ids=torch.tensor([ids], device=model_device(model)), use_cache=True)
    return ids, out.past_key_values


def _forward_after_prefix(model, prefix_ids, prefix_cache, seqs, pad_id, keep: int = 1):
    """Forward left-padded ``seqs`` on top of a shared prefix: the one-row prefix cache is copied and
    repeated for the batch, so the prefix is computed once per call instead of once per row.
    Layout per row: ``prefix | pads | seq`` (pads masked; positions continue from the prefix).
    Returns (model output, attention mask (B, P+T), position_ids of the last column (B, 1))."""
    import copy

    device = model_device(model)
    ids, mask, pos = _left_pad(seqs, pad_id, device)
    if prefix_cache is None:
        out = model(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=True, logits_to_keep=keep)
        return out, mask, pos[:, -1:]
    cache = copy.deepcopy(prefix_cache)
    cache.batch_repeat_interleave(len(seqs))
    P = len(prefix_ids)
    full_mask = torch.cat([torch.ones((len(seqs), P), dtype=mask.dtype, device=device), mask], dim=1)
    pos = pos + P
    out = model(input_ids=ids, attention_mask=full_mask, position_ids=pos, past_key_values=cache, use_cache=True,
                logits_to_keep=keep)
    return out, full_mask, pos[:, -1:]


def next_token_logprobs(
    model, tokenizer, prompts: Sequence[str], candidate_ids: Sequence[int], *, batch_size: int = 32,
    shared_prefix: str = "", desc: str | None = None,
) -> torch.Tensor:
    """log p(candidate | prompt) for each prompt and candidate token: (N, len(candidate_ids)), nats.

    ``shared_prefix``: a leading string common to every prompt (e.g. a chat template's system turn),
    tokenized on its own and run once per batch through the KV cache.
    """
    if any(not p.startswith(shared_prefix) for p in prompts):
        raise ValueError("every prompt must start with shared_prefix")
    seqs = [tokenizer(p[len(shared_prefix):], add_special_tokens=False)["input_ids"] for p in prompts]
    out = torch.zeros(len(seqs), len(candidate_ids))
    order = sorted(range(len(seqs)), key=lambda i: -len(seqs[i]))
    pad = pad_token_id(tokenizer)
    cand = torch.tensor(list(candidate_ids))
    with eval_mode(model):
        prefix_ids, prefix_cache = _prefix_state(model, tokenizer, shared_prefix)
        for start in tqdm(range(0, len(order), batch_size), desc=desc, leave=False, disable=desc is None):
            batch = order[start: start + batch_size]
            o, _, _ = _forward_after_prefix(model, prefix_ids, prefix_cache, [seqs[i] for i in batch], pad)
            logp = torch.log_softmax(o.logits[:, -1].float(), dim=-1)
            out[batch] = logp[:, cand.to(logp.device)].cpu()
    return out


def greedy_generate(
    model, tokenizer, prompts: Sequence[str], *, max_new_tokens: int = 16, batch_size: int = 32,
    stop: str | None = "\n", shared_prefix: str = "", desc: str | None = None,
) -> list[str]:
    """Greedy continuations of plain-text prompts (batched, left-padded), cut at the first ``stop``.

    Stop rule per row: the EOS token, a generated token whose text contains ``stop`` (the first newline by
    default), or ``max_new_tokens``. A finished row leaves the batch at once (its KV-cache rows are
    dropped), so one rambling row does not make the others pay for its tokens.

    Hand-written decoding loop rather than ``model.generate``: it lets every row share the KV cache of
    ``shared_prefix`` (a few-shot block or a chat template's system turn, computed once per batch) and
    drops finished rows. Greedy decoding has no other state, so this is short.
    """
    if any(not p.startswith(shared_prefix) for p in prompts):
        raise ValueError("every prompt must start with shared_prefix")
    pad = pad_token_id(tokenizer)
    eos = tokenizer.eos_token_id
    seqs = [tokenizer(p[len(shared_prefix):], add_special_tokens=False)["input_ids"] for p in prompts]
    order = sorted(range(len(seqs)), key=lambda i: -len(seqs[i]))
    texts = [""] * len(seqs)
    with eval_mode(model):
        prefix_ids, prefix_cache = _prefix_state(model, tokenizer, shared_prefix)
        for start in tqdm(range(0, len(order), batch_size), desc=desc, leave=False, disable=desc is None):
            batch = order[start: start + batch_size]
            out, mask, pos = _forward_after_prefix(model, prefix_ids, prefix_cache, [seqs[i] for i in batch], pad)
            new: dict[int, list[int]] = {r: [] for r in range(len(batch))}
            alive = list(range(len(batch)))  # batch rows still decoding, in cache-row order
            cache, logits = out.past_key_values, out.logits[:, -1]
            for step in range(max_new_tokens):
                nxt = logits.argmax(-1)
                keep = []
                for k, (r, t) in enumerate(zip(alive, nxt.tolist())):
                    if t == eos:
                        continue
                    new[r].append(t)
                    if not (stop and stop in tokenizer.decode([t])):
                        keep.append(k)
                if not keep or step == max_new_tokens - 1:
                    break
                if len(keep) < len(alive):
                    idx = torch.tensor(keep, device=nxt.device)
                    cache.batch_select_indices(idx)
                    mask, pos, nxt = mask[idx], pos[idx], nxt[idx]
                    alive = [alive[k] for k in keep]
                mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
                pos = pos + 1
                out = model(input_ids=nxt[:, None], attention_mask=mask, position_ids=pos,
                            past_key_values=cache, use_cache=True)
                cache, logits = out.past_key_values, out.logits[:, -1]
            for r, i in enumerate(batch):
                text = tokenizer.decode(new[r], skip_special_tokens=True)
                texts[i] = text.split(stop)[0] if stop else text
    return texts


def generate_token_ids(
    model, tokenizer, prompts: Sequence[str], *, max_new_tokens: int, batch_size: int = 32,
) -> list[list[int]]:
    """Greedy continuation token ids (up to and including EOS) of each prompt; pads removed."""
    from transformers import GenerationConfig

    pad = pad_token_id(tokenizer)
    gen_cfg = GenerationConfig(max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=pad,
                               eos_token_id=tokenizer.eos_token_id)
    seqs = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
    result: list[list[int]] = [[] for _ in seqs]
    with eval_mode(model):
        for start in range(0, len(seqs), batch_size):
            batch = list(range(start, min(start + batch_size, len(seqs))))
            ids, mask, _ = _left_pad([seqs[i] for i in batch], pad, model_device(model))
            out = model.generate(input_ids=ids, attention_mask=mask, generation_config=gen_cfg)
            for row, i in enumerate(batch):
                toks = out[row, ids.shape[1]:].tolist()
                if tokenizer.eos_token_id in toks:
                    toks = toks[: toks.index(tokenizer.eos_token_id) + 1]
                result[i] = toks
    return result
