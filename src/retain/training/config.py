"""Training options: one typed dataclass tree that a YAML recipe maps onto (torch-free).

- ``Recipe`` is the whole experiment: ``model``, ``method`` (+ ``lora`` / ``loramoe``), ``datasets``,
  ``mixture``, ``optim``, ``train`` (a :class:`TrainLoopConfig`). A YAML recipe has exactly these keys;
  it goes through the same parser as the flags (:mod:`retain.options`), so ``retain train --help``,
  the YAML file and ``Recipe(...)`` in Python are one schema.
- ``TrainCommand`` is the ``retain train`` command: a recipe plus how to run it (``--resume``).
- Each section checks its own values in ``__post_init__``; ``Recipe.__post_init__`` checks what spans
  sections (the LBC needs every dataset's type). Python callers (the demo) get the CLI's errors.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar, Literal, Optional

from retain.adapters.config import LoRAConfig, LoRAMoEConfig
from retain.errors import RetainError
from retain.evaluation.config import EvalConfig


@dataclass
class ModelConfig:
    """The base model."""

    name: str = "smollm2"
    """Local HF folder, hub id, or 'smollm2' (the embedded SmolLM2-135M-Instruct)."""
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    """Weights dtype. float32 on CPU; bfloat16 on recent GPUs."""
    device: str = "auto"
    """'auto' (cuda if available), 'cpu' or 'cuda'. Under torchrun each rank uses cuda:LOCAL_RANK."""
    trust_remote_code: bool = False
    """Allow model code from the hub (off unless you trust the model)."""
    allow_pickle: bool = False
    """Load pickle weights (pytorch_model.bin) when the model has no safetensors; unpickling can run code,
    so only for a model you trust."""
    gradient_checkpointing: bool = False
    """Recompute activations in the backward pass (less memory, ~30% slower)."""


@dataclass
class DatasetSpec:
    """One training data source."""

    path: str
    """A .jsonl / .json file, or 'builtin:<name>' (e.g. builtin:skills or builtin:medmcqa, the train split of an offline set)."""
    format: Literal["auto", "messages", "sharegpt", "alpaca", "prompt_completion", "text"] = "auto"
    """Record format; 'auto' detects it from the first record's keys. 'text' ({"text": ...}, e.g. TG-PT's pt.jsonl): loss on every token."""
    weight: Optional[float] = None
    """Share of the final mixture (normalised over datasets). Leave out everywhere to use each example once."""
    type: Optional[Literal["world", "task"]] = None
    """Sample type for LoRAMoE's LBC: 'world' (general knowledge, e.g. the TG corpus) or 'task'."""
    limit: Optional[int] = None
    """Read at most this many records (file order) before mixing."""
    image_folder: Optional[str] = None
    """Folder that relative image paths (LLaVA 'image', messages image parts) start from; default: the
    data file's folder. Images need an image-text-to-text model (model.name an MLLM folder)."""
    eval_split: Optional[float] = None
    """Hold out part of this dataset, never trained on: a share (0 < x < 1) or a count of records (a whole
    number >= 1), a seeded sample. Written to <output_dir>/heldout.jsonl; the Trainer reports its
    validation loss (eval_loss in train_result.json), and an eval: section scores it as the domain
    (domain: heldout)."""

    def __post_init__(self) -> None:
        x = self.eval_split
        if x is not None and not (0 < x < 1 or (x >= 1 and float(x).is_integer())):
            raise RetainError(f"datasets ({self.path}).eval_split={x}: give a share in (0, 1) or a whole number "
                              "of records >= 1")


LOSS_BALANCES = ("token", "example", "type")
"""Values of ``mixture.loss_balance`` (:class:`retain.training.trainer.LossBalance` computes them)."""


@dataclass
class MixtureConfig:
    """How datasets combine (see retain.data.mixture for the rule and a worked example)."""

    size: Optional[int] = None
    """Examples in the mixture; None = the largest size that repeats no example."""
    allow_repeat: bool = False
    """Allow a source to be repeated when its share needs more examples than it has."""
    loss_balance: Literal["token", "example", "type"] = "token"
    """How an optimizer step's examples share its loss (docs/training.md, "The loss balance"). 'token': every
    assistant token of the step weighs the same (the step's summed loss / its tokens), so long examples (a TG
    dialogue, ~88 tokens) outweigh short ones (an SST-2 answer, ~4). 'example': each example's mean token loss,
    averaged over the step's examples. 'type': the token mean within each sample type in the step, weighted by
    the mixture shares of the types (the sum of their datasets' weights), renormalised over the types the step
    holds: a weight is then the type's share of the gradient. 'type' needs every dataset's type."""

    def __post_init__(self) -> None:
        if self.loss_balance not in LOSS_BALANCES:
            raise RetainError(f"mixture.loss_balance={self.loss_balance!r}: expected one of {', '.join(LOSS_BALANCES)}")


