"""Multimodal fixtures: ``image_dir`` from tests/data (``tiny_mllm`` is in tests/conftest.py)."""

from __future__ import annotations

from tests.data.conftest import image_dir  # noqa: F401  (fixture)
