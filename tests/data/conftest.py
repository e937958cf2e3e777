"""Data fixtures: a folder of small images for the image records of the one loader."""

from __future__ import annotations

import pytest


@pytest.fixture
def image_dir(tmp_path):
    """A folder with red.png (16 x 16), blue.png (16 x 24) and broken.png (not an image)."""
    from PIL import Image

    d = tmp_path / "imgs"
    d.mkdir()
    Image.new("RGB", (16, 16), (255, 0, 0)).save(d / "red.png")
    Image.new("RGB", (16, 24), (0, 0, 255)).save(d / "blue.png")
    (d / "broken.png").write_bytes(b"not a png")
    return d
