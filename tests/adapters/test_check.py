"""Fine-tuned folders are checked completely before any model runs: files, config keys, tensor shapes."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from tests.adapters.adapter_archs import build_tiny

from retain.adapters.check import check_weights
from retain.adapters.config import LoRAConfig, LoRAMoEConfig
from retain.adapters.methods import check_finetuned_folder, prepare_model, save_finetuned
from retain.errors import RetainError
from retain.models import load_finetuned


@pytest.fixture(scope="module")
def folders(tmp_path_factory, smollm2_path):
    """{base, lora, loramoe, full}: a tiny Llama base folder and one fine-tuned folder of each kind."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(smollm2_path)
    root = tmp_path_factory.mktemp("check")
    base = root / "base"
    build_tiny("llama").save_pretrained(base, safe_serialization=True)
    tok.save_pretrained(base)
    out = {"base": base}
    for kind, kw in (("lora", {"lora": LoRAConfig(r=4)}), ("loramoe", {"loramoe": LoRAMoEConfig(num_experts=2, rank=2)}),
                     ("full", {})):
        save_finetuned(prepare_model(build_tiny("llama"), kind, **kw), root / kind, base_model=str(base), tokenizer=tok)
        out[kind] = root / kind
    return out


def _copy(folders, kind, tmp_path):
    dst = tmp_path / kind
    shutil.copytree(folders[kind], dst)
    return dst


def _edit_config(folder, change):
    path = folder / "adapter_config.json"
    meta = json.loads(path.read_text())
    change(meta)
    path.write_text(json.dumps(meta))


def test_good_folders_pass(folders):
    assert [check_finetuned_folder(folders[k]) for k in ("lora", "loramoe", "full")] == ["lora", "loramoe", "full"]


@pytest.mark.parametrize("kind", ["lora", "loramoe"])
def test_missing_adapter_weights_fail_before_loading_any_model(folders, tmp_path, kind, monkeypatch):
    folder = _copy(folders, kind, tmp_path)
    (folder / "adapter_model.safetensors").unlink()
    import transformers

    def no_load(*a, **k):
        raise AssertionError("a model was loaded before the folder was checked")

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", no_load)
    with pytest.raises(RetainError) as e:
        load_finetuned(folder)
    assert str(e.value) == f"{folder}: no adapter_model weights (*.safetensors); the folder is incomplete"


@pytest.mark.parametrize("kind, tensor", [
    ("lora", "base_model.model.model.layers.1.mlp.up_proj.lora_A.weight"),
    ("loramoe", "model.layers.1.mlp.up_proj.lora_B"),
])
def test_a_tensor_of_the_wrong_shape_is_named_with_both_shapes(folders, tmp_path, kind, tensor):
    from safetensors.torch import load_file, save_file

    folder = _copy(folders, kind, tmp_path)
    tensors = load_file(str(folder / "adapter_model.safetensors"))
    want = tuple(tensors[tensor].shape)
    bad = (want[0], want[1] + 3) if kind == "lora" else (want[0] + 3, want[1])
    tensors[tensor] = torch.zeros(bad)
    save_file(tensors, str(folder / "adapter_model.safetensors"))
    with pytest.raises(RetainError) as e:
        load_finetuned(folder)
    msg = str(e.value)
    assert f"{tensor} has shape {bad}, the base model expects {want}" in msg and "\n" not in msg


def test_lora_adapter_for_another_architecture(folders, tmp_path):
    from safetensors.torch import load_file, save_file

    folder = _copy(folders, "lora", tmp_path)
    tensors = load_file(str(folder / "adapter_model.safetensors"))
    tensors["base_model.model.model.layers.7.mlp.up_proj.lora_A.weight"] = torch.zeros(4, 64)
    save_file(tensors, str(folder / "adapter_model.safetensors"))
    with pytest.raises(RetainError, match=r"module 'model.layers.7.mlp.up_proj', which the base model does not have"):
        check_finetuned_folder(folder)


@pytest.mark.parametrize("kind, change, needle", [
    ("lora", lambda m: m.update(lora_alhpa=8), "unknown key 'lora_alhpa' for a LORA adapter"),
    ("loramoe", lambda m: m.update(notes="x"), "unknown key 'notes'; a LoRAMoE adapter_config.json holds only"),
    ("loramoe", lambda m: m["config"].update(num_expert=2), "config: unknown LoRAMoE key 'num_expert'"),
    ("lora", lambda m: m.update(peft_type="NOPE"), "peft_type 'NOPE' is not a PEFT method"),
])
def test_unknown_adapter_config_keys_are_refused(folders, tmp_path, kind, change, needle):
    folder = _copy(folders, kind, tmp_path)
    _edit_config(folder, change)
    with pytest.raises(RetainError, match=needle):
        load_finetuned(folder)


def test_pickle_weights_are_refused_unless_allowed(folders, tmp_path):
    folder = _copy(folders, "full", tmp_path)
    state = {k: v.contiguous() for k, v in load_finetuned(folder)[0].state_dict().items()}
    (folder / "model.safetensors").unlink()
    torch.save(state, folder / "pytorch_model.bin")
    with pytest.raises(RetainError) as e:
        load_finetuned(folder)
    assert "weights only as pickle (pytorch_model.bin)" in str(e.value) and "--allow_pickle true" in str(e.value)
    with pytest.raises(RetainError, match="--set model.allow_pickle=true"):
        check_weights(folder, opt_in="--set model.allow_pickle=true")
    model, _ = load_finetuned(folder, allow_pickle=True)
    assert torch.equal(model.state_dict()["model.norm.weight"], state["model.norm.weight"])
