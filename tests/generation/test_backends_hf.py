"""The in-process ``hf`` backend on a tiny random Llama (SmolLM2's tokenizer and chat template)."""

from __future__ import annotations

import pytest
import torch

from retain.errors import RetainError
from retain.generation.backends import BackendConfig, SamplingParams, make_backend
from retain.generation.backends.hf_backend import HFBackend

# Different lengths, so batches need real left padding.
CONVS = [
    [{"role": "user", "content": "hi"}],
    [{"role": "user", "content": "Tell me everything you know about the history of the Roman empire, in detail."}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is two plus two?"}],
    [{"role": "user", "content": "Q1"}, {"role": "assistant", "content": "A1"}, {"role": "user", "content": "And a follow-up question?"}],
    [{"role": "user", "content": "Name a colour."}],
]
GREEDY = SamplingParams(max_new_tokens=6, temperature=0.0)


@pytest.fixture(scope="module")
def tiny_backend(tiny_llama_path) -> HFBackend:
    return make_backend(BackendConfig(kind="hf", model=tiny_llama_path, batch_size=3, progress=False))


def test_batched_greedy_equals_one_at_a_time_in_input_order(tiny_backend):
    batched = tiny_backend.chat(CONVS, GREEDY)
    single = [tiny_backend.chat([c], GREEDY)[0] for c in CONVS]
    assert [c.text for c in batched] == [c.text for c in single]
    assert [c.prompt_tokens for c in batched] == [len(tiny_backend.encode(c)) for c in CONVS]
    assert len({c.prompt_tokens for c in batched}) == len(CONVS)  # the padding case really is exercised


def test_length_finish_and_token_counts(tiny_backend):
    # A random model essentially never emits <|im_end|> within 6 tokens.
    out = tiny_backend.chat(CONVS[:2], GREEDY)
    assert all(c.finish_reason == "length" and c.completion_tokens == 6 for c in out)


def test_stops_at_end_of_turn(tiny_llama_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_llama_path)
    model = AutoModelForCausalLM.from_pretrained(tiny_llama_path)
    backend = HFBackend(BackendConfig(progress=False), model=model, tokenizer=tok, name="tiny")
    eot = tok.convert_tokens_to_ids("<|im_end|>")
    assert eot in backend.stop_ids

    def force_eot(module, inputs, logits):  # (B, T, V): make the end-of-turn token win every step
        logits[..., eot] += 1e4
        return logits

    handle = model.lm_head.register_forward_hook(force_eot)
    try:
        out = backend.chat(CONVS[:3], SamplingParams(max_new_tokens=8, temperature=0.7, seed=0))
    finally:
        handle.remove()
    assert [(c.text, c.finish_reason, c.completion_tokens) for c in out] == [("", "stop", 1)] * 3
    assert backend.name == "tiny"


def test_sampling_is_reproducible_per_seed_and_leaves_global_rng_alone(tiny_backend):
    params = SamplingParams(max_new_tokens=5, temperature=1.0, top_p=1.0, seed=7)
    convs = CONVS[:3]  # one batch of 3 (batch_size=3)
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    a = tiny_backend.chat(convs, params)
    after = torch.rand(1)
    b = tiny_backend.chat(convs, params)
    c = tiny_backend.chat(convs, SamplingParams(max_new_tokens=5, temperature=1.0, top_p=1.0, seed=8))
    assert [x.text for x in a] == [x.text for x in b]
    assert [x.text for x in a] != [x.text for x in c]
    assert torch.equal(before, after)


def test_empty_input_and_bad_model_path(tiny_backend, tmp_path):
    assert tiny_backend.chat([], GREEDY) == []
    with pytest.raises(RetainError, match="no such folder"):
        make_backend(BackendConfig(model=str(tmp_path / "missing")))
    with pytest.raises(RetainError, match="batch_size"):
        make_backend(BackendConfig(batch_size=0))
    with pytest.raises(RetainError, match="unknown backend"):
        make_backend(BackendConfig(kind="nope"))  # type: ignore[arg-type]
