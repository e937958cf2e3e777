"""Training fixtures: a small arithmetic task set, a world set, and a recipe builder for the tiny model."""

from __future__ import annotations

import json
import random

import pytest
import yaml


@pytest.fixture(scope="session")
def toy_data(tmp_path_factory):
    """(task.jsonl in messages format, world.jsonl in Alpaca format); 16 + 8 short examples."""
    d = tmp_path_factory.mktemp("toy_data")
    rng = random.Random(0)
    with open(d / "task.jsonl", "w", encoding="utf-8") as f:
        for _ in range(16):
            a, b = rng.randint(1, 9), rng.randint(1, 9)
            msgs = [{"role": "user", "content": f"{a}+{b}?"}, {"role": "assistant", "content": f"{a}+{b}={a + b}"}]
            f.write(json.dumps({"messages": msgs}) + "\n")
    with open(d / "world.jsonl", "w", encoding="utf-8") as f:
        for i in range(8):
            f.write(json.dumps({"instruction": f"Color {i}?", "output": "The sky is blue."}) + "\n")
    return d / "task.jsonl", d / "world.jsonl"


@pytest.fixture
def make_recipe(tmp_path, tiny_llama_path, toy_data):
    """Build a recipe dict for the tiny model (override any section), optionally written to YAML."""

    def build(method="lora", write=False, **sections):
        task, world = toy_data
        data = {
            "model": {"name": tiny_llama_path},
            "method": method,
            "lora": {"r": 4, "alpha": 8, "dropout": 0.0},
            "loramoe": {"num_experts": 2, "rank": 2, "dropout": 0.05},
            "datasets": [{"path": str(task), "weight": 2, "type": "task"},
                         {"path": str(world), "weight": 1, "type": "world"}],
            "optim": {"lr": 3e-3, "warmup_steps": 1, "schedule": "constant"},
            "train": {"output_dir": str(tmp_path / "run"), "max_steps": 6, "batch_size": 4,
                      "max_length": 48, "progress": False},
        }
        for key, value in sections.items():
            data[key] = {**data[key], **value} if isinstance(value, dict) and isinstance(data.get(key), dict) else value
        if write:
            path = tmp_path / "recipe.yaml"
            path.write_text(yaml.safe_dump(data), encoding="utf-8")
            return path
        return data

    return build
