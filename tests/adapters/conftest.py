"""Fixtures over the architecture table in :mod:`adapter_archs`."""

from __future__ import annotations

import pytest
import torch
from tests.adapters.adapter_archs import ARCHS, VOCAB


@pytest.fixture(params=sorted(ARCHS))
def arch(request) -> str:
    return request.param


@pytest.fixture
def batch():
    """Two sequences of 7 tokens; the second is right-padded after 4 real tokens."""
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, VOCAB, (2, 7), generator=g)
    mask = torch.ones(2, 7, dtype=torch.long)
    mask[1, 4:] = 0
    return ids, mask


@pytest.fixture(autouse=True)
def _one_torch_thread():
    """Tiny models are dominated by small ops, which stall in thread barriers when the CI machine is
    oversubscribed (other test areas run at the same time); one thread is faster and steadier here."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
