"""Prefix sharing in the ``hf`` backend: grouping, the bounded LRU, and outputs equal to the unshared path."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from retain.errors import RetainError
from retain.generation.backends import BackendConfig, SamplingParams, make_backend
from retain.generation.backends.prefix_cache import PrefixCache, group_by_prefix

SYSTEM = {"role": "system", "content": "You are a helpful teacher."}


def tree_conversations() -> list[list[dict[str, str]]]:
    """A TG level: 3 parents' dialogues with 4 children each (suffixes of different lengths), plus a loner."""
    convs = []
    for topic in ["volcanoes", "jazz", "DNA"]:
        parent = [SYSTEM, {"role": "user", "content": f"Explain {topic} in detail."},
                  {"role": "assistant", "content": f"{topic.capitalize()} is a broad subject with a long history. " * 4}]
        for q in ["Why?", "How does it work in practice for most people today?", "Give an example.", "Who first studied it?"]:
            convs.append(parent + [{"role": "user", "content": q}])
    convs.insert(5, [{"role": "user", "content": "hi"}])
    return convs


GREEDY = SamplingParams(max_new_tokens=10, temperature=0.0)


def pair(path: str, batch_size: int):
    shared = make_backend(BackendConfig(model=path, batch_size=batch_size, progress=False))
    plain = make_backend(BackendConfig(model=path, batch_size=batch_size, progress=False, prefix_sharing=False))
    return shared, plain


def test_grouping_puts_siblings_together_and_shares_less_than_each_prompt():
    prompts = [[1, 2, 3, 4, 5, 9], [7, 8], [1, 2, 3, 4, 5, 6, 6], [1, 2, 3, 4, 5, 7], [1, 2, 8]]
    groups = group_by_prefix(prompts)
    assert sorted(r for g in groups for r in g.rows) == list(range(len(prompts)))
    by_rows = {tuple(sorted(g.rows)): g.shared for g in groups}
    assert by_rows[(0, 2, 3)] == 5  # the three siblings share [1..5]; [1, 2, 8] does not join for 2 tokens
    assert by_rows[(1,)] == 1 and by_rows[(4,)] == 2  # a loner's prefix is its prompt but the last token
    for g in groups:
        assert all(0 <= g.shared < len(prompts[r]) and prompts[r][: g.shared] == prompts[g.rows[0]][: g.shared]
                   for r in g.rows)
    assert group_by_prefix([[5], [5]])[0].shared == 0  # one-token prompts: nothing to share
    assert group_by_prefix([]) == []


def test_lru_longest_match_subsumption_and_bounds():
    def kv(n):  # one layer, 1 head, n tokens, dim 1: values are the token positions
        t = torch.arange(n, dtype=torch.float32).view(1, n, 1)
        return [(t, t)]

    cache = PrefixCache(max_tokens=10, max_entries=3)
    cache.put(np.array([1, 2, 3]), kv(3))
    cache.put(np.array([1, 2, 3, 4]), kv(4))  # covers [1, 2, 3]: that entry goes
    assert (len(cache), cache.tokens) == (1, 4)
    m, hit = cache.lookup(np.array([1, 2, 3, 9, 9]))
    assert m == 3 and hit[0][0].shape[1] == 4
    assert cache.lookup(np.array([2, 2]))[1] is None
    cache.put(np.array([5, 6, 7, 8]), kv(4))
    cache.put(np.array([9, 9, 9]), kv(3))  # 11 tokens > 10: the least recently used ([1..4]) is evicted
    assert cache.tokens <= 10 and cache.lookup(np.array([1, 2]))[1] is None
    cache.put(np.arange(20, 40), kv(20))  # larger than the whole budget: not stored
    assert cache.tokens <= 10 and cache.lookup(np.arange(20, 40))[1] is None
    cache.put(np.array([3]), kv(1))
    cache.put(np.array([4]), kv(1))
    assert len(cache) <= 3  # entry bound
    assert (cache.hits, cache.reused_tokens) == (1, 3)


