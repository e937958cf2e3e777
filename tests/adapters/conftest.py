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
