"""Adapter configs: the blc_* -> lbc_* rename (old folders, recipes and --set still load, one warning line
per old key) and the checks in __post_init__."""

from __future__ import annotations

import json
import logging

import pytest

from retain.adapters.config import LoRAConfig, LoRAMoEConfig
from retain.evaluation.config import RoutingReportConfig
from retain.errors import RetainError

OLD = {"blc_weight": 0.25, "blc_alpha": 0.3, "blc_reduction": "sum", "blc_eps": 1e-8, "blc_paper_sign": True}
NEW = {"lbc_beta": 0.25, "lbc_delta": 0.3, "lbc_reduction": "sum", "lbc_eps": 1e-8, "lbc_paper_sign": True}


def _warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and "deprecated" in r.getMessage()]


def test_old_keys_read_as_new_ones_with_one_line_each(caplog):
    with caplog.at_level(logging.WARNING):
        cfg = LoRAMoEConfig.from_dict({"num_experts": 4, **OLD}, where="x.json: config")
    assert {k: getattr(cfg, k) for k in NEW} == NEW and cfg.num_experts == 4
    lines = _warnings(caplog)
    assert len(lines) == len(OLD) and all("\n" not in m for m in lines)
    assert "x.json: config: 'blc_weight' is deprecated; it is now 'lbc_beta'" in lines[0]


def test_both_spellings_at_once_is_an_error():
    with pytest.raises(RetainError, match="both 'blc_weight' and its new name 'lbc_beta'"):
        LoRAMoEConfig.from_dict({"blc_weight": 0.1, "lbc_beta": 0.2})


def test_an_old_adapter_folder_still_loads(tmp_path, smollm2_path, caplog):
    from transformers import AutoTokenizer
    from tests.adapters.adapter_archs import build_tiny, randomize_adapters

    from retain.adapters.loramoe import loramoe_config
    from retain.adapters.methods import prepare_model, save_finetuned
    from retain.models import load_model

    base = tmp_path / "base"
    build_tiny("llama").save_pretrained(base, safe_serialization=True)
    tok = AutoTokenizer.from_pretrained(smollm2_path)
    model = prepare_model(build_tiny("llama"), "loramoe", loramoe=LoRAMoEConfig(num_experts=2, rank=2, **NEW))
    randomize_adapters(model)
    save_finetuned(model, tmp_path / "old", base_model=str(base), tokenizer=tok)
    path = tmp_path / "old" / "adapter_config.json"
    meta = json.loads(path.read_text())
    for old, new in LoRAMoEConfig.RENAMED.items():  # as a folder written before the rename
        meta["config"][old] = meta["config"].pop(new)
    meta["config"].pop("scope")  # nor did old folders have a scope
    path.write_text(json.dumps(meta))
    with caplog.at_level(logging.WARNING):
        loaded, _ = load_model(str(tmp_path / "old"), device="cpu")
    cfg = loramoe_config(loaded)
    assert {k: getattr(cfg, k) for k in NEW} == NEW and cfg.scope is None
    assert any("'blc_weight' is deprecated" in m for m in _warnings(caplog))


def test_an_old_recipe_and_old_set_keys_still_load(tmp_path, caplog):
    from retain.training.recipe import load_recipe

    data = tmp_path / "d.jsonl"
    data.write_text('{"prompt": "q", "completion": "a"}\n')
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"method: loramoe\nloramoe:\n  blc_weight: 0.2\n  blc_alpha: 0.3\n"
                      f"datasets:\n  - path: {data}\n    type: task\n")
    with caplog.at_level(logging.WARNING):
        r = load_recipe(recipe, ["loramoe.blc_reduction=sum"])
    assert (r.loramoe.lbc_beta, r.loramoe.lbc_delta, r.loramoe.lbc_reduction) == (0.2, 0.3, "sum")
    assert len(_warnings(caplog)) == 3
    with pytest.raises(RetainError, match="loramoe.lbc_delta=1.5: must be in"):
        load_recipe(recipe, ["loramoe.blc_alpha=1.5"])


@pytest.mark.parametrize("make, match", [
    (lambda: LoRAConfig(r=0), "lora.r=0: must be >= 1"),
    (lambda: LoRAConfig(dropout=1.0), r"lora.dropout=1.0: must be in \[0, 1\)"),
    (lambda: LoRAMoEConfig(lbc_delta=1.0), r"loramoe.lbc_delta=1.0: must be in \[0, 1\)"),
    (lambda: LoRAMoEConfig(lbc_beta=-1), "loramoe.lbc_beta=-1: must be >= 0"),
    (lambda: RoutingReportConfig(adapter_dir="x"), "--data: required"),
    (lambda: RoutingReportConfig(adapter_dir="x", data="d.jsonl", batch_size=0), "batch_size >= 1"),
])
def test_configs_check_themselves(make, match):
    with pytest.raises(RetainError, match=match):
        make()
