"""Resumable checkpoints: everything needed to continue a run bit-for-bit.

A checkpoint is a folder ``checkpoints/step_000123/`` written atomically (temp dir + rename), so a
folder that exists is complete; a run killed mid-save leaves only a hidden temp dir.

- ``trainable.safetensors``: the trainable parameters by name (the frozen base is reloaded from the
  base model, so a LoRA checkpoint is megabytes, not the whole model).
- ``optimizer.pt`` / ``scheduler.pt``: their ``state_dict()`` (loaded with ``weights_only=True``).
- ``rng.pt``: every rank's torch RNG state (CPU and CUDA), so dropout masks after the resume are the
  ones the uninterrupted run would have drawn.
- ``state.json``: the step (which is also the data position: step ``s`` always reads stream positions
  ``[s*G, (s+1)*G)`` of the seeded epoch permutations, see :mod:`retain.training.trainer`), tokens
  seen, elapsed seconds and the settings that must not change across a resume.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from retain.errors import RetainError
from retain.utils.io import atomic_path

_STEP_DIR = re.compile(r"^step_(\d+)$")


def checkpoint_dir(output_dir: Path) -> Path:
    return Path(output_dir) / "checkpoints"


def list_checkpoints(output_dir: Path) -> list[Path]:
    """Complete checkpoints, oldest first."""
    root = checkpoint_dir(output_dir)
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if p.is_dir() and (m := _STEP_DIR.match(p.name))]
    return [p for _, p in sorted(found)]


def rng_state() -> dict[str, Any]:
    state = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["cpu"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def trainable_state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().contiguous().cpu() for n, p in model.named_parameters() if p.requires_grad}


def save_checkpoint(
    output_dir: Path, step: int, model: nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any,
    rng_states: list[dict], state: dict, keep: int = 1,
) -> Path:
    """Write checkpoint ``step`` atomically and prune to the ``keep`` most recent ones."""
    from safetensors.torch import save_file

    target = checkpoint_dir(output_dir) / f"step_{step:06d}"
    with atomic_path(target) as tmp:
        tmp.mkdir(parents=True)
        save_file(trainable_state(model), str(tmp / "trainable.safetensors"))
        torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
        torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
        torch.save(rng_states, tmp / "rng.pt")
        (tmp / "state.json").write_text(json.dumps({**state, "step": step}, indent=2) + "\n", encoding="utf-8")
    for old in list_checkpoints(output_dir)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return target


def load_checkpoint(
    folder: Path, model: nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any, rank: int,
) -> dict:
    """Restore params, optimizer, scheduler and this rank's RNG from ``folder``; returns state.json."""
    from safetensors.torch import load_file

    state = json.loads((folder / "state.json").read_text(encoding="utf-8"))
    tensors = load_file(str(folder / "trainable.safetensors"))
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    if set(params) != set(tensors):
        missing, extra = sorted(set(params) - set(tensors))[:3], sorted(set(tensors) - set(params))[:3]
        raise RetainError(
            f"{folder}: checkpoint does not match the model (missing {missing}, unexpected {extra}); "
            "was the recipe's method or model changed? Resume with the same recipe or start a new output_dir"
        )
    with torch.no_grad():
        for n, p in params.items():
            p.copy_(tensors[n].to(p.device, p.dtype))
    optimizer.load_state_dict(torch.load(folder / "optimizer.pt", map_location="cpu", weights_only=True))
    scheduler.load_state_dict(torch.load(folder / "scheduler.pt", weights_only=True))
    rngs = torch.load(folder / "rng.pt", weights_only=True)
    if len(rngs) != state.get("world_size", 1):
        raise RetainError(f"{folder}: saved by {len(rngs)} processes; resume with the same number of processes")
    set_rng_state(rngs[rank])
    return state
