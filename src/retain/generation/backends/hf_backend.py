"""``hf`` backend: transformers ``generate`` in this process, batched, with shared prompt prefixes prefilled once.

- Prompts are rendered with the tokenizer's own chat template (``add_generation_prompt=True``), so any
  instruct model works without retain knowing its format.
- **Prefix sharing** (default, ``prefix_sharing``): a TG call holds many conversations that start alike
  (a parent's root-to-node dialogue, ~220 tokens, shared by its children; the system prompt, shared by
  all). Prompts are sorted by token ids and grouped by shared prefix (``prefix_cache.group_by_prefix``);
  each group's prefix is prefilled ONCE at batch size 1, on top of the longest match in a bounded LRU of
  earlier prefixes (``prefix_cache.PrefixCache``, kept across calls, hence across `retain serve` requests),
  and its KV is copied into the rows of the batch that share it. ``generate`` then prefills only each
  row's suffix (the new question, >= 1 token) and decodes. A row is laid out as
  ``[pad][prefix (cached)][pad][suffix]``: the attention mask hides both pad runs and transformers
  derives position ids from the mask (``cumsum - 1``), so the prefix keeps positions ``0..P-1`` (those it
  was computed at) and the suffix continues at ``P``. Greedy outputs equal the unshared path's (tested).
  Only models whose cache is plain ``DynamicLayer`` (no sliding window, no linear attention) share;
  others fall back to the unshared path. The LRU is cleared when the weights change in place (training
  bumps every parameter's ``Tensor._version``), so a fine-tuned model never reads stale keys/values.
- **Memory bound** (sharing on): the batch cache holds ``batch_size * (max prefix + max suffix +
  max_new_tokens)`` tokens (the fork is a copy: decoding memory is that of a plain batch, at most twice
  the longest prompt wide), the prefixes of the groups in the batch in flight add at most
  ``(batch_size + 1) * longest prompt`` tokens, and the LRU at most ``prefix_cache_tokens`` (one token =
  ``layers * 2 * kv_heads * head_dim * dtype bytes``: 46 KB for SmolLM2-135M in float32).
- Unshared path: conversations are sorted by prompt length (longest first) before batching, so rows of
  a batch have similar lengths and an out-of-memory shows up on the first batch. Left padding: the
  prompts end at the same column; the attention mask hides the pads. Results come back in input order.
- Stop tokens = EOS from the tokenizer and generation config, plus the chat template's end-of-turn token,
  found by rendering a one-turn dialogue (``<|im_end|>`` for ChatML, ``<|eot_id|>`` for Llama 3, ...).
- **Attention kernels on CUDA** (:func:`attention_kernels`): generation runs with PyTorch's SDPA limited to
  the flash / memory-efficient / math kernels. With a padding mask, PyTorch 2.11 on an H100 picks cuDNN's
  kernel first, which builds an execution plan for every new shape, and decoding makes a new shape at
  every step (the KV grows) and every call (new widths). Measured on an H100 with cuDNN (README, "Measured
  on a GPU"): the strategy that met a tree's shapes first ran 13x slower than the one that re-used its
  plans, and one-at-a-time decoding 6x slower on first-seen shapes than on the same shapes again.
- Sampling is transformers' own (temperature / top_p; temperature 0 = greedy; top-k disabled, as in the
  OpenAI API). Seeds: batch ``b`` of a call samples under ``seed + b`` inside ``torch.random.fork_rng``,
  so the same inputs, seed, batch size and cache contents give the same outputs (the batches are formed
  deterministically) and the caller's RNG is left untouched.
"""

from __future__ import annotations

import contextlib
import threading
from typing import Any, Sequence

import numpy as np
import torch

from retain.assets import model_name
from retain.errors import RetainError
from retain.generation.backends.base import Completion, Messages, SamplingParams, register_backend
from retain.generation.backends.config import BackendConfig
from retain.generation.backends.prefix_cache import KV, PrefixCache, group_by_prefix
from retain.models import load_model, pad_token_id
from retain.utils.console import tqdm

_MARKER = "RETAIN_EOT_PROBE"


