"""prepare_model / save_finetuned / load_finetuned for full, LoRA (PEFT) and LoRAMoE; training on SmolLM2."""

from __future__ import annotations

import json

import pytest
import torch
from tests.adapters.adapter_archs import build_tiny, randomize_adapters

from retain.adapters.config import LoRAConfig, LoRAMoEConfig
from retain.adapters.loramoe import lbc_loss, sample_types
from retain.adapters.methods import folder_kind, prepare_model, save_finetuned
from retain.errors import RetainError
from retain.models import load_finetuned


@pytest.fixture(scope="module")
def tokenizer(smollm2_path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(smollm2_path)


def _base_folder(tmp_path, arch, tokenizer) -> str:
    folder = tmp_path / f"base_{arch}"
    build_tiny(arch).save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
    return str(folder)


def _logits(model, batch):
    ids, mask = batch
    with torch.no_grad():
        return model(input_ids=ids, attention_mask=mask).logits


def test_loramoe_save_load_round_trip(arch, batch, tmp_path, tokenizer):
    base = _base_folder(tmp_path, arch, tokenizer)
    model = prepare_model(build_tiny(arch), "loramoe", loramoe=LoRAMoEConfig(num_experts=3, rank=2))
    randomize_adapters(model)
    out = tmp_path / "adapter"
    save_finetuned(model, out, base_model=base)
    assert folder_kind(out) == "loramoe"
    meta = json.loads((out / "adapter_config.json").read_text())
    assert meta["method"] == "loramoe" and meta["base_model"] == base and meta["config"]["num_experts"] == 3
    from safetensors.torch import load_file

    saved = load_file(str(out / "adapter_model.safetensors"))
    assert {k.rsplit(".", 1)[-1] for k in saved} == {"lora_A", "lora_B", "router"}  # adapter weights only
    loaded, tok = load_finetuned(out)
    assert not loaded.training and tok is not None
    assert (_logits(model, batch) - _logits(loaded, batch)).abs().max() <= 1e-5
    assert not torch.equal(_logits(loaded, batch), _logits(build_tiny(arch), batch))


@pytest.mark.parametrize("arch_name", ["llama", "gpt2"])
def test_lora_and_full_round_trip(arch_name, batch, tmp_path, tokenizer):
    base = _base_folder(tmp_path, arch_name, tokenizer)
    lora = prepare_model(build_tiny(arch_name), "lora", lora=LoRAConfig(r=4))
    with torch.no_grad():
        for name, p in lora.named_parameters():
            if "lora_B" in name:
                p.normal_(std=0.1)
    lora.eval()  # get_peft_model leaves the model in training mode (LoRA dropout on)
    save_finetuned(lora, tmp_path / "lora", base_model=base)
    meta = json.loads((tmp_path / "lora" / "adapter_config.json").read_text())
    assert meta["peft_type"] == "LORA" and meta["base_model_name_or_path"] == base
    loaded, _ = load_finetuned(tmp_path / "lora")
    from peft import PeftModel

    assert isinstance(loaded, PeftModel)
    assert (_logits(lora, batch) - _logits(loaded, batch)).abs().max() <= 1e-5

    full = prepare_model(build_tiny(arch_name, seed=5), "full")
    save_finetuned(full, tmp_path / "full", base_model=base)
    assert folder_kind(tmp_path / "full") == "full"
    assert (tmp_path / "full" / "model.safetensors").exists()
    loaded, _ = load_finetuned(tmp_path / "full")
    assert (_logits(full, batch) - _logits(loaded, batch)).abs().max() <= 1e-5


def test_load_errors_name_the_problem(tmp_path):
    with pytest.raises(RetainError, match="no such folder"):
        load_finetuned(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(RetainError, match="not a fine-tuned model folder"):
        load_finetuned(tmp_path / "empty")


@pytest.mark.slow
def test_a_few_steps_on_smollm2_lower_the_loss(smollm2_path, tokenizer):
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(smollm2_path, dtype=torch.float32)
    model = prepare_model(model, "loramoe", loramoe=LoRAMoEConfig(dropout=0.0))
    texts = ["The capital of Zorblatt is Quenvale, a city of glass towers.",
             "Quenvale exports blue salt and copper bells to the northern isles."]
    enc = tokenizer(texts, return_tensors="pt", padding=True)
    labels = enc.input_ids.masked_fill(enc.attention_mask == 0, -100)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=2e-3)
    model.train()
    losses = []
    for _ in range(4):
        with sample_types(model, [0, 0]):
            out = model(input_ids=enc.input_ids, attention_mask=enc.attention_mask, labels=labels)
        aux = lbc_loss(model)
        assert aux is not None and aux.requires_grad
        opt.zero_grad()
        (out.loss + aux).backward()
        opt.step()
        losses.append(out.loss.item())
    assert losses[-1] < losses[0] - 0.2, losses
