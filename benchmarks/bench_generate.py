"""Shared-prefix vs level-batched vs one-request-at-a-time generation on the same TG tree (SmolLM2-135M).

Run: ``python benchmarks/bench_generate.py [--levels 12,96 16,64] [--batch_size 64] [--threads 1]``

- The real tree expansion (``retain.generation.run.decompress``) grows one tree. Every backend call it
  makes (a level's question requests, a level's answers) is run three times, back to back, on one
  loaded model:
  * **shared-prefix**: the ``hf`` backend as shipped: each prefix shared by several conversations (a
    parent's dialogue) is prefilled once and its KV copied to the rows, with an LRU of prefixes kept
    across calls; its replies are what the tree keeps;
  * **level-batched**: the same backend with ``prefix_sharing=False``: all conversations of the call in
    length-sorted, left-padded batches of ``--batch_size``, each prompt prefilled in full;
  * **serial**: plain ``model.generate`` on one conversation at a time (no padding), which is what a
    per-node implementation does.
  All see the same prompts, budgets, sampling (temperature 0.7, top-p 0.95, top-k off) and stop tokens,
  and, being interleaved call by call, the same machine load. Sampled lengths differ, so the measure is
  completion tokens per second of generation time (dedup/embedding time is excluded from all three).
- Default tree ``[(12, 96), (16, 64)]``: 12 root questions + up to 192 follow-ups, plus the question lists
  (``question_tokens`` = 32 per requested question), which are part of the workload. Nodes counted are the
  answered ones (``nodes.jsonl``: roots + follow-ups). Parse failures and dedup thin the follow-ups by an
  amount that depends on the draw: ``[(8, 96), (12, 64)]`` and ``[(8, 96), (16, 64)]`` both gave 61 nodes
  (8 + 53, < 64); ``[(12, 96), (16, 64)]`` gave 136 (12 + 124) in the README's run.
- Where the time goes on CPU: every answer re-reads its root-to-parent dialogue (~200-250 prompt tokens
  for ~60 new ones); prefix sharing cuts the prompt tokens actually run ~6x (the "prefilled" column). What
  is left is decoding, compute-bound once batched on one contended thread (~2 x 135M FLOPs per token in
  every strategy), which caps the ratio over serial near level batching's (2.9x vs 2.3x in the README's
  run). Finished rows keep decoding until their batch ends (``generate``'s loop).
- ``--serial_every k`` runs the baseline on every k-th conversation only: its tokens/s does not depend
  on which requests it sees (no batching), and it is by far the slowest third.
- On a shared 2-core box, other processes change all numbers (load average printed); with the CPU
  oversubscribed, ``--threads 1`` avoids OpenMP threads spinning while their partner is descheduled.
- **GPU** (``--device cuda --dtype bfloat16``): the peak GPU memory of each strategy is printed (the
  first call's peak includes the weights). ``--random_config H,L,I`` measures a randomly initialised
  Llama of hidden size H, L layers and FFN width I with ``--model``'s tokenizer (where a real checkpoint
  cannot be had, e.g. a machine without the converted SmolLM2): a random model writes no question list
  and never stops, so every strategy decodes each request's full ``max_new_tokens``, and the replies the
  tree keeps are replaced by synthetic ones (a parseable list of distinct questions; an answer of as
  many words as the model generated tokens), so the tree grows to its configured shape; dedup is then
  exact only (no embedder load).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import tempfile
import time
from dataclasses import dataclass

import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from retain.generation.backends import BackendConfig, Completion, SamplingParams  # noqa: E402
from retain.generation.backends.hf_backend import HFBackend, attention_kernels  # noqa: E402
from retain.models import load_model  # noqa: E402


class SerialGenerate:
    """Baseline: one conversation per ``model.generate`` call, no batching, no padding."""

    def __init__(self, model, tokenizer, stop_ids: list[int], name: str):
        self.model, self.tokenizer, self.stop_ids, self.name = model, tokenizer, stop_ids, name

    @torch.inference_mode()
    def chat(self, conversations, params: SamplingParams) -> list[Completion]:
        out = []
        for i, conv in enumerate(conversations):
            enc = self.tokenizer.apply_chat_template(conv, add_generation_prompt=True, return_tensors="pt", return_dict=True)
            kw = dict(max_new_tokens=params.max_new_tokens, eos_token_id=self.stop_ids, pad_token_id=self.tokenizer.pad_token_id)
            if params.temperature > 0:
                kw.update(do_sample=True, temperature=params.temperature, top_p=params.top_p, top_k=0)
                torch.manual_seed((params.seed or 0) + i)
            else:
                kw.update(do_sample=False)
            with attention_kernels(self.model.device):  # the hf backend's kernels, so only batching differs
                seq = self.model.generate(**enc.to(self.model.device), **kw)[0, enc["input_ids"].shape[1]:].tolist()
            end = next((k for k, t in enumerate(seq) if t in self.stop_ids), None)
            gen = seq if end is None else seq[:end]
            out.append(Completion(self.tokenizer.decode(gen, skip_special_tokens=True).strip(), enc["input_ids"].shape[1],
                                  len(gen) + (end is not None), "stop" if end is not None else "length"))
        return out


@dataclass
class Tally:
    calls: int = 0
    conversations: int = 0
    tokens: int = 0
    seconds: float = 0.0

    def add(self, n: int, out: list[Completion], seconds: float) -> None:
        self.calls += 1
        self.conversations += n
        self.tokens += sum(c.completion_tokens for c in out)
        self.seconds += seconds

    @property
    def rate(self) -> float:
        return self.tokens / self.seconds if self.seconds else 0.0


class SyntheticReplies:
    """Stands in for a random model's text in what the tree keeps (``--random_config``): each question-list
    request gets a numbered list of distinct questions, each answer as many distinct words as the model
    generated tokens. Token counts (the measure) are the model's own."""

    def __init__(self):
        self.count = 0

    def __call__(self, conversations, out: list[Completion]) -> list[Completion]:
        import re

        fixed = []
        for conv, c in zip(conversations, out):
            m = re.search(r"numbered list of (\d+)", conv[-1]["content"])
            if m:
                qs = [f"What is the {self._word()} reason behind {self._word()} number {self._next()}?"
                      for _ in range(int(m.group(1)))]
                text = "\n".join(f"{i + 1}. {q}" for i, q in enumerate(qs))
            else:
                text = " ".join(f"{self._word()}{self._next()}" for _ in range(max(1, c.completion_tokens)))
            fixed.append(dataclasses.replace(c, text=text))
        return fixed

    def _next(self) -> int:
        self.count += 1
        return self.count

    def _word(self) -> str:
        words = ["main", "hidden", "early", "modern", "common", "physical", "social", "chemical", "practical"]
        return words[self.count % len(words)]