@dataclass
class OptimConfig:
    """AdamW and the learning-rate schedule."""

    lr: float = 2e-5
    """Peak learning rate."""
    weight_decay: float = 0.0
    """AdamW decoupled weight decay (not applied to biases and norm weights)."""
    betas: tuple[float, float] = (0.9, 0.999)
    """AdamW betas."""
    schedule: Literal["cosine", "linear", "constant"] = "cosine"
    """Decay after warmup: cosine or linear to 0, or constant."""
    warmup_steps: int = 0
    """Linear warmup steps; 0 = use warmup_ratio."""
    warmup_ratio: float = 0.0
    """Warmup as a fraction of the total optimizer steps (used when warmup_steps is 0)."""
    max_grad_norm: Optional[float] = 1.0
    """Clip the global gradient norm to this; None disables clipping."""

    def __post_init__(self) -> None:
        if not self.lr > 0:
            raise RetainError(f"optim.lr={self.lr}: must be > 0")
        if not 0 <= self.warmup_ratio < 1:
            raise RetainError(f"optim.warmup_ratio={self.warmup_ratio}: must be in [0, 1)")
        for key in ("weight_decay", "warmup_steps", "max_grad_norm"):
            value = getattr(self, key)
            if value is not None and not value >= 0:  # `not >=` also refuses NaN
                off = " (null turns clipping off)" if key == "max_grad_norm" else ""
                raise RetainError(f"optim.{key}={value}: must be >= 0{off}")
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            raise RetainError(f"optim.betas={list(self.betas)}: AdamW needs two values in [0, 1), e.g. [0.9, 0.999]")


@dataclass
class TrainLoopConfig:
    """The ``train:`` section of a recipe: loop length, batching, checkpoints and outputs."""

    output_dir: str = "runs/train"
    """Run folder: model/, train_log.jsonl, loss.png, checkpoints/, train_result.json."""
    max_steps: Optional[int] = None
    """Optimizer steps; None = derived from epochs."""
    epochs: float = 1.0
    """Passes over the mixture (used when max_steps is None)."""
    batch_size: int = 8
    """Sequences per forward pass per process."""
    grad_accum: int = 1
    """Forward passes per optimizer step. Global batch = batch_size * grad_accum * processes."""
    sort_by_length: bool = False
    """Sort each optimizer step's examples by token count, longest first, before they are cut into the
    step's forward passes (grad_accum × processes of batch_size). The step trains on the same examples and
    the loss is normalised over the whole step (every mixture.loss_balance), so the gradient is the same up
    to float rounding (dropout masks differ); padding shrinks. Useful only with grad_accum > 1 or several processes:
    e.g. batch_size 4 × grad_accum 2 sorted instead of batch_size 8. LoRAMoE's LBC, like any per-batch
    loss, is then computed per forward pass."""
    max_length: int = 512
    """Truncate each chat-formatted example to this many tokens."""
    bf16_autocast: bool = False
    """Forward passes under torch.autocast(bfloat16) with fp32 weights and optimizer (GPUs with bf16)."""
    seed: int = 0
    """Seeds the mixture, the shuffling of every epoch, adapter init and dropout."""
    save_every: int = 0
    """Checkpoint every N optimizer steps (0 = none); --resume continues from the last complete one."""
    keep_checkpoints: int = 1
    """How many recent checkpoints to keep while training."""
    keep_final_checkpoint: bool = False
    """Keep checkpoints/ after training finishes, with a checkpoint of the final step (by default only the final
    model stays). A kept final checkpoint lets --resume with a larger train.max_steps continue the run."""
    snapshot_steps: list[int] = field(default_factory=list)
    """Also save a loadable fine-tuned folder (the format of ``model/``: any command that takes a fine-tune
    takes it) at these optimizer steps, to ``snapshots/step-<N>/``: to measure forgetting as training sees
    more data (``benchmarks/learn_and_keep.py``). Kept after training; not with FSDP / DeepSpeed."""
    log_every: int = 1
    """Write a train_log.jsonl row every N steps."""
    progress: bool = True
    """Show a tqdm progress bar."""
    report_to: list[str] = field(default_factory=list)
    """Logging integrations of the HF Trainer (tensorboard, wandb, ...); empty = train_log.jsonl only."""
    kl_anchor: float = 0.0
    """λ of KL-anchored fine-tuning: adds λ · KL(base ‖ model) per training token to the loss (0 = off).
    Base logits: adapters disabled (lora, loramoe) or a frozen copy of the base (full: one more model in
    memory). Logged as kl_loss (nats/token). See retain.training.anchor."""

    def __post_init__(self) -> None:
        if any(isinstance(n, bool) or not isinstance(n, int) or n < 1 for n in self.snapshot_steps):
            raise RetainError(f"train.snapshot_steps={self.snapshot_steps}: give optimizer steps >= 1, e.g. [6, 12]")
        for key in ("batch_size", "grad_accum", "max_length", "log_every", "keep_checkpoints"):
            if getattr(self, key) < 1:
                raise RetainError(f"train.{key}={getattr(self, key)}: must be >= 1")
        if self.max_steps is not None and self.max_steps < 1:
            raise RetainError(f"train.max_steps={self.max_steps}: must be >= 1 (or leave it out to use epochs)")
        if self.max_steps is None and not self.epochs > 0:
            raise RetainError(f"train.epochs={self.epochs}: must be > 0")
        if self.save_every < 0:
            raise RetainError(f"train.save_every={self.save_every}: must be >= 0")
        if self.kl_anchor < 0:
            raise RetainError(f"train.kl_anchor={self.kl_anchor}: must be >= 0 (0 turns the anchor off)")
        if not 0 <= self.seed < 2**32:  # numpy's seed range (the Trainer seeds numpy with it)
            raise RetainError(f"train.seed={self.seed}: must be in 0..{2**32 - 1}")


