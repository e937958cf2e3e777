"""``retain train`` on transformers' ``Trainer``: what retain adds, as a subclass and one callback.

The engine (loop, gradient accumulation, DDP / FSDP / DeepSpeed through accelerate, mixed precision,
checkpoints with optimizer, scheduler and every rank's RNG, TensorBoard / W&B) is transformers'. LoRAMoE's
sample types and LBC come from :class:`retain.integrations.hf.LoRAMoETrainer`. What this module adds:

- **The data order of the recipe** (:class:`StreamDataset`): the encoded mixture of N examples is
  shuffled once per epoch with a generator seeded by ``seed + epoch``, the epochs are concatenated, and
  the Trainer reads that stream sequentially (one Trainer "epoch"). With global batch
  ``G = batch_size * grad_accum * processes``, optimizer step ``s`` reads stream positions
  ``[s*G, (s+1)*G)``; accelerate hands micro-batch ``a`` of rank ``r`` positions ``[a*B*W + r*B, ... + B)``
  of them. A step therefore always sees the same examples, whatever happened before it, and a resume
  skips exactly the batches already trained on. With ``train.sort_by_length`` each step's ``G`` positions
  are reordered longest first before they are cut into forward passes: the step holds the same examples
  and, the loss being normalised per step, the same gradient, with less padding in each forward pass.
- **The loss**: summed next-token cross-entropy over assistant tokens (:func:`token_loss`) divided by the
  assistant tokens of the whole step (all micro-batches, all ranks: the Trainer's ``num_items_in_batch``),
  so gradient accumulation and process count do not change what is optimised. ``mixture.loss_balance``
  ``example`` / ``type`` instead weight each example's summed loss by a weight (:class:`LossBalance`) computed
  from the whole step's counts (examples, tokens per sample type) before its first forward pass, in
  :meth:`RetainTrainer.get_batch_samples`, where the Trainer counts ``num_items_in_batch``: the step's loss,
  and so its gradient, still does not depend on how the step is cut into forward passes.
- **The optimizer and schedule of the recipe**: AdamW with no weight decay on 1-D tensors, linear warmup
  of ``warmup_steps`` (or ``round(warmup_ratio * steps)``) then cosine / linear / constant.
- **The run folder** (:class:`RunLogCallback`): ``train_log.jsonl`` rows (``step``, ``loss``, ``lm_loss``,
  ``lbc_loss``, ``lr``, ``grad_norm``, ``tokens``, ``elapsed``), checkpoints under ``checkpoints/`` marked
  complete by ``retain_state.json`` (written last, atomically), and the dropout seed of each rank.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from transformers import ProgressCallback, TrainerCallback

from retain.data.collate import IGNORE_INDEX
from retain.errors import RetainError
from retain.integrations.hf import LoRAMoETrainer
from retain.training.config import OptimConfig, Recipe
from retain.utils.io import write_json_atomic

CHECKPOINTS = "checkpoints"
"""Sub-folder of output_dir holding the Trainer's ``checkpoint-<step>`` folders."""
STATE_FILE = "retain_state.json"
"""Written last into a checkpoint: its presence marks the checkpoint complete."""


def total_steps(recipe: Recipe, n_examples: int, world_size: int) -> int:
    """``max_steps``, or ``ceil(epochs * N / G)`` optimizer steps."""
    t = recipe.train
    if t.max_steps is not None:
        return t.max_steps
    g = t.batch_size * t.grad_accum * world_size
    return max(1, math.ceil(t.epochs * n_examples / g))