class Interleaved:
    """The tree's backend: each ``chat()`` call runs every strategy on the same conversations, back to back
    (the serial one on every ``every``-th); the first strategy's replies grow the tree."""

    def __init__(self, strategies: dict[str, object], every: dict[str, int], replies=None):
        self.strategies, self.every, self.replies = strategies, every, replies
        self.name = next(iter(strategies.values())).name
        self.tally = {label: Tally() for label in strategies}
        self.peak_bytes = {label: 0 for label in strategies}
        """Peak GPU memory (torch's allocator) while each strategy ran; 0 on CPU."""

    def chat(self, conversations, params):
        kept = None
        for label, backend in self.strategies.items():
            subset = list(conversations)[:: self.every.get(label, 1)]
            cuda = torch.cuda.is_available() and torch.cuda.is_initialized()
            if cuda:
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
            t0 = time.perf_counter()
            out = backend.chat(subset, params)
            if cuda:
                torch.cuda.synchronize()
            self.tally[label].add(len(subset), out, time.perf_counter() - t0)
            if cuda:
                self.peak_bytes[label] = max(self.peak_bytes[label], torch.cuda.max_memory_allocated())
            kept = out if kept is None else kept
        if self.replies is not None:
            kept = self.replies(conversations, kept)
        rates = ", ".join(f"{label} {t.rate:.1f}" for label, t in self.tally.items())
        print(f"  call {next(iter(self.tally.values())).calls}: "
              f"{len(conversations)} conversations, max_new_tokens {params.max_new_tokens}: tok/s so far: {rates} "
              f"(load {os.getloadavg()[0]:.1f})", flush=True)
        return kept


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--levels", nargs="+", default=["12,96", "16,64"], help="N,L pairs (default: 12,96 16,64)")
    ap.add_argument("--batch_size", type=int, default=64, help="hf backend batch size for the level-batched run")
    ap.add_argument("--serial_every", type=int, default=1,
                    help="run the serial baseline on every k-th conversation of each call (1 = all; >1 saves time, "
                         "the serial rate does not depend on which requests it sees)")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch's default)")
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ...")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"],
                    help="weights dtype (bfloat16 on GPUs)")
    ap.add_argument("--random_config", default=None, metavar="H,L,I",
                    help="a random Llama (hidden H, L layers, FFN width I; --model gives the tokenizer) with "
                         "synthetic kept replies (see the module docstring); e.g. 1024,24,4096 (~0.4B)")
    args = ap.parse_args()
    levels = [tuple(int(x) for x in lv.split(",")) for lv in args.levels]
    if args.threads:
        torch.set_num_threads(args.threads)

    from retain.generation.config import DecompressConfig
    from retain.generation.run import decompress
    from retain.utils.io import iter_jsonl

    cfg = BackendConfig(model=args.model, batch_size=args.batch_size, device=args.device, dtype=args.dtype,
                        progress=False)
    if args.random_config:
        model, tok = random_llama(args.model, args.random_config, args.device, args.dtype)
    else:
        model, tok = load_model(cfg.model, device=cfg.device, dtype=cfg.dtype)
    shared = HFBackend(cfg, model=model, tokenizer=tok)
    batched = HFBackend(dataclasses.replace(cfg, prefix_sharing=False), model=model, tokenizer=tok)
    serial = SerialGenerate(model, tok, batched.stop_ids, batched.name)
    strategies = {"shared-prefix (hf backend)": shared, "level-batched (no sharing)": batched,
                  "serial plain generate": serial}
    tree = Interleaved(strategies, {"serial plain generate": args.serial_every},
                       SyntheticReplies() if args.random_config else None)
    params_m = sum(p.numel() for p in model.parameters()) / 1e6
    where = torch.cuda.get_device_name(model.device) if model.device.type == "cuda" else args.device
    print(f"model {'random Llama ' + args.random_config + ' with the tokenizer of ' if args.random_config else ''}"
          f"{args.model} ({params_m:.0f}M parameters, {args.dtype}) on {where}, torch {torch.__version__}, torch threads {torch.get_num_threads()}, levels {levels}, "
          f"batch_size {args.batch_size}, serial_every {args.serial_every}, prefix sharing "
          f"{'on' if shared.sharing else 'unavailable for this model'}, load average {os.getloadavg()[0]:.1f}",
          flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        dcfg = DecompressConfig(run_dir=tmp, levels=levels, question_tokens=32, seed=0, progress=False,
                                backend=BackendConfig(batch_size=args.batch_size, progress=False),
                                **({"dedup_threshold": 1.0} if args.random_config else {}))
        t0 = time.perf_counter()
        decompress(dcfg, backend=tree)
        wall = time.perf_counter() - t0
        nodes = list(iter_jsonl(os.path.join(tmp, "nodes.jsonl")))
    kept = sum(not r["dropped"] for r in nodes)
    print(f"\ntree: {len(nodes)} nodes answered ({kept} kept after filters), wall {wall:.1f} s for all strategies")
    prefilled = {"shared-prefix (hf backend)": shared.stats, "level-batched (no sharing)": batched.stats}
    gpu = any(tree.peak_bytes.values())
    print("\n| strategy | backend calls | conversations | prompt tokens prefilled | completion tokens | generation s "
          "| tokens/s | vs serial |" + (" peak GPU memory |" if gpu else ""))
    print("|---|---:|---:|---:|---:|---:|---:|---:|" + ("---:|" if gpu else ""))
    base = tree.tally["serial plain generate"].rate
    for label, t in tree.tally.items():
        st = prefilled.get(label)
        pre = f"{st['prefilled_tokens']} of {st['prompt_tokens']}" if st else "all"
        mem = f" {tree.peak_bytes[label] / 2**30:.2f} GiB |" if gpu else ""
        print(f"| {label} | {t.calls} | {t.conversations} | {pre} | {t.tokens} | {t.seconds:.1f} | {t.rate:.1f} "
              f"| {t.rate / base:.1f}x |{mem}")
    sp, lb = (tree.tally[k].rate for k in ("shared-prefix (hf backend)", "level-batched (no sharing)"))
    print(f"\nspeed-up (tokens/s) over serial: shared-prefix {sp / base:.1f}x (target >= 8x), level-batched "
          f"{lb / base:.1f}x; shared-prefix over level-batched {sp / lb:.1f}x; load average at end "
          f"{os.getloadavg()[0]:.1f}")


def random_llama(tokenizer_source: str, spec: str, device: str, dtype: str):
    """(model, tokenizer): a randomly initialised Llama of ``spec`` = "hidden,layers,ffn" (head_dim 64, 4 query
    heads per KV head), on ``device`` in ``dtype``, with the tokenizer (and chat template) of ``tokenizer_source``."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from retain.assets import resolve_model
    from retain.models import pad_token_id, resolve_device

    hidden, layers, ffn = (int(x) for x in spec.split(","))
    tok = AutoTokenizer.from_pretrained(str(resolve_model(tokenizer_source)))
    heads = hidden // 64
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=hidden, intermediate_size=ffn, num_hidden_layers=layers,
                      num_attention_heads=heads, num_key_value_heads=max(1, heads // 4), max_position_embeddings=8192,
                      bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, tie_word_embeddings=True)
    torch.manual_seed(0)
    model = LlamaForCausalLM(cfg).to(device=resolve_device(device), dtype=getattr(torch, dtype)).eval()
    model.generation_config.pad_token_id = pad_token_id(tok)
    return model, tok


if __name__ == "__main__":
    main()
