"""``retain routing``: where a trained LoRAMoE adapter sends tokens, by sample type.

For every adapted layer and every sample type (world 1, task 0, unknown -1) it reports the mean router
mass per expert over the real tokens of that type (padding excluded):

    mass[layer, type, e] = sum over tokens t of samples of that type of g_e(x_t) / number of such tokens

and the share on the world-knowledge group (experts 0 .. world_experts-1). A working LBC shows world
samples with a clearly higher world-group share than task samples.

- A measurement of a trained model on data, so it lives in evaluation (it loads the model through
  :func:`retain.models.load_model`; ``retain.adapters`` sits below ``retain.models``).
- Reuses the training-time recording (:func:`~retain.adapters.loramoe.sample_types`), so the numbers come
  from the same Q the LBC sees; the forward runs under ``torch.no_grad``.
- Examples are encoded and padded by training's own code (:func:`retain.data.collate.encode_chat`,
  :class:`~retain.data.collate.Collator`), so the tokens are exactly those training saw.
- Writes ``routing.json`` (all numbers), ``routing.md`` (table per layer) and ``routing.png`` (heatmaps:
  layers x experts, one panel per sample type); prints a rich summary table.
"""

from __future__ import annotations

import logging
from pathlib import Path

from retain.evaluation.config import RoutingReportConfig
from retain.errors import RetainError
from retain.utils.io import iter_jsonl_lines, write_json_atomic, write_text_atomic

log = logging.getLogger(__name__)
TYPE_NAMES = {1: "world", 0: "task", -1: "unknown"}


def _read_rows(path: str, limit: int) -> list[tuple[list[dict], int]]:
    from retain.data.types import as_sample_type

    rows = []
    for i, row in iter_jsonl_lines(path):  # i: the line in the file (blank lines counted)
        if len(rows) >= limit:
            break
        messages = row.get("messages")
        if not isinstance(messages, list) or not messages:
            raise RetainError(f"{path}:{i}: expected a non-empty 'messages' list")
        rows.append((messages, as_sample_type(row.get("sample_type"), where=f"{path}:{i}")))
    if not rows:
        raise RetainError(f"{path}: no examples; give a JSONL file of {{'messages': [...], 'sample_type': 1|0|-1}}")
    return rows


def routing_statistics(model, tokenizer, rows: list[tuple[list[dict], int]], batch_size: int = 8,
                       max_length: int = 512, device: str = "cpu", progress: bool = True) -> dict:
    """Mean router mass per layer, sample type and expert over ``rows`` ((messages, sample_type) pairs).

    Returns ``{"layers": [names], "types": {name: {"tokens": n, "samples": k, "mass": [[E floats] per layer]}}}``.
    """
    import torch

    from retain.adapters.loramoe import last_router_mass, loramoe_config, sample_types
    from retain.data.collate import Collator, encode_chat
    from retain.models import pad_token_id
    from retain.utils.console import tqdm

    cfg = loramoe_config(model)
    if cfg is None:
        raise RetainError("routing report: the model has no LoRAMoE layers")
    collate = Collator(pad_token_id(tokenizer))
    sums: dict[int, torch.Tensor] = {}
    tokens: dict[int, int] = {}
    samples: dict[int, int] = {}
    names: list[str] = []
    model.eval()
    for start in tqdm(range(0, len(rows), batch_size), desc="routing", unit="batch", disable=not progress):
        chunk = rows[start:start + batch_size]
        # right padding, as in training: real tokens never attend to pads (causal)
        batch = collate([{**encode_chat(tokenizer, m, max_length), "sample_type": t} for m, t in chunk])
        types, mask = batch["sample_type"], batch["attention_mask"]
        with torch.no_grad(), sample_types(model, types):
            model(input_ids=batch["input_ids"].to(device), attention_mask=mask.to(device), use_cache=False)
        records = last_router_mass(model)
        names = [n for n, _ in records]
        q = torch.stack([r.float().cpu() for _, r in records])  # (layers, E, B)
        for t in types.unique().tolist():
            sel = types == t
            sums[t] = sums.get(t, 0) + q[:, :, sel].sum(-1)
            tokens[t] = tokens.get(t, 0) + int(mask[sel].sum())
            samples[t] = samples.get(t, 0) + int(sel.sum())
    out = {"layers": names, "num_experts": cfg.num_experts, "world_experts": cfg.num_world_experts, "types": {}}
    for t in sorted(sums, reverse=True):
        mass = sums[t] / max(tokens[t], 1)
        out["types"][TYPE_NAMES[t]] = {"tokens": tokens[t], "samples": samples[t], "mass": mass.tolist()}
    return out


