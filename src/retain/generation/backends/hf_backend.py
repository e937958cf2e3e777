"""``hf`` backend: transformers ``generate`` in this process, over length-sorted, left-padded batches.

- Prompts are rendered with the tokenizer's own chat template (``add_generation_prompt=True``), so any
  instruct model works without retain knowing its format.
- Conversations are sorted by prompt length (longest first) before batching: rows of a batch then have
  similar lengths, so little compute is spent on padding, and an out-of-memory shows up on the first
  batch rather than the last. Results are put back in input order.
- Left padding: decoder-only models continue from the last position, so the prompts must end at the same
  column; the attention mask hides the pads (transformers derives position ids from it).
- Stop tokens = EOS from the tokenizer and generation config, plus the chat template's end-of-turn token,
  found by rendering a one-turn dialogue (``<|im_end|>`` for ChatML, ``<|eot_id|>`` for Llama 3, ...).
- Sampling is transformers' own (temperature / top_p; temperature 0 = greedy; top-k disabled, as in the
  OpenAI API). Seeds: batch ``b`` of a call samples under ``seed + b`` inside ``torch.random.fork_rng``,
  so the same inputs, seed and batch size give the same outputs and the caller's RNG is left untouched.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
from tqdm.auto import tqdm

from retain.errors import RetainError
from retain.generation.backends.base import Completion, Messages, SamplingParams, register_backend
from retain.generation.backends.config import BackendConfig

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16, "auto": "auto"}
_MARKER = "RETAIN_EOT_PROBE"


def resolve_device(device: str) -> torch.device:
    """'auto' -> cuda when available, else cpu; anything else is passed to ``torch.device``."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        return torch.device(device)
    except RuntimeError as e:
        raise RetainError(f"--backend.device {device}: {e}; use auto, cpu, cuda or cuda:N") from None


def load_model(cfg: BackendConfig) -> tuple[Any, Any]:
    """Load (model, tokenizer) for ``cfg.model`` ('smollm2', a local folder or a hub id), eval mode."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from retain.assets import resolve_model

    path = resolve_model(cfg.model)
    try:
        tok = AutoTokenizer.from_pretrained(path, trust_remote_code=cfg.trust_remote_code)
        model = AutoModelForCausalLM.from_pretrained(
            path, dtype=_DTYPES[cfg.dtype], trust_remote_code=cfg.trust_remote_code, use_safetensors=True
        )
    except OSError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise RetainError(f"--model {cfg.model}: cannot load ({first}); give 'smollm2' or a local HF folder") from None
    return model.to(resolve_device(cfg.device)).eval(), tok


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
        if model is None:
            model, tokenizer = load_model(self.cfg)
        self.model, self.tokenizer = model.eval(), tokenizer
        self.name = name or getattr(model.config, "name_or_path", None) or self.cfg.model
        if not getattr(tokenizer, "chat_template", None):
            raise RetainError(f"--model {self.cfg.model}: tokenizer has no chat template; use an instruct/chat model")
        if tokenizer.pad_token_id is None:  # many base tokenizers; pads are masked out anyway
            tokenizer.pad_token = tokenizer.eos_token
        self.stop_ids = self._stop_token_ids()

    # -- prompt side ------------------------------------------------------------------------------
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
        order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))  # longest first
        bs = self.cfg.batch_size
        batches = [order[s : s + bs] for s in range(0, len(order), bs)]
        out: list[Completion | None] = [None] * len(prompts)
        bar = tqdm(batches, desc=f"generate ({len(prompts)})", unit="batch", disable=not self.cfg.progress, leave=False)
        for b, idx in enumerate(bar):
            seed = None if params.seed is None else params.seed + b
            for i, comp in zip(idx, self._generate([prompts[i] for i in idx], params, seed)):
                out[i] = comp
        return out  # type: ignore[return-value]

    @torch.inference_mode()
    def _generate(self, prompts: list[list[int]], params: SamplingParams, seed: int | None) -> list[Completion]:
        """Generate for one batch. ``prompts``: B lists of token ids; returns B completions."""
        tok, device = self.tokenizer, self.model.device
        width = max(len(p) for p in prompts)
        ids = torch.full((len(prompts), width), tok.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(prompts), width), dtype=torch.long)
        for r, p in enumerate(prompts):  # left padding: (B, T) with the prompts flush right
            ids[r, width - len(p) :] = torch.tensor(p)
            mask[r, width - len(p) :] = 1
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
        with torch.random.fork_rng(devices=devices):
            if seed is not None:
                torch.manual_seed(seed)
            seqs = self.model.generate(input_ids=ids.to(device), attention_mask=mask.to(device), **gen_kwargs)
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