class StreamDataset(torch.utils.data.Dataset):
    """The recipe's example stream as a map-style dataset of ``length`` positions.

    Position ``p`` is example ``perm_e[p mod N]`` of epoch ``e = p // N``, where ``perm_e`` is
    ``torch.randperm(N)`` under a generator seeded ``seed + e``. Read sequentially.

    ``sort_window=G`` (the global batch) reorders each window of positions ``[w*G, (w+1)*G)`` by token
    count, longest first (ties keep stream order): the window's examples are unchanged, so a step trains
    on the same set, but the forward passes cut from it pad less. 0 = stream order.
    """

    def __init__(self, features: list[dict], seed: int, length: int, sort_window: int = 0):
        self.features, self.seed, self.length, self.sort_window = features, seed, length, sort_window
        self._perm: tuple[int, list[int]] | None = None  # one epoch's permutation in memory
        self._window: tuple[int, list[int]] | None = None  # one window's sorted stream positions

    def stream_index(self, pos: int) -> int:
        """Example at stream position ``pos`` before any within-step sort."""
        epoch, i = divmod(pos, len(self.features))
        if self._perm is None or self._perm[0] != epoch:
            g = torch.Generator().manual_seed(self.seed + epoch)
            self._perm = (epoch, torch.randperm(len(self.features), generator=g).tolist())
        return self._perm[1][i]

    def index(self, pos: int) -> int:
        if self.sort_window <= 1:
            return self.stream_index(pos)
        w, i = divmod(pos, self.sort_window)
        if self._window is None or self._window[0] != w:
            lo = w * self.sort_window
            ids = [self.stream_index(p) for p in range(lo, min(lo + self.sort_window, self.length))]
            order = sorted(range(len(ids)), key=lambda k: (-len(self.features[ids[k]]["input_ids"]), k))
            self._window = (w, [ids[k] for k in order])
        return self._window[1][i]

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, pos: int) -> dict:
        return self.features[self.index(pos)]


def build_optimizer(model: nn.Module, cfg: OptimConfig) -> torch.optim.Optimizer:
    """AdamW over trainable params; no weight decay on 1-D tensors (biases, norm weights)."""
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (decay if p.ndim >= 2 else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW([g for g in groups if g["params"]], lr=cfg.lr, betas=tuple(cfg.betas))


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: OptimConfig, steps: int):
    """Linear warmup (``warmup_steps`` or ``round(warmup_ratio * steps)``), then the recipe's decay."""
    from transformers import get_scheduler

    warmup = cfg.warmup_steps or int(round(cfg.warmup_ratio * steps))
    name = {"cosine": "cosine", "linear": "linear", "constant": "constant_with_warmup"}[cfg.schedule]
    return get_scheduler(name, optimizer, num_warmup_steps=warmup, num_training_steps=steps)