@pytest.mark.parametrize("batch_size", [4, 32])  # 4: groups straddle batches; 32: one batch
def test_shared_greedy_equals_unshared_tiny_llama(tiny_llama_path, batch_size):
    shared, plain = pair(tiny_llama_path, batch_size)
    assert shared.sharing and not plain.sharing
    convs = tree_conversations()
    want = [c.text for c in plain.chat(convs, GREEDY)]
    got = shared.chat(convs, GREEDY)
    assert [c.text for c in got] == want
    assert [c.prompt_tokens for c in got] == [len(shared.encode(c)) for c in convs]
    assert shared.stats["prompt_tokens"] == plain.stats["prefilled_tokens"]
    assert shared.stats["prefilled_tokens"] < 0.5 * shared.stats["prompt_tokens"]  # each dialogue prefilled once
    before = shared.stats["prefilled_tokens"]
    again = shared.chat(convs, GREEDY)  # second call: prefixes come from the LRU
    assert [c.text for c in again] == want
    assert shared.prefix_cache.hits > 0
    assert shared.stats["prefilled_tokens"] - before < (before - 0) / 2


def test_shared_greedy_equals_unshared_smollm2(smollm2_path):
    shared, plain = pair(smollm2_path, 6)
    convs = tree_conversations()
    want = plain.chat(convs, GREEDY)
    got = shared.chat(convs, GREEDY)
    assert [c.text for c in got] == [c.text for c in want]
    assert [(c.completion_tokens, c.finish_reason) for c in got] == [(c.completion_tokens, c.finish_reason) for c in want]
    assert len({c.text for c in got}) > 5  # real, distinct replies (not all empty)


def test_seeded_sampling_with_sharing_is_reproducible(tiny_llama_path):
    params = SamplingParams(max_new_tokens=6, temperature=1.0, top_p=0.9, seed=11)
    convs = tree_conversations()
    a, _ = pair(tiny_llama_path, 4)
    b, _ = pair(tiny_llama_path, 4)
    first = [c.text for c in a.chat(convs, params)]
    assert first == [c.text for c in b.chat(convs, params)]  # fresh backend, same seed
    assert first == [c.text for c in a.chat(convs, params)]  # warm LRU, same seed
    assert first != [c.text for c in a.chat(convs, SamplingParams(**{**params.to_dict(), "seed": 12}))]


def test_lru_is_dropped_when_weights_change_in_place(tiny_llama_path):
    shared, plain = pair(tiny_llama_path, 8)
    convs = tree_conversations()[:4]
    shared.chat(convs, GREEDY)
    assert len(shared.prefix_cache) > 0
    with torch.no_grad():  # as an optimizer step would
        for m in (shared.model, plain.model):
            for p in m.parameters():
                p.mul_(1.5)
    assert [c.text for c in shared.chat(convs, GREEDY)] == [c.text for c in plain.chat(convs, GREEDY)]


def test_prefix_cache_tokens_must_not_be_negative():
    with pytest.raises(RetainError, match="prefix_cache_tokens"):
        make_backend(BackendConfig(prefix_cache_tokens=-1))


def test_attention_kernels_leave_out_cudnn_on_cuda_only():
    """On CUDA, generation runs without cuDNN's SDPA kernel (a plan per new shape; see hf_backend); the flags
    come back on exit, and on CPU nothing changes."""
    from retain.generation.backends.hf_backend import attention_kernels

    before = torch.backends.cuda.cudnn_sdp_enabled()
    with attention_kernels(torch.device("cuda")):
        assert not torch.backends.cuda.cudnn_sdp_enabled()
        assert torch.backends.cuda.flash_sdp_enabled() and torch.backends.cuda.mem_efficient_sdp_enabled()
    assert torch.backends.cuda.cudnn_sdp_enabled() == before
    with attention_kernels(torch.device("cpu")):
        assert torch.backends.cuda.cudnn_sdp_enabled() == before
