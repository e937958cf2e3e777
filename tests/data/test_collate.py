"""Chat template + assistant-only labels + dynamic padding."""

from __future__ import annotations

import pytest
import torch

from retain.data.collate import IGNORE_INDEX, Collator, encode_chat, encode_examples


@pytest.fixture(scope="module")
def tok(smollm2_path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(smollm2_path)


CONV = [
    {"role": "system", "content": "You answer in one line."},
    {"role": "user", "content": "What is 2+2?"},
    {"role": "assistant", "content": "4, because 2+2=4."},
    {"role": "user", "content": "And 3+3?"},
    {"role": "assistant", "content": "Six.\nIt is 6."},
]


def _trained(f):
    return [i for i, label in zip(f["input_ids"], f["labels"]) if label != IGNORE_INDEX]


def test_only_assistant_tokens_carry_labels(tok):
    f = encode_chat(tok, CONV, max_length=512)
    full = tok.apply_chat_template(CONV, tokenize=False)
    assert tok.decode(f["input_ids"]) == full
    end = tok.eos_token
    assert tok.decode(_trained(f)) == f"4, because 2+2=4.{end}Six.\nIt is 6.{end}"
    assert all(label in (IGNORE_INDEX, i) for i, label in zip(f["input_ids"], f["labels"]))
    # The prompt side (system, user turns, the "assistant\n" header) is never trained on.
    masked = tok.decode([i for i, label in zip(f["input_ids"], f["labels"]) if label == IGNORE_INDEX])
    assert "What is 2+2?" in masked and "4, because" not in masked


def test_truncation_and_dropping_examples_without_assistant_tokens(tok):
    f = encode_chat(tok, CONV, max_length=20)
    assert len(f["input_ids"]) == len(f["labels"]) == 20
    feats, dropped = encode_examples(tok, [{"messages": CONV, "sample_type": 1}] * 2, max_length=20)
    assert feats == [] and dropped == 2  # the first assistant token lies beyond 20 tokens
    feats, dropped = encode_examples(tok, [{"messages": CONV, "sample_type": 1}], max_length=512)
    assert dropped == 0 and feats[0]["sample_type"] == 1


def test_collator_pads_right_and_carries_sample_types(tok):
    feats, _ = encode_examples(tok, [{"messages": CONV[:3], "sample_type": 0},
                                     {"messages": CONV, "sample_type": 1}], max_length=512)
    b = Collator(pad_token_id=tok.pad_token_id)(feats)
    n0, n1 = len(feats[0]["input_ids"]), len(feats[1]["input_ids"])
    assert b["input_ids"].shape == b["labels"].shape == b["attention_mask"].shape == (2, max(n0, n1))
    assert b["sample_type"].tolist() == [0, 1] and b["sample_type"].dtype == torch.long
    assert b["attention_mask"][0].sum() == n0 and (b["labels"][0, n0:] == IGNORE_INDEX).all()
    assert (b["input_ids"][0, n0:] == tok.pad_token_id).all()


def test_plain_text_is_labelled_on_every_token_and_ends_with_eos(tok):
    from retain.data.collate import encode_text

    f = encode_text(tok, "The sky is blue.", max_length=64)
    assert f["labels"] == f["input_ids"] and f["input_ids"][-1] == tok.eos_token_id
    assert tok.decode(f["input_ids"], skip_special_tokens=True) == "The sky is blue."
    assert len(encode_text(tok, "word " * 200, max_length=16)["input_ids"]) == 16
    feats, dropped = encode_examples(tok, [{"text": "Hello there.", "sample_type": 1},
                                           {"messages": [{"role": "user", "content": "hi"},
                                                         {"role": "assistant", "content": "yo"}]}], 64)
    assert dropped == 0 and feats[0]["sample_type"] == 1 and feats[0]["labels"] == feats[0]["input_ids"]
    assert feats[1]["labels"][0] == -100  # chat: only the assistant reply is labelled