def token_loss_sum(logits: torch.Tensor, labels: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
    """Summed next-token cross-entropy (nats) over positions whose label is not -100.

    logits (B, T, V), or (n, V) when the model computed them only where a label follows (see
    :func:`labelled_positions`); labels (B, T) → scalar. Only labelled positions are upcast to fp32.
    ``weight`` (B,): each row's tokens count ``weight[b]`` times (``sum_b weight[b] * sum_t CE[b, t]``).
    """
    target = labels[:, 1:]
    keep = target != IGNORE_INDEX
    picked = (logits if logits.dim() == 2 else logits[:, :-1][keep]).float()  # (n, V)
    if weight is None:
        return F.cross_entropy(picked, target[keep], reduction="sum")
    per_token = F.cross_entropy(picked, target[keep], reduction="none")  # (n,), row-major like `picked`
    return (per_token * weight.float()[:, None].expand_as(target)[keep]).sum()


def example_tokens(labels: torch.Tensor) -> torch.Tensor:
    """(B,) long: the labelled next-token positions of each row (its assistant tokens, the loss terms)."""
    return (labels[:, 1:] != IGNORE_INDEX).sum(dim=1)


class LossBalance:
    """How one optimizer step's examples share its loss (``mixture.loss_balance``).

    Every balance is a weight per example: the step's loss is ``sum_i w_i * S_i`` over the step's examples
    (all micro-batches, all ranks), ``S_i`` the summed cross-entropy of example ``i``'s ``n_i`` assistant
    tokens. With ``E`` the step's examples and ``N_k`` its tokens of sample type ``k``:

    - ``token``: ``w_i = 1 / sum_k N_k``, the mean over the step's tokens (:func:`token_loss`, today's loss);
    - ``example``: ``w_i = 1 / (E * n_i)``, the mean over examples of each one's mean token loss;
    - ``type``: ``w_i = q_k / N_k`` for ``i`` of type ``k``, where ``q_k = p_k / sum_{j present} p_j`` and
      ``p_k`` is type ``k``'s mixture share (``type_shares``: the normalised weights of its datasets, summed).
      The step's gradient is then ``sum_k q_k * grad(token mean of type k)``: type ``k`` carries share ``q_k``
      (= ``p_k`` whenever the step holds every type). A step that holds one type is its token mean.

    The weights need only the step's counts (:meth:`counts`, summed over micro-batches and ranks), taken
    before the first forward pass, so the gradient does not depend on how the step is cut into passes.
    """

    def __init__(self, mode: str = "token", type_shares: dict[int, float] | None = None):
        self.mode, self.type_shares = mode, dict(type_shares or {})
        if mode == "type" and not self.type_shares:
            raise ValueError("LossBalance('type') needs type_shares: {sample type: mixture share}")
        self._types = sorted(self.type_shares)  # the order of counts()[1:]

    def counts(self, labels: torch.Tensor, types: torch.Tensor | None) -> torch.Tensor:
        """(1 + K,) long of one micro-batch: [examples with a loss token, tokens of each type in
        ``type_shares`` (sorted by type)]. Sum it over the step's micro-batches (and ranks) for :meth:`weights`."""
        n = example_tokens(labels)
        out = [(n > 0).sum()]
        if self.mode == "type":
            types = self._check_types(types, labels)
            out += [n[types == k].sum() for k in self._types]
        return torch.stack(out).long()

    def weights(self, labels: torch.Tensor, types: torch.Tensor | None, totals: torch.Tensor) -> torch.Tensor:
        """(B,) float32 weight of each row's summed token loss, from the step's ``totals`` (summed :meth:`counts`)."""
        n = example_tokens(labels).float()  # float32 throughout (MPS has no float64); counts are exact in it
        totals = totals.to(device=n.device, dtype=torch.float32)
        if self.mode == "example":
            w = 1.0 / (totals[0] * n.clamp(min=1))
        elif self.mode == "type":
            types = self._check_types(types, labels)
            present = [i for i, _ in enumerate(self._types) if totals[1 + i] > 0]
            mass = sum(self.type_shares[self._types[i]] for i in present)
            w = torch.zeros_like(n)
            for i in present:
                k = self._types[i]
                w[types == k] = self.type_shares[k] / mass / totals[1 + i]
        else:
            raise ValueError(f"LossBalance({self.mode!r}).weights: the token balance uses num_items_in_batch")
        return torch.where(n > 0, w, torch.zeros_like(w))

    def _check_types(self, types: torch.Tensor | None, labels: torch.Tensor) -> torch.Tensor:
        if types is None:
            raise ValueError("LossBalance('type'): the batch has no sample_type")
        types = types.to(labels.device)
        unknown = set(types.tolist()) - set(self._types)
        if unknown:  # the recipe gives every dataset a type (Recipe.__post_init__), so this is a bug
            raise ValueError(f"LossBalance('type'): sample types {sorted(unknown)} have no mixture share")
        return types


def type_shares(types: list, shares: list[float]) -> dict[int, float]:
    """{sample type: mixture share} from each dataset's type and normalised weight (two datasets of one type
    add up); datasets without a type are left out."""
    from retain.data.types import as_sample_type

    out: dict[int, float] = {}
    for t, p in zip(types, shares):
        if t is not None:
            k = as_sample_type(t)
            out[k] = out.get(k, 0.0) + float(p)
    return out


def labelled_positions(labels: torch.Tensor) -> torch.Tensor:
    """(B, T) bool: position ``t`` predicts a labelled token (``labels[:, t + 1] != -100``).

    Passed to the model as ``logits_to_keep`` (transformers' boolean form), the LM head runs on these
    positions only and returns logits (n, V) in row-major order, the order of :func:`token_loss_sum`'s
    ``logits[:, :-1][keep]``. The head is a (hidden × vocab) product per position (SmolLM2: 576 × 49,152,
    about a fifth of the forward FLOPs), so prompt and padding positions no longer pay for it.
    """
    mask = torch.zeros_like(labels, dtype=torch.bool)
    mask[:, :-1] = labels[:, 1:] != IGNORE_INDEX
    return mask


def token_loss(outputs: Any, labels: torch.Tensor, num_items_in_batch: torch.Tensor | int | None = None,
               weight: torch.Tensor | None = None) -> torch.Tensor:
    """The Trainer's ``compute_loss_func``: :func:`token_loss_sum` / assistant tokens of the whole step.

    ``num_items_in_batch`` is that count over every micro-batch and rank (the Trainer multiplies the
    result by the process count, which DDP's gradient average divides out again). ``weight`` (B,): the
    per-row weights of :class:`LossBalance` (already normalised over the step), used instead of that count.
    """
    if weight is not None:
        return token_loss_sum(outputs.logits, labels, weight)
    total = token_loss_sum(outputs.logits, labels)
    n = num_items_in_batch if num_items_in_batch is not None else (labels[:, 1:] != IGNORE_INDEX).sum()
    return total / n


def accepts_logits_to_keep(model: nn.Module) -> bool:
    """Whether the transformers model under ``model`` (a PEFT wrapper is looked through) takes
    ``logits_to_keep`` in its forward (every causal LM and LLaVA in transformers 5 does)."""
    import inspect

    core = model.get_base_model() if hasattr(model, "get_base_model") else model
    return "logits_to_keep" in inspect.signature(core.forward).parameters


class RetainTrainer(LoRAMoETrainer):
    """:class:`~retain.integrations.hf.LoRAMoETrainer` with the recipe's optimizer, schedule and data order."""

    def __init__(self, *args, recipe: Recipe, balance: LossBalance | None = None, **kwargs):
        self.recipe = recipe
        self.balance = balance or LossBalance(recipe.mixture.loss_balance)
        self._row_weight: torch.Tensor | None = None  # the micro-batch's LossBalance weights, during compute_loss
        super().__init__(*args, compute_loss_func=self._lm_loss, **kwargs)
        self._loss_shifts_labels = True  # token_loss predicts labels[:, 1:]: count those for num_items_in_batch
        self.anchor = None
        self._kl = None  # running sum of the logged KL since the last log row
        self.head_on_labels_only = accepts_logits_to_keep(self.accelerator.unwrap_model(self.model))
        if recipe.train.kl_anchor > 0:
            from retain.training.anchor import KLAnchor

            self.anchor = KLAnchor(self.accelerator.unwrap_model(self.model), recipe.method, recipe.train.kl_anchor)

    def _lm_loss(self, outputs, labels, num_items_in_batch=None):
        return token_loss(outputs, labels, num_items_in_batch, weight=self._row_weight)

    def get_batch_samples(self, epoch_iterator, num_batches, device):
        """The step's micro-batches and ``num_items_in_batch`` (the parent's), plus, for an ``example`` /
        ``type`` balance, each micro-batch's ``loss_weight`` (B,) from the counts of the whole step, summed
        over its micro-batches and every rank (:class:`LossBalance`)."""
        batches, num_items = super().get_batch_samples(epoch_iterator, num_batches, device)
        if self.balance.mode != "token" and batches:
            totals = sum(self.balance.counts(b["labels"], b.get("sample_type")).to(device) for b in batches)
            if self.args.world_size > 1:
                totals = self.accelerator.reduce(totals, reduction="sum")
            for b in batches:
                b["loss_weight"] = self.balance.weights(b["labels"], b.get("sample_type"), totals)
        return batches, num_items

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        """LM loss (+ LBC, from the parent) + λ · KL(base ‖ model) on the labelled tokens when anchored.

        Without the anchor, training asks the model for logits at labelled positions only
        (:func:`labelled_positions`): the same loss and gradient, less LM-head work. The LM loss follows
        ``mixture.loss_balance`` (the batch's ``loss_weight``); the LBC and the KL anchor keep their scaling:
        the LBC is the mean over the step's forward passes, the KL a mean over the step's tokens.
        """
        weight = inputs.pop("loss_weight", None)
        self._row_weight = weight if model.training else None
        try:
            return self._compute_loss(model, inputs, return_outputs, num_items_in_batch)
        finally:
            self._row_weight = None

    def _compute_loss(self, model, inputs, return_outputs, num_items_in_batch):
        if self.anchor is None and model.training and self.head_on_labels_only:
            inputs = {**inputs, "logits_to_keep": labelled_positions(inputs["labels"])}
        if self.anchor is None or not model.training:
            return super().compute_loss(model, inputs, return_outputs=return_outputs,
                                        num_items_in_batch=num_items_in_batch)
        from retain.training.anchor import kl_sum

        labels = inputs["labels"]
        base_logits = self.anchor.base_logits(self.accelerator.unwrap_model(model), inputs)
        loss, outputs = super().compute_loss(model, inputs, return_outputs=True, num_items_in_batch=num_items_in_batch)
        n = num_items_in_batch if num_items_in_batch is not None else (labels[:, 1:] != IGNORE_INDEX).sum()
        kl = kl_sum(outputs.logits, base_logits, labels) / n
        # Scaled like the LM loss (see LoRAMoETrainerMixin.compute_loss): per token of the whole step.
        steps = getattr(self, "current_gradient_accumulation_steps", self.args.gradient_accumulation_steps)
        part = kl.detach().float() / (1 if self._loss_is_scaled(num_items_in_batch) else steps)
        self._kl = part if self._kl is None else self._kl + part
        loss = loss + self.anchor.weight * kl
        return (loss, outputs) if return_outputs else loss

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if "loss" in logs and self._kl is not None:  # collective on every rank, as the parent's reduce
            steps = max(1, self.state.global_step - (self._parts_from_step or 0))
            logs["kl_loss"] = self.accelerator.reduce(self._kl, reduction="mean").item() / steps
            self._kl = None
        super().log(logs, start_time)

    def _get_train_sampler(self, train_dataset=None):
        # StreamDataset is already in training order (seeded per epoch); accelerate shards its batches.
        return torch.utils.data.SequentialSampler(train_dataset if train_dataset is not None else self.train_dataset)

    def create_optimizer(self, model: nn.Module | None = None) -> torch.optim.Optimizer:
        if self.optimizer is None:
            self.optimizer = build_optimizer(model if model is not None else self.model, self.recipe.optim)
        return self.optimizer

    def create_scheduler(self, num_training_steps: int, optimizer: torch.optim.Optimizer | None = None):
        if self.lr_scheduler is None:
            self.lr_scheduler = build_scheduler(optimizer or self.optimizer, self.recipe.optim, num_training_steps)
            self._created_lr_scheduler = True
        return self.lr_scheduler


FINAL_LOSS_STEPS = 10
"""The final loss is the mean LM loss of the run's last this-many steps (:func:`final_loss`)."""


def final_loss(rows: list[dict], steps: int = FINAL_LOSS_STEPS) -> tuple[float, int]:
    """(mean LM loss of the last ``steps`` steps, steps covered) from ``train_log.jsonl`` rows.

    A row is the mean over the steps since the row before it (``train.log_every``), so rows are taken whole
    from the end until they cover ``steps`` steps, each weighted by the steps it covers; the count says how
    many were covered (more than ``steps`` when ``log_every`` does not divide it). One step's loss alone is
    noisy; the progress bar shows the same mean, so the bar's last value and the reported final loss are
    one number."""
    covered = 0
    picked: list[tuple[int, float]] = []
    for i in range(len(rows) - 1, -1, -1):
        if covered >= steps:
            break
        prev = rows[i - 1]["step"] if i > 0 else 0
        n = max(1, rows[i]["step"] - prev)
        picked.append((n, rows[i]["lm_loss"]))
        covered += n
    total = sum(n * loss for n, loss in picked)
    return (total / covered if covered else float("nan")), covered


class StepBarCallback(ProgressCallback):
    """The training bar (stderr, made by :func:`retain.utils.console.tqdm`: plain lines when stderr is not a
    terminal) with the run's final-loss quantity in its postfix: the mean LM loss of the last
    :data:`FINAL_LOSS_STEPS` steps (:func:`final_loss`), beside the latest LBC / KL terms and gradient norm.

    The stock :class:`~transformers.ProgressCallback` also writes every log dict with ``tqdm.write``,
    which goes to **stdout**, against retain's output rule (stdout carries results only); the rows are in
    ``train_log.jsonl``. Here a log updates the bar instead.
    """

    def __init__(self, rows: list[dict] | None = None):
        super().__init__()
        self.rows: list[dict] = list(rows or [])  # a resumed run's earlier rows (train_log.jsonl)

    def on_train_begin(self, args, state, control, **kwargs):
        from retain.utils.console import tqdm

        if state.is_world_process_zero:
            self.training_bar = tqdm(total=state.max_steps, desc="train", unit="step", dynamic_ncols=True)
        self.current_step = 0

    def on_prediction_step(self, args, state, control, eval_dataloader=None, **kwargs):
        from retain.utils.console import tqdm

        if state.is_world_process_zero and eval_dataloader is not None and hasattr(eval_dataloader, "__len__"):
            if self.prediction_bar is None:
                self.prediction_bar = tqdm(total=len(eval_dataloader), desc="validation", unit="batch",
                                           leave=self.training_bar is None, dynamic_ncols=True)
            self.prediction_bar.update(1)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not (state.is_world_process_zero and self.training_bar is not None and logs and "loss" in logs):
            return
        if "train_loss" in logs:  # the end-of-training summary is not a step
            return
        self.rows.append({"step": state.global_step, "lm_loss": float(logs.get("lm_loss", logs["loss"]))})
        mean, n = final_loss(self.rows)
        shown = {f"loss (last {n} steps)": mean,
                 **{k: logs[k] for k in ("lbc_loss", "kl_loss", "grad_norm") if k in logs}}
        self.training_bar.set_postfix({k: f"{float(v):.4g}" for k, v in shown.items()}, refresh=False)


class RunLogCallback(TrainerCallback):
    """Writes ``train_log.jsonl`` rows (rank 0), times the loop, seeds dropout, marks checkpoints complete.

    Timing: ``elapsed`` counts seconds from the end of one step's bookkeeping to the end of the next step
    (data, forward, backward, optimizer), not the log writes and checkpoint saves in between; it adds up
    over resumed sessions. ``checkpoint_meta`` (process count, batch sizes, ...) is stored in each
    checkpoint's ``retain_state.json`` and checked on resume.
    """

    def __init__(self, log_path: Path, dropout_seed: int, checkpoint_meta: dict, resumed_state: dict | None,
                 is_main: bool, save_last: bool = False):
        self.log_path, self.dropout_seed, self.meta, self.is_main = log_path, dropout_seed, checkpoint_meta, is_main
        self.save_last = save_last  # checkpoint the final step too (keep_final_checkpoint: a run can be extended)
        self.elapsed = float(resumed_state["elapsed"]) if resumed_state else 0.0
        self.resumed = resumed_state is not None
        self.session_seconds = 0.0
        self.session_tokens = 0
        self.rows: list[dict] = []
        self._mark: float | None = None
        self._first_step = True
        self._tokens_at_start: int | None = None
        self.trainer: Any = None  # set by run.train: the barrier before marking a checkpoint complete

    def on_step_begin(self, args, state, control, **kwargs):
        if self._first_step:
            self._first_step = False
            if self._tokens_at_start is None:
                self._tokens_at_start = state.num_input_tokens_seen
            # Dropout streams differ per rank (they see different data anyway); a resumed run instead
            # continues from the RNG state the Trainer restored from the checkpoint.
            if not self.resumed:
                torch.manual_seed(self.dropout_seed + 1_000_003 * (args.process_index + 1))
            self._mark = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        now = time.perf_counter()
        dt = now - (self._mark if self._mark is not None else now)
        self.elapsed += dt
        self.session_seconds += dt
        self._mark = now
        if state.global_step >= state.max_steps:
            control.should_log = True  # the last step is always logged
            # checkpointed only when kept (a later --resume with more steps continues from it); the final
            # model is saved by run.train either way
            control.should_save = self.save_last
        return control

    def on_log(self, args, state, control, logs=None, **kwargs):
        logs = logs or {}
        if "loss" not in logs or "train_loss" in logs:  # the end-of-training summary is not a step row
            return
        lm = logs.get("lm_loss", logs["loss"])
        lbc = logs.get("lbc_loss")
        self.session_tokens = state.num_input_tokens_seen - (self._tokens_at_start or 0)
        row = {"step": state.global_step, "loss": lm + (lbc or 0.0), "lm_loss": lm, "lbc_loss": lbc,
               **({"kl_loss": logs["kl_loss"]} if "kl_loss" in logs else {}),
               "lr": logs.get("learning_rate"), "grad_norm": logs.get("grad_norm"),
               "tokens": int(state.num_input_tokens_seen), "elapsed": round(self.elapsed, 3)}
        self.rows = (self.rows + [row])[-10:]
        if self.is_main:
            append_jsonl(self.log_path, row)
        self._mark = time.perf_counter()

    def on_save(self, args, state, control, **kwargs):
        folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        if self.trainer is not None:
            self.trainer.accelerator.wait_for_everyone()  # every rank's files are in place
        if self.is_main:
            write_json_atomic(folder / STATE_FILE, {"step": state.global_step, "elapsed": self.elapsed, **self.meta})
        self._mark = time.perf_counter()


class SnapshotCallback(TrainerCallback):
    """``train.snapshot_steps``: after each listed optimizer step, ``save(folder)`` writes a loadable fine-tuned
    folder ``<snapshots>/step-<N>/`` (rank 0; the saver writes atomically). A folder already there (a run resumed
    past that step: resume is bit-exact, so it holds the same weights) is kept."""

    def __init__(self, steps: list[int], folder: Path, save, is_main: bool):
        self.steps, self.folder, self.save, self.is_main = set(steps), folder, save, is_main

    def on_step_end(self, args, state, control, **kwargs):
        dest = self.folder / f"step-{state.global_step}"
        if self.is_main and state.global_step in self.steps and not dest.exists():
            self.save(dest)


def complete_checkpoints(output_dir: Path) -> list[Path]:
    """The run's complete checkpoints (those with ``retain_state.json``), oldest first."""
    root = Path(output_dir) / CHECKPOINTS
    if not root.is_dir():
        return []
    found = []
    for p in root.iterdir():
        name, _, step = p.name.partition("-")
        if p.is_dir() and name == "checkpoint" and step.isdigit() and (p / STATE_FILE).is_file():
            found.append((int(step), p))
    return [p for _, p in sorted(found)]


META_ADDED = {"sort_by_length": False}
"""Data-order settings added to ``retain_state.json`` later, with the value older checkpoints had."""


def check_resume(folder: Path, meta: dict) -> dict:
    """``retain_state.json`` of ``folder``; raises when a setting that fixes the data order changed."""
    saved = json.loads((folder / STATE_FILE).read_text(encoding="utf-8"))
    for key, value in meta.items():
        if saved.get(key, META_ADDED.get(key)) != value:
            raise RetainError(
                f"{folder}: {key} was {saved.get(key)!r} when saved, now {value!r}; resume with the "
                "same recipe and process count, or start a new output_dir"
            )
    return saved


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
