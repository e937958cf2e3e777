"""The training loop: a plain PyTorch loop, readable top to bottom.

Why not ``transformers.Trainer`` / TRL's ``SFTTrainer``:

- LoRAMoE adds an auxiliary loss (the LBC) that needs each batch's sample types *during* the forward
  (:func:`retain.adapters.loramoe.sample_types`) and is logged apart from the LM loss; in HF Trainer
  that means overriding ``compute_loss`` and its logging, and a data collator that smuggles types.
- Resume must be exact (same batches, same dropout masks, same weights as an uninterrupted run). Here
  the data position *is* the step number (see below) and the checkpoint holds every RNG state, so that
  is easy to see and to test; with HF Trainer it depends on sampler/accelerate internals.
- The loss is the mean over every assistant token of the global batch (all micro-batches, all ranks),
  so gradient accumulation and process count do not change what is optimised.

Data order (the "stream"): the encoded mixture of N examples is shuffled once per epoch with a
generator seeded by ``seed + epoch``, and the epochs are concatenated. With global batch
``G = batch_size * grad_accum * world_size``, optimizer step ``s`` reads stream positions
``[s*G, (s+1)*G)``; within them micro-batch ``a`` of rank ``r`` is ``[a*B*W + r*B, ... + B)``.
A step therefore always sees the same examples, whatever happened before it.
"""

from __future__ import annotations

import contextlib
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from retain.data.collate import IGNORE_INDEX, Collator
from retain.errors import RetainError
from retain.training.checkpoint import list_checkpoints, load_checkpoint, rng_state, save_checkpoint
from retain.training.config import OptimConfig, Recipe
from retain.training.distributed import DistInfo, all_reduce_sum, barrier, gather_objects


def total_steps(recipe: Recipe, n_examples: int, world_size: int) -> int:
    """``max_steps``, or ``ceil(epochs * N / G)`` optimizer steps."""
    t = recipe.train
    if t.max_steps is not None:
        return t.max_steps
    g = t.batch_size * t.grad_accum * world_size
    return max(1, math.ceil(t.epochs * n_examples / g))


class Stream:
    """Seeded epoch permutations of ``n`` examples, concatenated; ``index(pos)`` → example index."""

    def __init__(self, n: int, seed: int):
        self.n, self.seed = n, seed
        self._perms: dict[int, list[int]] = {}

    def index(self, pos: int) -> int:
        epoch, i = divmod(pos, self.n)
        if epoch not in self._perms:
            g = torch.Generator().manual_seed(self.seed + epoch)
            self._perms = {epoch: torch.randperm(self.n, generator=g).tolist()}  # keep one epoch in memory
        return self._perms[epoch][i]


def micro_batches(step: int, stream: Stream, B: int, A: int, info: DistInfo) -> list[list[int]]:
    """Example indices of this rank's ``A`` micro-batches for optimizer step ``step``."""
    G = B * A * info.world_size
    base = step * G
    return [[stream.index(base + a * B * info.world_size + info.rank * B + j) for j in range(B)] for a in range(A)]


def build_optimizer(model: nn.Module, cfg: OptimConfig) -> torch.optim.Optimizer:
    """AdamW over trainable params; no weight decay on 1-D tensors (biases, norm weights)."""
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (decay if p.ndim >= 2 else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW([g for g in groups if g["params"]], lr=cfg.lr, betas=tuple(cfg.betas))


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: OptimConfig, steps: int):
    from transformers import get_scheduler

    warmup = cfg.warmup_steps or int(round(cfg.warmup_ratio * steps))
    name = {"cosine": "cosine", "linear": "linear", "constant": "constant_with_warmup"}[cfg.schedule]
    return get_scheduler(name, optimizer, num_warmup_steps=warmup, num_training_steps=steps)


