"""Mixed image / text batches on the tiny LLaVA: expansion, assistant-only labels, padding, forward + loss."""

from __future__ import annotations

import pytest
import torch

from retain.data.collate import IGNORE_INDEX
from retain.models import pad_token_id
from retain.errors import RetainError
from retain.multimodal.collate import MultimodalCollator, encode_mm_examples, tokens_per_image


def _examples(image_dir):
    return [
        {"messages": [{"role": "user", "content": "<image>\nWhat color?"}, {"role": "assistant", "content": "red"}],
         "images": [str(image_dir / "red.png")], "sample_type": 0},
        {"messages": [{"role": "user", "content": "Name a fruit."},
                      {"role": "assistant", "content": "An apple is a fruit that grows on trees."}], "sample_type": 1},
        {"messages": [{"role": "user", "content": "<image> then <image>: same?"}, {"role": "assistant", "content": "no"}],
         "images": [str(image_dir / "red.png"), str(image_dir / "blue.png")], "sample_type": 0},
    ]


def test_mixed_batch_labels_padding_and_forward(tiny_mllm, image_dir):
    model, proc = tiny_mllm
    assert tokens_per_image(proc) == 4
    feats, dropped = encode_mm_examples(proc, _examples(image_dir), max_length=128)
    assert dropped == 0
    batch = MultimodalCollator(proc, pad_token_id(proc.tokenizer))(feats)
    ids, labels, mask = batch["input_ids"], batch["labels"], batch["attention_mask"]
    image_id = model.config.image_token_id
    assert (ids == image_id).sum(1).tolist() == [4, 0, 8]
    assert batch["pixel_values"].shape == (3, 3, 64, 64)  # 1 + 0 + 2 images, in row order
    assert batch["sample_type"].tolist() == [0, 1, 0]
    # loss only on the assistant replies (content + end-of-turn); never on image tokens or padding
    tok = proc.tokenizer
    assert [tok.decode(row[row != IGNORE_INDEX]) for row in labels] == [
        "red<|im_end|>", "An apple is a fruit that grows on trees.<|im_end|>", "no<|im_end|>"]
    assert ((labels != IGNORE_INDEX) & (ids == image_id)).sum() == 0
    assert ((labels != IGNORE_INDEX) & (mask == 0)).sum() == 0
    lengths = mask.sum(1)
    assert mask[0, lengths[0]:].sum() == 0 and lengths.max() == ids.shape[1]  # right padding to the longest
    out = model(**{k: v for k, v in batch.items() if k != "sample_type"})
    assert torch.isfinite(out.loss)
    # the same image row alone gives the same logits: padding and the text row do not leak into it
    alone = MultimodalCollator(proc, pad_token_id(tok))(feats[:1])
    with torch.no_grad():
        solo = model(**{k: v for k, v in alone.items() if k != "sample_type"}).logits
        both = model(**{k: v for k, v in batch.items() if k != "sample_type"}).logits
    n = int(lengths[0])
    assert torch.allclose(solo[0, :n], both[0, :n], atol=1e-5)


def test_text_only_batch_has_no_pixel_values_and_runs(tiny_mllm, image_dir):
    model, proc = tiny_mllm
    feats, _ = encode_mm_examples(proc, _examples(image_dir)[1:2], max_length=64)
    batch = MultimodalCollator(proc, pad_token_id(proc.tokenizer))(feats)
    assert "pixel_values" not in batch
    assert torch.isfinite(model(**{k: v for k, v in batch.items() if k != "sample_type"}).loss)


def test_placeholder_mismatch_and_truncation_into_an_image_are_errors(tiny_mllm, image_dir):
    _, proc = tiny_mllm
    stray = {"messages": [{"role": "user", "content": "what is <image>?"}, {"role": "assistant", "content": "x"}]}
    with pytest.raises(RetainError, match=r"^example 0: 1 '<image>' token\(s\) but 0 image\(s\)"):
        encode_mm_examples(proc, [stray], max_length=64)
    late = {"messages": [{"role": "user", "content": "word " * 20 + "<image>"}, {"role": "assistant", "content": "x"}],
            "images": [str(image_dir / "red.png")]}
    with pytest.raises(RetainError, match="cuts into the tokens of an image"):
        encode_mm_examples(proc, [late], max_length=24)
