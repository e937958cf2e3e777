"""Mixed image / text batches for a LLaVA-family model, with loss on assistant tokens only.

- Encoding reuses the text path (:func:`retain.data.collate.encode_chat`): the conversation is rendered
  by the chat template with its ``<image>`` placeholders (one token each), assistant spans become
  labels, then each placeholder token is expanded in token space to the ``tokens_per_image`` copies the
  model fills with projected image features (labels ``-100`` there). This is what ``LlavaProcessor``
  does to the text, done after labelling so the character spans never shift.
- Examples are encoded up front (:func:`encode_mm_examples`), so a placeholder / image mismatch or a
  ``max_length`` that cuts into an image's tokens is an error before training starts. Pixels are
  loaded lazily per batch by :class:`MultimodalCollator` (38k easy-VQA images at 224 px would be 23 GB).
- A batch's ``pixel_values`` (N_images, 3, S, S) holds the images of all rows in row order, then
  placeholder order within a row, which is the order LLaVA scatters features into the flattened
  (B, T) placeholder positions. Text-only rows contribute no image; a batch with no image has no
  ``pixel_values`` key at all, and LLaVA runs its plain text path.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import torch

from retain.data.collate import IGNORE_INDEX, Collator, encode_chat, encode_text
from retain.errors import RetainError


def image_side(image_processor: Any) -> tuple[int, int]:
    """(height, width) in pixels of every image the processor returns: ``crop_size`` when it center-crops
    (CLIP / SigLIP processors: resize the shortest edge, then crop), else a fixed ``size``. Raises when
    the size depends on the image (e.g. ``shortest_edge`` without a crop): the token count must be known
    before any image loads."""
    def hw(size: Any) -> tuple[int, int] | None:
        get = size.get if hasattr(size, "get") else (lambda k: getattr(size, k, None))
        h, w = get("height"), get("width")
        return (int(h), int(w)) if h and w else None

    crop = getattr(image_processor, "crop_size", None)
    if getattr(image_processor, "do_center_crop", False) and crop is not None and hw(crop):
        return hw(crop)
    size = getattr(image_processor, "size", None)
    if size is not None and hw(size):
        return hw(size)
    raise RetainError(f"{type(image_processor).__name__}: size={size} gives images of varying size; "
                      "retain needs a fixed image size (set size height/width, or do_center_crop with crop_size)")


def tokens_per_image(processor: Any) -> int:
    """Placeholder tokens per image, as ``LlavaProcessor`` counts them from the processed image
    (:func:`image_side`): (height / patch) · (width / patch) + extra tokens (CLS), − 1 for the
    ``default`` feature strategy (CLS dropped). Miniature: 224 px, patch 32 -> 49; a CLIP ViT-L/14 at
    336 px -> 576."""
    h, w = image_side(processor.image_processor)
    n = (h // processor.patch_size) * (w // processor.patch_size)
    n += processor.num_additional_image_tokens
    return n - 1 if processor.vision_feature_select_strategy == "default" else n


def encode_mm_example(processor: Any, example: dict, max_length: int, where: str = "example") -> dict[str, Any]:
    """``input_ids`` / ``labels`` with every ``<image>`` expanded to :func:`tokens_per_image` tokens
    (labels -100), truncated to ``max_length``; ``images`` (paths) and ``sample_type`` carried along."""
    images = list(example.get("images", []))
    image_id = processor.image_token_id
    if "text" in example:  # plain text ({"text"}, e.g. TG-PT): loss on every token, no image
        enc = encode_text(processor.tokenizer, example["text"], max_length=1 << 30)
    else:
        enc = encode_chat(processor.tokenizer, example["messages"], max_length=1 << 30)
    found = enc["input_ids"].count(image_id)
    if found != len(images):
        raise RetainError(f"{where}: {found} '{processor.image_token}' token(s) but {len(images)} image(s); "
                          "put one placeholder where each image goes (a text-only sample must not contain one)")
    n = tokens_per_image(processor)
    ids: list[int] = []
    labels: list[int] = []
    for tok, lab in zip(enc["input_ids"], enc["labels"]):
        if tok == image_id:
            if len(ids) + n > max_length:
                raise RetainError(f"{where}: max_length={max_length} cuts into the tokens of an image (it needs "
                                  f"{len(ids) + n}); raise train.max_length")
            ids += [image_id] * n
            labels += [IGNORE_INDEX] * n
        else:
            ids.append(tok)
            labels.append(lab)
    return {"input_ids": ids[:max_length], "labels": labels[:max_length], "images": images,
            "sample_type": int(example.get("sample_type", -1))}


def encode_mm_examples(processor: Any, examples: Sequence[dict], max_length: int) -> tuple[list[dict], int]:
    """Encode every example (image or text-only); returns (features, number dropped for having no
    assistant token left after truncation), as :func:`retain.data.collate.encode_examples`."""
    if max_length < 2:
        raise RetainError(f"train.max_length={max_length}: must be >= 2")
    feats, dropped = [], 0
    for i, ex in enumerate(examples):
        f = encode_mm_example(processor, ex, max_length, where=f"example {i}")
        if all(label == IGNORE_INDEX for label in f["labels"][1:]):
            dropped += 1
            continue
        feats.append(f)
    return feats, dropped


@dataclass
class MultimodalCollator:
    """Right-pads features (as :class:`retain.data.collate.Collator`) and loads their images.

    Returns ``input_ids``, ``attention_mask``, ``labels`` (B, T) long, ``sample_type`` (B,) long and,
    when any row has an image, ``pixel_values`` (N_images, 3, S, S) float32 (normalised pixels).
    """

    processor: Any
    pad_token_id: int

    def __call__(self, features: Sequence[dict]) -> dict[str, torch.Tensor]:
        from PIL import Image

        batch = Collator(self.pad_token_id)(features)
        paths = [p for f in features for p in f.get("images", ())]
        if paths:
            images = []
            for p in paths:
                with Image.open(p) as im:
                    images.append(im.convert("RGB"))
            batch["pixel_values"] = self.processor.image_processor(images, return_tensors="pt")["pixel_values"]
        return batch