def token_loss_sum(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Summed next-token cross-entropy (nats) over positions whose label is not -100.

    logits (B, T, V), labels (B, T) → scalar. Only labelled positions are upcast to fp32.
    """
    target = labels[:, 1:]
    keep = target != IGNORE_INDEX
    picked = logits[:, :-1][keep].float()  # (n, V)
    return F.cross_entropy(picked, target[keep], reduction="sum")


@dataclass
class LoopState:
    step: int = 0
    tokens: int = 0
    """Non-pad input tokens processed, all ranks."""
    elapsed: float = 0.0
    """Training seconds, summed over resumed sessions."""
    session_tokens: int = 0
    session_seconds: float = 0.0
    last_rows: list[dict] = field(default_factory=list)


def accumulate_step(net: nn.Module, module: nn.Module, batches: list[dict], info: DistInfo,
                    autocast: Callable[[], Any]) -> tuple[float, float | None, int, int]:
    """Forward/backward every micro-batch of one optimizer step; gradients end up in ``module``.

    ``net`` is ``module`` or its DDP wrapper. Returns global sums over ranks: (LM loss in nats per
    assistant token, mean β-weighted LBC loss or None, input tokens, assistant tokens).
    """
    from retain.adapters.loramoe import lbc_loss, sample_types

    A = len(batches)
    # Normalise by the global number of assistant tokens so every token weighs the same whatever the
    # split into micro-batches and ranks (DDP averages gradients over ranks, hence the * world_size).
    n_local = sum(int((b["labels"][:, 1:] != IGNORE_INDEX).sum()) for b in batches)
    n_global = int(all_reduce_sum(torch.tensor([n_local], dtype=torch.float64, device=info.device), info).item())
    stats = torch.zeros(3, dtype=torch.float64, device=info.device)  # LM nats, LBC sum, input tokens
    has_lbc = False
    for a, batch in enumerate(batches):
        batch = {k: v.to(info.device) for k, v in batch.items()}
        last = a == A - 1 or not info.enabled
        with contextlib.nullcontext() if last else net.no_sync():  # all-reduce once, after the last micro-batch
            with sample_types(module, batch["sample_type"]), autocast():
                out = net(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False)
            lm_sum = token_loss_sum(out.logits, batch["labels"])
            loss = lm_sum * (info.world_size / n_global)
            aux = lbc_loss(module)  # None unless the model has LoRAMoE layers and sample types were given
            if aux is not None:
                has_lbc = True
                loss = loss + aux / A
                stats[1] += float(aux.detach())
            loss.backward()
        stats[0] += float(lm_sum.detach())
        stats[2] += int(batch["attention_mask"].sum())
    all_reduce_sum(stats, info)
    lbc = float(stats[1]) / (A * info.world_size) if has_lbc else None
    return float(stats[0]) / n_global, lbc, int(stats[2]), n_global


def run_loop(
    recipe: Recipe,
    module: nn.Module,
    features: list[dict],
    collator: Collator,
    info: DistInfo,
    output_dir: Path,
    resume: bool,
    log_row: Callable[[dict], None],
    checkpoint_meta: dict,
) -> LoopState:
    """Train ``module`` (as returned by ``prepare_model``) in place for the recipe's steps.

    Resumes from the last checkpoint in ``output_dir`` when ``resume``; ``checkpoint_meta`` (process
    count, batch sizes, ...) must match the checkpoint's. Rank 0 writes checkpoints and calls
    ``log_row`` every ``log_every`` steps.
    """
    from tqdm.auto import tqdm

    t = recipe.train
    optimizer = build_optimizer(module, recipe.optim)
    steps = total_steps(recipe, len(features), info.world_size)
    scheduler = build_scheduler(optimizer, recipe.optim, steps)
    state = LoopState()

    ckpts = list_checkpoints(output_dir) if resume else []
    if ckpts:
        saved = load_checkpoint(ckpts[-1], module, optimizer, scheduler, info.rank)
        for key, value in checkpoint_meta.items():
            if saved.get(key) != value:
                raise RetainError(
                    f"{ckpts[-1]}: {key} was {saved.get(key)!r} when saved, now {value!r}; resume with the "
                    "same recipe and process count, or start a new output_dir"
                )
        state.step, state.tokens, state.elapsed = saved["step"], saved["tokens"], saved["elapsed"]

    net = module
    if info.enabled:
        from torch.nn.parallel import DistributedDataParallel as DDP

        net = DDP(module, device_ids=[info.device.index] if info.device.type == "cuda" else None)

    stream = Stream(len(features), t.seed)
    if t.bf16_autocast:
        autocast = lambda: torch.autocast(info.device.type, dtype=torch.bfloat16)  # noqa: E731
    else:
        autocast = contextlib.nullcontext
    bar = tqdm(total=steps, initial=state.step, disable=not (info.is_main and t.progress), desc="train", unit="step")
    net.train()
    while state.step < steps:
        t0 = time.perf_counter()
        idx = micro_batches(state.step, stream, t.batch_size, t.grad_accum, info)
        batches = [collator([features[i] for i in micro]) for micro in idx]
        lm, lbc, tokens, _ = accumulate_step(net, module, batches, info, autocast)
        grad_norm = None
        if recipe.optim.max_grad_norm is not None:
            grad_norm = float(torch.nn.utils.clip_grad_norm_(module.parameters(), recipe.optim.max_grad_norm))
        lr = scheduler.get_last_lr()[0]
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)

        state.step += 1
        dt = time.perf_counter() - t0
        state.elapsed += dt
        state.session_seconds += dt
        state.tokens += tokens
        state.session_tokens += tokens
        row = {"step": state.step, "loss": lm + (lbc or 0.0), "lm_loss": lm, "lbc_loss": lbc, "lr": lr,
               "grad_norm": grad_norm, "tokens": state.tokens, "elapsed": round(state.elapsed, 3)}
        state.last_rows = (state.last_rows + [row])[-10:]
        if info.is_main and (state.step % t.log_every == 0 or state.step == steps):
            log_row(row)
        bar.set_postfix(loss=f"{lm:.4f}", **({"lbc": f"{lbc:.4f}"} if lbc is not None else {}), refresh=False)
        bar.update(1)
        if t.save_every and state.step % t.save_every == 0 and state.step < steps:
            rngs = gather_objects(rng_state(), info)  # every rank's dropout stream, saved by rank 0
            if info.is_main:
                save_checkpoint(
                    output_dir, state.step, module, optimizer, scheduler, rngs,
                    {"tokens": state.tokens, "elapsed": state.elapsed, **checkpoint_meta}, keep=t.keep_checkpoints,
                )
            barrier(info)
    bar.close()
    return state


def read_log(path: Path, max_step: int | None = None) -> list[dict]:
    """Rows of ``train_log.jsonl`` (a torn last line from a kill is skipped), up to ``max_step``."""
    from retain.utils.io import iter_jsonl

    if not path.exists():
        return []
    rows = list(iter_jsonl(path, allow_truncated_tail=True))
    return [r for r in rows if max_step is None or r["step"] <= max_step]


def append_jsonl(path: Path, row: dict[str, Any]) -> None:
    """Append one row and fsync: the log is a running record, rewritten atomically on resume. A full disk
    is one line naming the file, and no partial row is left (:func:`retain.utils.io.append_text`)."""
    from retain.utils.io import append_text

    append_text(path, json.dumps(row) + "\n")