@register_backend("hf")
class HFBackend:
    """In-process generation with transformers.

    Either build from a :class:`BackendConfig` (loads ``cfg.model``) or hand in an already loaded
    ``model``/``tokenizer`` pair (e.g. a freshly fine-tuned model in the demo); ``cfg`` then only supplies
    ``batch_size`` and ``progress``.
    """

    def __init__(self, cfg: BackendConfig | None = None, model: Any = None, tokenizer: Any = None, name: str | None = None):
        self.cfg = cfg or BackendConfig()
        if (model is None) != (tokenizer is None):
            raise ValueError("pass both model and tokenizer, or neither")
        source = self.cfg.model
        if model is None:
            # a base name, a local folder or a fine-tuned folder of any method (full, LoRA, LoRAMoE)
            model, tokenizer = load_model(self.cfg.model, device=self.cfg.device, dtype=self.cfg.dtype,
                                          trust_remote_code=self.cfg.trust_remote_code,
                                          device_key="--backend.device", opt_in=None)
        else:
            source = getattr(model.config, "name_or_path", None) or self.cfg.model
        self.model, self.tokenizer = model.eval(), tokenizer
        self.name = name or model_name(source)  # recorded in corpora: 'smollm2', not its cache folder
        if not getattr(tokenizer, "chat_template", None):
            raise RetainError(f"--model {self.cfg.model}: tokenizer has no chat template; use an instruct/chat model")
        pad_token_id(tokenizer)  # many base tokenizers have none: EOS pads (masked out anyway)
        self.stop_ids = self._stop_token_ids()
        self.sharing = self.cfg.prefix_sharing and _plain_dynamic_cache(self.model)
        self.prefix_cache = PrefixCache(self.cfg.prefix_cache_tokens)
        self._weights_version = _weights_version(self.model)
        self._count_tok, self._count_lock = None, threading.Lock()  # see count_tokens
        self.stats = {"prompt_tokens": 0, "prefilled_tokens": 0}
        """Prompt tokens asked for, and those actually run through the model (the rest came from shared KV)."""

    # -- prompt side ------------------------------------------------------------------------------
    @property
    def context_length(self) -> int | None:
        """The model's context window in tokens (``max_position_embeddings``), when its config says."""
        n = getattr(self.model.config, "max_position_embeddings", None)
        return int(n) if isinstance(n, int) and n > 0 else None

    def count_tokens(self, conversation: Messages) -> int:
        """Prompt tokens of ``conversation``, on a private tokenizer copy: safe from any thread while the
        model's own thread generates (``retain serve`` counts on the event loop's side)."""
        import copy

        with self._count_lock:
            if self._count_tok is None:
                self._count_tok = copy.deepcopy(self.tokenizer)
            try:
                ids = self._count_tok.apply_chat_template(list(conversation), add_generation_prompt=True,
                                                          tokenize=True, return_dict=False)
            except Exception as e:  # jinja raises TemplateError / TypeError on malformed messages
                raise RetainError(f"messages: chat template failed ({e})") from None
        return len(ids)

    def _stop_token_ids(self) -> list[int]:
        tok, ids = self.tokenizer, set()
        for src in (tok.eos_token_id, getattr(self.model.generation_config, "eos_token_id", None)):
            ids.update([src] if isinstance(src, int) else (src or []))
        # The template's end-of-turn token: the first special token that follows an assistant message.
        text = tok.apply_chat_template(
            [{"role": "user", "content": "hi"}, {"role": "assistant", "content": _MARKER}], tokenize=False
        )
        tail = tok(text.split(_MARKER, 1)[-1], add_special_tokens=False)["input_ids"]
        special = set(tok.all_special_ids) | {i for i, t in tok.added_tokens_decoder.items() if t.special}
        eot = next((i for i in tail if i in special), None)
        if eot is not None:
            ids.add(eot)
        return sorted(ids)

    def encode(self, conversation: Messages) -> list[int]:
        """Token ids of the chat-templated prompt, ending with the assistant header."""
        try:
            ids = self.tokenizer.apply_chat_template(
                list(conversation), add_generation_prompt=True, tokenize=True, return_dict=False
            )
        except Exception as e:  # jinja raises TemplateError / TypeError on malformed messages
            raise RetainError(f"conversation {conversation!r:.80}: chat template failed ({e})") from None
        return list(ids)

    # -- generation -------------------------------------------------------------------------------
    def chat(self, conversations: Sequence[Messages], params: SamplingParams) -> list[Completion]:
        """One completion per conversation, in input order (see the module docstring for batching)."""
        if not conversations:
            return []
        prompts = [self.encode(c) for c in conversations]
        version = _weights_version(self.model)
        if version != self._weights_version:  # the weights changed in place (e.g. trained): cached KV is stale
            self.prefix_cache.clear()
            self._weights_version = version
        self.stats["prompt_tokens"] += sum(len(p) for p in prompts)
        out: list[Completion | None] = [None] * len(prompts)
        bs = self.cfg.batch_size
        if self.sharing:
            groups = group_by_prefix(prompts)
            rows = [(r, g) for g in range(len(groups)) for r in groups[g].rows]  # group members adjacent
        else:
            rows = [(r, -1) for r in sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))]  # longest first
        last = {g: k for k, (_, g) in enumerate(rows)}  # a group's prefix KV is dropped after its last row
        live: dict[int, KV] = {}
        batches = [range(s, min(s + bs, len(rows))) for s in range(0, len(rows), bs)]
        bar = tqdm(batches, desc=f"generate ({len(prompts)})", unit="batch", disable=not self.cfg.progress, leave=False)
        for b, ks in enumerate(bar):
            seed = None if params.seed is None else params.seed + b
            idx = [rows[k][0] for k in ks]
            if self.sharing:
                for k in ks:
                    g = rows[k][1]
                    if g not in live:
                        live[g] = self._prefix_kv(prompts[groups[g].rows[0]][: groups[g].shared])
                shared = [(groups[rows[k][1]].shared, live[rows[k][1]]) for k in ks]
                comps = self._generate_shared([prompts[i] for i in idx], shared, params, seed)
                for k in ks:
                    if last[rows[k][1]] == k:
                        del live[rows[k][1]]
            else:
                comps = self._generate([prompts[i] for i in idx], params, seed)
            for i, comp in zip(idx, comps):
                out[i] = comp
        return out  # type: ignore[return-value]

    @torch.inference_mode()
    def _prefix_kv(self, ids: list[int]) -> KV:
        """KV of ``ids`` (per layer, each (kv_heads, len(ids), head_dim)): the LRU's longest match, extended
        by one batch-size-1 forward over the tokens it lacks, stored back in the LRU."""
        from transformers import DynamicCache

        if not ids:
            return []
        arr = np.asarray(ids, dtype=np.int64)
        m, hit = self.prefix_cache.lookup(arr)
        if hit is not None and m == len(ids):
            return [(k[:, :m], v[:, :m]) for k, v in hit]
        cache = DynamicCache(ddp_cache_data=[(k[None, :, :m], v[None, :, :m]) for k, v in hit]) if hit else DynamicCache()
        device = self.model.device
        with attention_kernels(device):
            out = self.model(input_ids=torch.tensor([ids[m:]], device=device), use_cache=True, past_key_values=cache,
                             position_ids=torch.arange(m, len(ids), device=device)[None])
        self.stats["prefilled_tokens"] += len(ids) - m
        kv = [(layer.keys[0], layer.values[0]) for layer in out.past_key_values.layers]
        self.prefix_cache.put(arr, kv)
        return kv

    @torch.inference_mode()
    def _generate_shared(self, prompts: list[list[int]], shared: list[tuple[int, KV]], params: SamplingParams,
                         seed: int | None) -> list[Completion]:
        """One batch whose row r starts with ``shared[r] = (P, kv)``: P prompt tokens whose KV is given.
        Row layout ``[pad][prefix][pad][suffix]`` (see the module docstring)."""
        from transformers import DynamicCache

        wp = max(p for p, _ in shared)
        ws = max(len(q) - p for q, (p, _) in zip(prompts, shared))
        width = wp + ws
        ids = torch.full((len(prompts), width), self.tokenizer.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(prompts), width), dtype=torch.long)
        for r, (q, (p, _)) in enumerate(zip(prompts, shared)):
            ids[r, wp - p : wp], mask[r, wp - p : wp] = torch.tensor(q[:p], dtype=torch.long), 1
            ids[r, width - (len(q) - p) :], mask[r, width - (len(q) - p) :] = torch.tensor(q[p:], dtype=torch.long), 1
        cache = None
        if wp:
            ref = next(kv for p, kv in shared if p)
            layers = []
            for li, (k0, v0) in enumerate(ref):  # (B, kv_heads, wp, head_dim), prefixes flush right
                keys = k0.new_zeros((len(prompts), k0.shape[0], wp, k0.shape[2]))
                values = v0.new_zeros((len(prompts), v0.shape[0], wp, v0.shape[2]))
                for r, (p, kv) in enumerate(shared):
                    if p:
                        keys[r, :, wp - p :], values[r, :, wp - p :] = kv[li][0], kv[li][1]
                layers.append((keys, values))
            cache = DynamicCache(ddp_cache_data=layers)
        self.stats["prefilled_tokens"] += sum(len(q) - p for q, (p, _) in zip(prompts, shared))
        return self._run(ids, mask, prompts, params, seed, cache)

    @torch.inference_mode()
    def _generate(self, prompts: list[list[int]], params: SamplingParams, seed: int | None) -> list[Completion]:
        """Generate for one batch. ``prompts``: B lists of token ids; returns B completions."""
        width = max(len(p) for p in prompts)
        ids = torch.full((len(prompts), width), self.tokenizer.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(prompts), width), dtype=torch.long)
        for r, p in enumerate(prompts):  # left padding: (B, T) with the prompts flush right
            ids[r, width - len(p) :] = torch.tensor(p)
            mask[r, width - len(p) :] = 1
        self.stats["prefilled_tokens"] += sum(len(p) for p in prompts)
        return self._run(ids, mask, prompts, params, seed)

    def _run(self, ids: torch.Tensor, mask: torch.Tensor, prompts: list[list[int]], params: SamplingParams,
             seed: int | None, cache: Any = None) -> list[Completion]:
        """``generate`` on (B, T) ids/mask (the first cache-length columns already in ``cache``)."""
        tok, device, width = self.tokenizer, self.model.device, ids.shape[1]
        greedy = params.temperature <= 0
        gen_kwargs: dict[str, Any] = dict(
            max_new_tokens=params.max_new_tokens,
            do_sample=not greedy,
            eos_token_id=self.stop_ids,
            pad_token_id=tok.pad_token_id,
        )
        if not greedy:
            gen_kwargs.update(temperature=params.temperature, top_p=params.top_p, top_k=0)
        devices = [device] if device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices), attention_kernels(device):
            if seed is not None:
                torch.manual_seed(seed)
            seqs = self.model.generate(input_ids=ids.to(device), attention_mask=mask.to(device), past_key_values=cache,
                                       **gen_kwargs)
        new = seqs[:, width:].tolist()  # (B, <= max_new_tokens)
        stops = set(self.stop_ids)
        results = []
        for p, row in zip(prompts, new):
            end = next((k for k, t in enumerate(row) if t in stops), None)
            gen = row if end is None else row[:end]
            results.append(
                Completion(
                    text=tok.decode(gen, skip_special_tokens=True).strip(),
                    prompt_tokens=len(p),
                    completion_tokens=len(gen) + (end is not None),  # the stop token counts, as in vLLM
                    finish_reason="stop" if end is not None else "length",
                )
            )
        return results


def attention_kernels(device: torch.device) -> contextlib.AbstractContextManager:
    """Inside: on CUDA, SDPA may use the flash, memory-efficient and math kernels but not cuDNN's, whose
    per-shape plan building dominates decoding (see the module docstring); elsewhere nothing changes."""
    if torch.device(device).type != "cuda":
        return contextlib.nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    return sdpa_kernel([SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH])


def _plain_dynamic_cache(model: Any) -> bool:
    """True when the model's generation cache is all plain ``DynamicLayer`` (full attention, KV sliceable)."""
    from transformers import DynamicCache
    from transformers.cache_utils import DynamicLayer

    if getattr(model.config, "is_encoder_decoder", False):
        return False
    try:
        layers = DynamicCache(config=model.config).layers
    except Exception:  # noqa: BLE001 - an exotic config: do not share
        return False
    return all(type(layer) is DynamicLayer for layer in layers)


def _weights_version(model: Any) -> int:
    """Changes whenever a parameter is modified in place (torch bumps ``Tensor._version`` on every write)."""
    return sum(p._version for p in model.parameters())
