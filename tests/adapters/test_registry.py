"""The adapter-method registry: a method registered from another module works everywhere without edits to
retain; ``scope`` confines LoRA/LoRAMoE to one submodule (an MLLM's language model)."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from tests.adapters.adapter_archs import build_tiny

from retain.adapters.methods import folder_kind, method_of, prepare_model, save_finetuned
from retain.adapters.registry import METHODS, AdapterMethod, all_methods, get_method, register_method
from retain.errors import RetainError


class NormsOnly(AdapterMethod):
    """A toy method defined outside retain: only the norm weights train; the folder is a whole model plus a
    marker file."""

    name = "norms_only"

    def prepare(self, model, config=None, scope=None):
        for n, p in model.named_parameters():
            p.requires_grad_("norm" in n)
        model._norms_only = True
        return model

    def owns(self, model):
        return getattr(model, "_norms_only", False)

    def save(self, model, folder: Path, base_model: str):
        model.save_pretrained(str(folder), safe_serialization=True)
        (folder / "norms_only.txt").write_text(base_model)

    def detects(self, folder: Path, meta):
        return (folder / "norms_only.txt").exists()

    def check(self, folder, meta, base_model, allow_pickle, opt_in, trust_remote_code):
        from retain.adapters.check import check_weights

        check_weights(folder, allow_pickle, opt_in)


@pytest.fixture
def norms_only():
    all_methods()  # the built-in methods first, as in any process
    register_method(NormsOnly)
    yield
    del METHODS[NormsOnly.name]


def test_builtin_methods_are_registered_in_order():
    assert [m.name for m in all_methods()][:3] == ["full", "lora", "loramoe"]
    with pytest.raises(RetainError, match=r"method='nope': use one of 'full', 'lora', 'loramoe'"):
        get_method("nope")


def test_a_method_registered_elsewhere_trains_saves_detects_and_loads(norms_only, tmp_path, smollm2_path):
    from transformers import AutoTokenizer

    from retain.models import load_model

    model = prepare_model(build_tiny("llama"), "norms_only")
    assert method_of(model) == "norms_only"
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all("norm" in n for n in trainable)
    with torch.no_grad():
        model.model.norm.weight.mul_(3.0)
    save_finetuned(model, tmp_path / "out", base_model="tiny", tokenizer=AutoTokenizer.from_pretrained(smollm2_path))
    assert folder_kind(tmp_path / "out") == "norms_only"
    loaded, _ = load_model(str(tmp_path / "out"), device="cpu")
    assert torch.equal(loaded.model.norm.weight, model.model.norm.weight)


def test_prepare_hands_the_scope_to_the_method(norms_only):
    seen = {}

    class Spy(NormsOnly):
        name = "spy"

        def prepare(self, model, config=None, scope=None):
            seen.update(config=config, scope=scope)
            return model

    register_method(Spy)
    try:
        prepare_model(build_tiny("llama"), "spy", config={"k": 1}, scope="model.layers.0")
    finally:
        del METHODS["spy"]
    assert seen == {"config": {"k": 1}, "scope": "model.layers.0"}


@pytest.mark.parametrize("method", ["lora", "loramoe"])
def test_a_scope_confines_the_adapter_to_the_language_model(tiny_mllm, method):  # noqa: F811
    from retain.adapters.config import LoRAConfig, LoRAMoEConfig

    def prepare(targets, scope):
        return prepare_model(copy.deepcopy(tiny_mllm[0]), method, lora=LoRAConfig(r=2, target_modules=targets),
                             loramoe=LoRAMoEConfig(num_experts=2, rank=2, target_modules=targets), scope=scope)

    def adapted(model):  # PEFT prefixes names with base_model.model.
        return {n.removeprefix("base_model.model.") for n, p in model.named_parameters() if p.requires_grad}

    scope = "model.language_model"
    inside = adapted(prepare(None, scope))
    assert inside and all(n.startswith(scope + ".") for n in inside)
    assert {n.split(".mlp.")[1].split(".")[0] for n in inside} == {"gate_proj", "up_proj", "down_proj"}
    # The projector's linear_1 is adaptable in the whole model, but not inside the scope.
    assert any(n.startswith("model.multi_modal_projector.") for n in adapted(prepare(["linear_1"], None)))
    with pytest.raises(RetainError, match="'linear_1' matches no Linear/Conv1D layer"):
        prepare(["linear_1"], scope)


def test_an_unknown_scope_is_one_line():
    with pytest.raises(RetainError, match="scope 'model.vision': the model has no such submodule"):
        prepare_model(build_tiny("llama"), "lora", scope="model.vision")


def test_a_loramoe_scope_is_recorded_and_reloaded(tmp_path, smollm2_path):
    from transformers import AutoTokenizer

    from retain.adapters.config import LoRAMoEConfig
    from retain.adapters.loramoe import loramoe_config, loramoe_layers
    from retain.models import load_model

    base = tmp_path / "base"
    build_tiny("llama").save_pretrained(base, safe_serialization=True)
    tok = AutoTokenizer.from_pretrained(smollm2_path)
    tok.save_pretrained(base)
    model = prepare_model(build_tiny("llama"), "loramoe", loramoe=LoRAMoEConfig(num_experts=2, rank=2),
                          scope="model.layers.1")
    assert {layer.name.split(".")[2] for layer in loramoe_layers(model)} == {"1"}
    save_finetuned(model, tmp_path / "out", base_model=str(base), tokenizer=tok)
    loaded, _ = load_model(str(tmp_path / "out"), device="cpu")
    assert loramoe_config(loaded).scope == "model.layers.1"
    assert [m.name for m in loramoe_layers(loaded)] == [m.name for m in loramoe_layers(model)]
