"""LoRAMoE speed: one adapted layer (forward + backward) and whole-model training, in one run.

    python benchmarks/bench_loramoe.py [--reps 7] [--model-steps 2] [--skip-model] [--threads 1]

Layer: a frozen ``nn.Linear`` at SmolLM2's FFN shape (576 -> 1536, 8 x 128 tokens) and at a 7B FFN shape
(4096 -> 11008, 64 tokens), input requiring grad as inside a network. Variants: the base layer alone,
fused LoRAMoE (E=6, r=4 and E=8, r=4), the per-expert loop (the paper's formula, one LoRA at a time),
and PEFT LoRA of the same total rank E*r. Targets: fused <= 1.2x PEFT LoRA; loop >= 2.5x fused at E=8.
The "adapter" column subtracts the frozen layer's own time (what the adapter adds).

Model: training steps/s on SmolLM2-135M (fp32, batch 4 x 128), LoRAMoE (defaults, FFN targets, LBC on)
vs PEFT LoRA (r=8 and r=24, same targets). Target: LoRAMoE >= 0.8x LoRA tokens/s.

The machine is shared and noisy: variants are interleaved within each repetition and medians reported.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch
import torch.nn as nn
import torch.nn.functional as F


class LoopMoE(nn.Module):
    """Reference: y = W0 x + sum_e g_e(x) (alpha/r) B_e A_e x with a Python loop over experts."""

    def __init__(self, base: nn.Linear, experts: int, rank: int, alpha: float = 32.0):
        super().__init__()
        self.base = base
        self.A = nn.ParameterList([nn.Parameter(torch.randn(rank, base.in_features) * 0.01) for _ in range(experts)])
        self.B = nn.ParameterList([nn.Parameter(torch.randn(base.out_features, rank) * 0.01) for _ in range(experts)])
        self.router = nn.Linear(base.in_features, experts, bias=False)
        self.scaling = alpha / rank

    def forward(self, x):
        y = self.base(x)
        g = torch.softmax(self.router(x).float(), dim=-1).to(x.dtype)
        for e in range(len(self.A)):
            y = y + g[..., e:e + 1] * self.scaling * F.linear(F.linear(x, self.A[e]), self.B[e])
        return y


def _layer_variants(d_in: int, d_out: int):
    from peft import LoraConfig, inject_adapter_in_model

    from retain.adapters.loramoe import LoRAMoELinear

    def base():
        return nn.Linear(d_in, d_out, bias=False).requires_grad_(False)

    def fused(e):
        m = LoRAMoELinear(base(), e, 4, 32.0, 0.0)
        nn.init.normal_(m.lora_B, std=0.01)
        return m

    def lora(r):
        holder = nn.Module()
        holder.proj = base()
        inject_adapter_in_model(LoraConfig(r=r, lora_alpha=2 * r, lora_dropout=0.0, target_modules=["proj"]), holder)
        return holder.proj

    return {
        "base (frozen)": base(),
        "fused E=6 r=4": fused(6), "loop E=6 r=4": LoopMoE(base(), 6, 4), "PEFT LoRA r=24": lora(24),
        "fused E=8 r=4": fused(8), "loop E=8 r=4": LoopMoE(base(), 8, 4), "PEFT LoRA r=32": lora(32),
    }


def _fwd_bwd(module: nn.Module, x: torch.Tensor) -> None:
    module.zero_grad(set_to_none=True)
    x.grad = None
    module(x).sum().backward()


def bench_layer(name: str, d_in: int, d_out: int, tokens: int, reps: int, inner: int) -> dict[str, float]:
    torch.manual_seed(0)
    variants = _layer_variants(d_in, d_out)
    x = torch.randn(tokens // 128 if tokens >= 128 else 1, min(tokens, 128), d_in, requires_grad=True)
    for m in variants.values():  # warm-up
        _fwd_bwd(m, x)
    times: dict[str, list[float]] = {k: [] for k in variants}
    for _ in range(reps):
        for k, m in variants.items():  # interleaved: every variant sees the same machine load
            t0 = time.perf_counter()
            for _ in range(inner):
                _fwd_bwd(m, x)
            times[k].append((time.perf_counter() - t0) / inner * 1e3)
    med = {k: statistics.median(v) for k, v in times.items()}
    b = med["base (frozen)"]
    print(f"\n## {name}: {d_in} -> {d_out}, {x.shape[0] * x.shape[1]} tokens, forward+backward, "
          f"median of {reps} (ms)\n")
    print("| variant | total ms | adapter ms (total - base) |")
    print("|---|---:|---:|")
    for k, v in med.items():
        print(f"| {k} | {v:.2f} | {v - b:.2f} |")
    noise = 0.03 * b  # adapter times below ~3% of the frozen layer are within run-to-run noise here

    def ratio(num: float, den: float) -> str:
        return f"{num / den:.2f}x" if den > noise else f"n/a (denominator {den:.1f} ms is within noise)"

    for e, r in ((6, 24), (8, 32)):
        fu, lo, pe = med[f"fused E={e} r=4"], med[f"loop E={e} r=4"], med[f"PEFT LoRA r={r}"]
        print(f"\nE={e}: fused / PEFT LoRA r={r} = {fu / pe:.2f}x total, adapter {ratio(fu - b, pe - b)} "
              f"(target <= 1.2); loop / fused = {lo / fu:.2f}x total, adapter {ratio(lo - b, fu - b)}"
              + (" (target >= 2.5)" if e == 8 else ""))
    return med


def bench_model(steps: int, reps: int, batch: int = 4, length: int = 128) -> None:
    from transformers import AutoModelForCausalLM

    from retain.adapters.config import LoRAConfig, LoRAMoEConfig
    from retain.adapters.loramoe import lbc_loss, sample_types
    from retain.adapters.methods import prepare_model
    from retain.assets import smollm2_path

    path = str(smollm2_path())
    torch.manual_seed(0)
    ids = torch.randint(0, 49152, (batch, length))
    mask = torch.ones_like(ids)
    types = torch.tensor([1, 0] * (batch // 2))
    setups = {
        "LoRAMoE E=6 r=4 (+LBC)": ("loramoe", dict(loramoe=LoRAMoEConfig())),
        "PEFT LoRA r=8": ("lora", dict(lora=LoRAConfig(r=8, alpha=16))),
        "PEFT LoRA r=24": ("lora", dict(lora=LoRAConfig(r=24, alpha=48))),
    }
    models, opts = {}, {}
    for k, (method, kw) in setups.items():
        m = prepare_model(AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32), method, **kw)
        m.train()
        models[k] = m
        opts[k] = torch.optim.AdamW([p for p in m.parameters() if p.requires_grad], lr=1e-4)

    def step(k):
        m = models[k]
        with sample_types(m, types):
            out = m(input_ids=ids, attention_mask=mask, labels=ids, use_cache=False)
        aux = lbc_loss(m)
        loss = out.loss + (aux if aux is not None else 0)
        opts[k].zero_grad(set_to_none=True)
        loss.backward()
        opts[k].step()

    for k in models:
        step(k)  # warm-up
    times: dict[str, list[float]] = {k: [] for k in models}
    for _ in range(reps):
        for k in models:
            t0 = time.perf_counter()
            for _ in range(steps):
                step(k)
            times[k].append((time.perf_counter() - t0) / steps)
    tps = {k: batch * length / statistics.median(v) for k, v in times.items()}
    print(f"\n## SmolLM2-135M training, fp32, batch {batch} x {length}, median of {reps} x {steps} steps\n")
    print("| setup | tokens/s | LoRAMoE / this |")
    print("|---|---:|---:|")
    moe = tps["LoRAMoE E=6 r=4 (+LBC)"]
    for k, v in tps.items():
        print(f"| {k} | {v:.0f} | {moe / v:.2f} |")
    print("\nTarget: LoRAMoE >= 0.8x LoRA tokens/s.")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=7)
    ap.add_argument("--inner", type=int, default=3, help="forward+backward calls per timed sample (layer)")
    ap.add_argument("--model-steps", type=int, default=2)
    ap.add_argument("--model-reps", type=int, default=3)
    ap.add_argument("--skip-model", action="store_true")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads (default 1: on a shared, oversubscribed CPU, multi-threaded small ops "
                         "stall in thread barriers and the timings measure the scheduler, not the work)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(f"# bench_loramoe (torch {torch.__version__}, {torch.get_num_threads()} threads, CPU)")
    bench_layer("SmolLM2 FFN", 576, 1536, 1024, args.reps, args.inner)
    bench_layer("7B FFN", 4096, 11008, 64, args.reps, args.inner)
    if not args.skip_model:
        bench_model(args.model_steps, args.model_reps)


if __name__ == "__main__":
    main()
