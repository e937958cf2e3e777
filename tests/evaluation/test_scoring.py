"""Scoring primitives against manual single-sequence computations on the tiny Llama."""

from __future__ import annotations

import torch

from retain.evaluation import scoring
from retain.evaluation.probes import Probe, letter_prompt, mc_context, score_probe

MC_ITEMS = [
    {"id": "q1", "question": "What color is the sky on a clear day?", "choices": ["blue", "green", "red", "a plaid pattern"], "answer": 0},
    {"id": "q2", "question": "How many legs does a spider have?", "choices": ["six", "eight", "ten"], "answer": 1},
    {"id": "q3", "question": "Which gas do plants absorb?", "choices": ["oxygen", "carbon dioxide", "helium", "neon", "argon"], "answer": 1},
    {"id": "q4", "question": "What is frozen water called?", "choices": ["steam", "ice"], "answer": 1},
]


def manual_logprob(model, tok, context: str, continuation: str) -> float:
    """Unpadded, unbatched full forward of context + continuation: sum log p(continuation tokens)."""
    ctx = tok(context, add_special_tokens=False)["input_ids"]
    cont = tok(continuation, add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([ctx + cont])).logits[0].float()
    logp = torch.log_softmax(logits, -1)
    return sum(logp[len(ctx) - 1 + j, t].item() for j, t in enumerate(cont))


def test_choice_logprobs_match_manual_batched_and_unbatched(tiny):
    model, tok = tiny
    contexts = [mc_context(it) for it in MC_ITEMS]
    choices = [[" " + c for c in it["choices"]] for it in MC_ITEMS]
    expected = [[manual_logprob(model, tok, c, x) for x in xs] for c, xs in zip(contexts, choices)]
    shared_batched = scoring.choice_logprobs(model, tok, contexts, choices, batch_size=16)
    shared_single = scoring.choice_logprobs(model, tok, contexts, choices, batch_size=1)
    pairs = [(c, x) for c, xs in zip(contexts, choices) for x in xs]
    plain = scoring.continuation_logprobs(model, tok, pairs, batch_size=5)
    flat = [x for row in expected for x in row]
    for got in ([x for r in shared_batched for x in r], [x for r in shared_single for x in r], plain):
        assert max(abs(a - b) for a, b in zip(got, flat)) < 1e-3


def test_mc_probe_picks_the_planted_answer(tiny):
    """Plant the gold answer where the model's own (manually computed) acc_norm score is highest:
    every item must be correct; moving the gold elsewhere must make it wrong."""
    model, tok = tiny
    planted = []
    for it in MC_ITEMS:
        norm = [manual_logprob(model, tok, mc_context(it), " " + c) / len(" " + c) for c in it["choices"]]
        planted.append({**it, "answer": max(range(len(norm)), key=norm.__getitem__)})
    res = score_probe(model, tok, Probe("p", "mc", planted))
    assert all(r["correct"] and r["margin"] > 0 for r in res)
    moved = [{**it, "answer": (it["answer"] + 1) % len(it["choices"])} for it in planted]
    res = score_probe(model, tok, Probe("p", "mc", moved))
    assert not any(r["correct"] for r in res) and all(r["margin"] < 0 for r in res)


def test_letter_scoring_matches_manual_next_token(tiny):
    model, tok = tiny
    items = [it for it in MC_ITEMS if len(it["choices"]) == 4]
    res = score_probe(model, tok, Probe("d", "letter", items), batch_size=8)
    for it, r in zip(items, res):
        ids = tok(letter_prompt(tok, it), add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([ids])).logits[0, -1]
        letters = [tok(" " + L, add_special_tokens=False)["input_ids"][0] for L in "ABCD"]
        assert r["pred"] == int(logits[letters].argmax())


def test_label_items_are_scored_by_their_label_words_mixed_with_letter_items(tiny):
    """A label item (SST-2 style) is scored on the first token of each label word, a letter item on
    its letters, in one probe; each prediction equals the manual next-token argmax."""
    import pytest

    from retain.errors import RetainError

    model, tok = tiny
    label = {"id": "s1", "question": "Review: a dull, joyless film.\nWhat is the sentiment of this review?",
             "choices": ["negative", "positive"], "answer": 0, "answer_format": "label"}
    items = [label, {**label, "id": "s2", "answer": 1}, MC_ITEMS[3]]
    res = score_probe(model, tok, Probe("d", "letter", items), batch_size=8)
    for it, keys, r in zip(items, [[" negative", " positive"]] * 2 + [[" A", " B"]], res):
        ids = tok(letter_prompt(tok, it), add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([ids])).logits[0, -1]
        cand = [tok(k, add_special_tokens=False)["input_ids"][0] for k in keys]
        assert r["pred"] == int(logits[cand].argmax()) and r["gold"] == it["answer"]
        assert abs(r["margin"] - float(torch.log_softmax(logits.float(), -1)[cand].diff().item() * (1 if it["answer"] else -1))) < 1e-3
    assert res[0]["pred"] == res[1]["pred"] and res[0]["correct"] != res[1]["correct"]  # same prompt, other gold
    same_start = {**label, "choices": ["no", "no way"]}  # " no way" starts with the token " no"
    with pytest.raises(RetainError, match="s1.*same token"):
        score_probe(model, tok, Probe("d", "letter", [same_start]))


def test_greedy_generation_batched_equals_unbatched(tiny):
    model, tok = tiny
    prompts = ["Question: What is 2+2?\nAnswer:", "Hi", "Question: Name a large ocean on Earth please\nAnswer:"]
    one = [scoring.greedy_generate(model, tok, [p], max_new_tokens=6, batch_size=1, stop=None)[0] for p in prompts]
    many = scoring.greedy_generate(model, tok, prompts, max_new_tokens=6, batch_size=8, stop=None)
    assert one == many
    assert all(len(tok(t, add_special_tokens=False)["input_ids"]) <= 6 for t in many)


def test_shared_prefix_paths_equal_plain_prompts(tiny):
    """Sharing a prefix's KV cache changes nothing when the prefix ends on a token boundary."""
    model, tok = tiny
    prefix = "<|im_start|>user\nThe capital of France is Paris."
    suffixes = [" Who wrote Hamlet?\nAnswer:", " Largest planet?", " Hello"]
    for s in suffixes:  # precondition of the comparison
        assert tok(prefix + s, add_special_tokens=False)["input_ids"] == (
            tok(prefix, add_special_tokens=False)["input_ids"] + tok(s, add_special_tokens=False)["input_ids"])
    prompts = [prefix + s for s in suffixes]
    shared = scoring.greedy_generate(model, tok, prompts, max_new_tokens=5, batch_size=2, stop=None, shared_prefix=prefix)
    plain = scoring.greedy_generate(model, tok, prompts, max_new_tokens=5, batch_size=3, stop=None)
    assert shared == plain
    cands = [tok(" " + L, add_special_tokens=False)["input_ids"][0] for L in "ABCD"]
    a = scoring.next_token_logprobs(model, tok, prompts, cands, batch_size=2, shared_prefix=prefix)
    b = scoring.next_token_logprobs(model, tok, prompts, cands, batch_size=3)
    assert torch.allclose(a, b, atol=1e-4)