def world_share(stats: dict, type_name: str) -> list[float]:
    """Per layer: share of the router mass that samples of ``type_name`` put on the world group."""
    w = stats["world_experts"]
    return [sum(row[:w]) / max(sum(row), 1e-12) for row in stats["types"][type_name]["mass"]]


def markdown_table(stats: dict) -> str:
    """Per layer, each sample type's router-mass share on the world group (and the world - task gap)."""
    from retain.utils.tables import md_table

    types = list(stats["types"])
    gap = {"world", "task"} <= set(types)
    shares = {t: world_share(stats, t) for t in types}
    cells = []
    for i, name in enumerate(stats["layers"]):
        cells.append([name, *(f"{shares[t][i]:.3f}" for t in types)]
                     + ([f"{shares['world'][i] - shares['task'][i]:+.3f}"] if gap else []))
    return md_table(["layer", *(f"{t} -> world group" for t in types)] + (["gap (world - task)"] if gap else []), cells)


def heatmap(stats: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    types = list(stats["types"])
    n_layers = len(stats["layers"])
    fig, axes = plt.subplots(1, len(types), figsize=(2.5 + 2.2 * len(types), 1.5 + 0.18 * n_layers), squeeze=False)
    vmax = max(max(max(r) for r in stats["types"][t]["mass"]) for t in types)
    for ax, t in zip(axes[0], types):
        im = ax.imshow(np.array(stats["types"][t]["mass"]), aspect="auto", cmap="viridis", vmin=0, vmax=vmax)
        ax.axvline(stats["world_experts"] - 0.5, color="white", lw=1.5)  # world | task group boundary
        ax.set_title(f"{t} samples ({stats['types'][t]['samples']})")
        ax.set_xlabel("expert (world group | task group)")
        ax.set_xticks(range(stats["num_experts"]))
        ax.set_yticks(range(n_layers))
        ax.set_yticklabels(stats["layers"] if ax is axes[0][0] else [], fontsize=5)
    fig.colorbar(im, ax=axes[0].tolist(), label="mean router mass per token")
    fig.savefig(path, format="png", dpi=130, bbox_inches="tight")
    plt.close(fig)


def _print_summary(stats: dict) -> None:
    from rich.table import Table

    from retain.utils.console import stdout_console

    table = Table(title="LoRAMoE routing: share of router mass on the world group (mean over layers)")
    table.add_column("sample type")
    table.add_column("samples", justify="right")
    table.add_column("tokens", justify="right")
    table.add_column("world-group share", justify="right")
    for t, v in stats["types"].items():
        share = world_share(stats, t)
        table.add_row(t, str(v["samples"]), str(v["tokens"]), f"{sum(share) / len(share):.3f}")
    stdout_console().print(table)  # a result: stdout


def run_routing_report(cfg: RoutingReportConfig) -> int:
    from retain.adapters.methods import folder_kind
    from retain.models import load_model, resolve_device

    if folder_kind(cfg.adapter_dir) != "loramoe":
        raise RetainError(f"{cfg.adapter_dir}: not a LoRAMoE adapter folder (adapter_config.json method 'loramoe')")
    device = resolve_device(cfg.device)
    rows = _read_rows(cfg.data, cfg.max_examples)
    model, tokenizer = load_model(cfg.adapter_dir, base_model=cfg.base_model, device=device, key="--adapter_dir")
    stats = routing_statistics(model, tokenizer, rows, cfg.batch_size, cfg.max_length, device)
    stats["adapter"] = str(cfg.adapter_dir)
    stats["data"] = str(cfg.data)
    for t in stats["types"]:
        stats["types"][t]["world_share"] = world_share(stats, t)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out / "routing.json", stats)
    write_text_atomic(out / "routing.md", "# LoRAMoE routing report\n\n"
                      f"Adapter `{cfg.adapter_dir}`, data `{cfg.data}`. Share of router mass on the world "
                      f"group (experts 0..{stats['world_experts'] - 1} of {stats['num_experts']}).\n\n"
                      + markdown_table(stats))
    from retain.utils.io import atomic_path

    with atomic_path(out / "routing.png", suffix=".png") as tmp:
        heatmap(stats, tmp)
    _print_summary(stats)
    log.info("wrote %s", out)
    return 0