TrainConfig = TrainLoopConfig
"""Deprecated name of :class:`TrainLoopConfig` (it is one section of a recipe, not the command's config:
that is :class:`TrainCommand`)."""


@dataclass
class Recipe:
    """A complete fine-tuning recipe (the YAML file's top level)."""

    config_file_kind: ClassVar[str] = "recipe"

    datasets: list[DatasetSpec] = field(default_factory=list)
    """Training data sources, mixed by weight (at least one)."""
    model: ModelConfig = field(default_factory=ModelConfig)
    """Base model."""
    method: Literal["full", "lora", "loramoe", "projector"] = "lora"
    """full: all weights; lora: PEFT LoRA; loramoe: LoRA experts + router (+ LBC), backbone frozen;
    projector: only an image-text-to-text model's projector (LLaVA stage 1). On such a model the vision
    tower is frozen under every method (retain.multimodal.methods)."""
    lora: LoRAConfig = field(default_factory=LoRAConfig)
    """LoRA options (method: lora)."""
    loramoe: LoRAMoEConfig = field(default_factory=LoRAMoEConfig)
    """LoRAMoE options (method: loramoe)."""
    mixture: MixtureConfig = field(default_factory=MixtureConfig)
    """Dataset mixing."""
    optim: OptimConfig = field(default_factory=OptimConfig)
    """Optimizer and schedule."""
    train: TrainLoopConfig = field(default_factory=TrainLoopConfig)
    """Loop, checkpoints, outputs."""
    eval: Optional[EvalConfig] = None
    """Evaluate the trained model against its base when training ends (``retain eval``'s options; the base
    is model.name, the tuned folder the run's model/, the output <output_dir>/eval unless eval.out is set).
    With eval.gate, a run that fails the gate exits 1 with its folder intact. See docs/eval.md."""

    @property
    def uses_lbc(self) -> bool:
        return self.method == "loramoe" and self.loramoe.lbc_beta > 0

    def __post_init__(self) -> None:
        """What spans sections (each section checks its own values)."""
        if not self.datasets:
            raise RetainError("datasets: empty; list at least one dataset (in the recipe, or --datasets '[{path: x.jsonl}]')")
        for i, d in enumerate(self.datasets):
            if d.limit is not None and d.limit < 1:
                raise RetainError(f"datasets[{i}].limit={d.limit}: must be >= 1 (the records to read), or leave "
                                  "it out to read them all")
        if self.mixture.loss_balance == "type":
            for i, d in enumerate(self.datasets):
                if d.type is None:
                    raise RetainError(
                        f"datasets[{i}] ({d.path}): missing 'type' (world or task); mixture.loss_balance: type "
                        "shares the loss by sample type, so every dataset needs one (or use token or example)"
                    )
        if self.uses_lbc:
            for i, d in enumerate(self.datasets):
                if d.type is None:
                    raise RetainError(
                        f"datasets[{i}] ({d.path}): missing 'type' (world or task); the LBC of method loramoe "
                        "needs every dataset's type (or set loramoe.lbc_beta: 0)"
                    )

        if self.eval is not None:
            if self.eval.tuned:
                raise RetainError("eval.tuned: the run's own model/ folder is evaluated; remove the key")
            if self.eval.domain == "heldout" and not any(d.eval_split for d in self.datasets):
                raise RetainError("eval.domain=heldout: no dataset holds out a split; set eval_split on a dataset "
                                  "(e.g. 0.2) or name another domain")
            if self.eval.base not in (EvalConfig.base, self.model.name):
                raise RetainError(f"eval.base={self.eval.base}: the run's base is model.name ({self.model.name}); "
                                  "remove eval.base")

    def validate(self) -> "Recipe":
        """Re-run every check (after changing fields in place); raises RetainError naming the key."""
        for section in (self.optim, self.train, self.lora, self.loramoe, self.model, self.mixture, *self.datasets):
            post = getattr(section, "__post_init__", None)
            if post is not None:
                post()
        self.__post_init__()
        return self


@dataclass
class TrainCommand(Recipe):
    """retain train RECIPE.yaml: fine-tune from a YAML recipe, with checkpoints and --resume.

    Every recipe key is also a flag that overrides the file: --optim.lr 1e-4, --train.max_steps 50,
    --loramoe.num_experts 4, --datasets '[{path: data.jsonl, type: task}]'. The recipe may also be given
    as --config RECIPE.yaml, or left out when the flags say everything."""

    deprecated_flags: ClassVar[dict[str, str]] = {"max_steps": "train.max_steps", "output_dir": "train.output_dir"}

    resume: bool = False
    """Continue from the last checkpoint in train.output_dir."""
