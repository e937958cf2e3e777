"""Multimodal fixtures: a tiny random LLaVA (seconds) and a folder of small PNGs."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def tiny_mllm(smollm2_path):
    """(model, processor): random FastVLM/LLaVA, EfficientNet width 0.25, 2-layer Llama, 64 px -> 4 image tokens."""
    from retain.multimodal.model import tiny_mllm as build

    return build(smollm2_path)


@pytest.fixture
def image_dir(tmp_path):
    """A folder with red.png, blue.png (16 x 16 RGB) and broken.png (not an image)."""
    from PIL import Image

    d = tmp_path / "imgs"
    d.mkdir()
    Image.new("RGB", (16, 16), (255, 0, 0)).save(d / "red.png")
    Image.new("RGB", (16, 24), (0, 0, 255)).save(d / "blue.png")
    (d / "broken.png").write_bytes(b"not a png")
    return d
