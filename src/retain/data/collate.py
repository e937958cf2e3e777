"""Chat examples → token ids with assistant-only labels, and batches with dynamic padding.

- The model's own chat template renders the conversation (``tokenizer.apply_chat_template``); we never
  hand-write a prompt format.
- Loss only on assistant tokens. Templates rarely mark assistant spans (``{% generation %}`` is rare;
  SmolLM2's ChatML template has none), so spans are found by rendering: for assistant turn ``i`` the
  text ``render(messages[:i], add_generation_prompt=True)`` must be a prefix of
  ``render(messages[:i+1])``; the difference is exactly what the model should generate for that turn
  (content + end-of-turn token). Trailing text after the end token (ChatML's ``"\\n"``) is not trained
  on. The rendered full text is tokenized once with character offsets, and a token is trained on iff it
  starts inside an assistant span. This works for any template that renders turns incrementally; one
  that does not is reported as an error instead of silently training on the prompt.
- Labels are the input ids with every non-assistant position set to ``-100`` (the causal shift happens
  in the loss). Truncation keeps the first ``max_length`` tokens; examples left with no assistant token
  are dropped (and counted) so a batch never has an empty loss.
- Batches: right padding to the longest sequence in the batch; ``sample_type`` rides along as (B,).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import torch

from retain.errors import RetainError

IGNORE_INDEX = -100


def _render(tokenizer: Any, messages: list[dict], add_generation_prompt: bool = False) -> str:
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)


def assistant_char_spans(tokenizer: Any, messages: list[dict]) -> tuple[str, list[tuple[int, int]]]:
    """Render ``messages``; return (text, [(start, end) character spans the model must generate])."""
    if not getattr(tokenizer, "chat_template", None):
        raise RetainError(
            f"tokenizer {getattr(tokenizer, 'name_or_path', '')!r} has no chat template; use an instruct/chat "
            "model or set tokenizer.chat_template"
        )
    full = _render(tokenizer, messages)
    eos = tokenizer.eos_token or ""
    spans = []
    for i, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        before = _render(tokenizer, messages[:i], add_generation_prompt=True) if i else ""
        upto = _render(tokenizer, messages[: i + 1])
        if not (upto.startswith(before) and full.startswith(upto)):
            raise RetainError(
                "chat template does not render turns incrementally, so assistant tokens cannot be located; "
                "use a template whose rendering of a prefix of the conversation is a prefix of the full text"
            )
        reply = upto[len(before):]
        # Stop after the end-of-turn token: whatever the template appends after it (a newline) is
        # formatting the model never has to generate.
        cut = reply.rfind(eos) + len(eos) if eos and eos in reply else len(reply.rstrip())
        spans.append((len(before), len(before) + cut))
    return full, spans


def encode_chat(tokenizer: Any, messages: list[dict], max_length: int) -> dict[str, list[int]]:
    """Token ids and labels (``-100`` outside assistant spans) of one conversation, truncated to ``max_length``."""
    text, spans = assistant_char_spans(tokenizer, messages)
    # The template already contains the special tokens (BOS / <|im_start|>); add none.
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids = list(enc["input_ids"])
    labels = [IGNORE_INDEX] * len(ids)
    si = 0
    for t, (start, _end) in enumerate(enc["offset_mapping"]):
        while si < len(spans) and start >= spans[si][1]:
            si += 1
        if si < len(spans) and spans[si][0] <= start < spans[si][1]:
            labels[t] = ids[t]
    return {"input_ids": ids[:max_length], "labels": labels[:max_length]}


def encode_text(tokenizer: Any, text: str, max_length: int) -> dict[str, list[int]]:
    """Plain text for continued pre-training: the tokenizer's own special tokens (BOS where it has one),
    the text, then EOS to end the document; labels = ids (loss on every token), truncated to ``max_length``."""
    ids = list(tokenizer(text, add_special_tokens=True)["input_ids"])
    if tokenizer.eos_token_id is not None and (not ids or ids[-1] != tokenizer.eos_token_id):
        ids.append(tokenizer.eos_token_id)
    ids = ids[:max_length]
    return {"input_ids": ids, "labels": list(ids)}


def encode_examples(
    tokenizer: Any, examples: Sequence[dict], max_length: int
) -> tuple[list[dict[str, Any]], int]:
    """Encode every example (chat: loss on assistant tokens; ``{"text"}``: on every token); returns
    (features, number dropped for having no labelled token left after position 0)."""
    if max_length < 2:
        raise RetainError(f"train.max_length={max_length}: must be >= 2")
    feats, dropped = [], 0
    for ex in examples:
        f = encode_text(tokenizer, ex["text"], max_length) if "text" in ex else encode_chat(tokenizer, ex["messages"], max_length)
        if all(label == IGNORE_INDEX for label in f["labels"][1:]):  # position 0 is never predicted
            dropped += 1
            continue
        f["sample_type"] = int(ex.get("sample_type", -1))
        feats.append(f)
    return feats, dropped


@dataclass
class Collator:
    """Right-pads a list of features to the longest one.

    Returns ``input_ids`` (B, T) long, ``attention_mask`` (B, T) long (1 = real token), ``labels`` (B, T)
    long (-100 = no loss) and ``sample_type`` (B,) long.
    """

    pad_token_id: int

    def __call__(self, features: Sequence[dict]) -> dict[str, torch.Tensor]:
        T = max(len(f["input_ids"]) for f in features)
        B = len(features)
        ids = torch.full((B, T), self.pad_token_id, dtype=torch.long)
        labels = torch.full((B, T), IGNORE_INDEX, dtype=torch.long)
        mask = torch.zeros((B, T), dtype=torch.long)
        for b, f in enumerate(features):
            n = len(f["input_ids"])
            ids[b, :n] = torch.tensor(f["input_ids"], dtype=torch.long)
            labels[b, :n] = torch.tensor(f["labels"], dtype=torch.long)
            mask[b, :n] = 1
        types = torch.tensor([int(f.get("sample_type", -1)) for f in features], dtype=torch.long)
        return {"input_ids": ids, "attention_mask": mask, "labels": labels, "sample_type": types}
