"""Multimodal fixtures: a tiny random LLaVA (seconds); ``image_dir`` from tests/data."""

from __future__ import annotations

import pytest

from tests.data.conftest import image_dir  # noqa: F401  (fixture)


@pytest.fixture(scope="session")
def tiny_mllm(smollm2_path):
    """(model, processor): random FastVLM/LLaVA, EfficientNet width 0.25, 2-layer Llama, 64 px -> 4 image tokens."""
    from retain.multimodal.model import tiny_mllm as build

    return build(smollm2_path)
