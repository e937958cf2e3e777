"""Evaluation fixtures: the tiny random Llama loaded once, and a perturbed copy of it."""

from __future__ import annotations

import copy

import pytest


@pytest.fixture(scope="session")
def tiny(tiny_llama_path):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_llama_path)
    model = AutoModelForCausalLM.from_pretrained(tiny_llama_path, dtype=torch.float32).eval()
    return model, tok


@pytest.fixture(scope="session")
def tiny_perturbed(tiny):
    import torch

    model, tok = tiny
    other = copy.deepcopy(model)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in other.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    return other, tok
