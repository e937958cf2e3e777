"""The miniature MLLM: a real transformers LLaVA (FastVLM class) that saves and reloads with the Auto
classes, the EfficientNet-Lite0 key mapping, the text path equal to SmolLM2, the frozen tower."""

from __future__ import annotations

import json

import pytest
import torch

from retain.errors import RetainError
from retain.multimodal import model as mm


def test_lite0_keys_all_map_and_fill_the_encoder():
    from transformers import EfficientNetModel

    enc = EfficientNetModel(mm.efficientnet_lite0_config())
    target = enc.state_dict()
    src = torch.load(mm.lite0_weights_path(), map_location="cpu", weights_only=True)
    sd = mm.lite0_state_dict(target, src)
    assert set(sd) == set(target)
    assert enc.load_state_dict(sd, strict=True)  # no missing or unexpected key
    # every Lite0 tensor but the ImageNet classifier lands somewhere, unchanged
    mapped = {mm.lite0_key(k): v for k, v in src.items() if not k.startswith("_fc.")}
    assert len(mapped) == len(src) - 2
    assert all(torch.equal(sd[k], v) for k, v in mapped.items())
    assert mm.lite0_key("_blocks.3._bn1.weight") == "encoder.blocks.3.depthwise_conv.depthwise_norm.weight"
    with pytest.raises(RetainError, match="unexpected key"):
        mm.lite0_key("_blocks.0._se_reduce.weight")


def test_squeeze_excite_gate_is_exactly_identity():
    from transformers import EfficientNetModel

    enc = EfficientNetModel(mm.efficientnet_lite0_config()).eval()
    enc.load_state_dict(mm.lite0_state_dict(enc.state_dict()))
    se = enc.encoder.blocks[3].squeeze_excite
    x = torch.randn(2, se.dim, 5, 5) * 10
    assert torch.equal(se(x), x)


@pytest.mark.slow
def test_lite0_classifies_easy_vqa_circles_as_balls():
    """The pretrained encoder is really loaded: with its own ImageNet head, easy-VQA's red circles
    (train images 4 and 6) come out as ImageNet class 722 'ping-pong ball'; rectangles do not."""
    import easy_vqa
    from PIL import Image
    from transformers import EfficientNetForImageClassification

    clf = EfficientNetForImageClassification(mm.efficientnet_lite0_config(num_labels=1000)).eval()
    src = torch.load(mm.lite0_weights_path(), map_location="cpu", weights_only=True)
    body = {k.removeprefix("efficientnet."): v for k, v in clf.state_dict().items() if k.startswith("efficientnet.")}
    sd = {f"efficientnet.{k}": v for k, v in mm.lite0_state_dict(body, src).items()}
    sd.update({"classifier.weight": src["_fc.weight"], "classifier.bias": src["_fc.bias"]})
    clf.load_state_dict(sd, strict=True)
    proc = mm.build_processor(_any_tokenizer(), 224).image_processor
    paths = easy_vqa.get_train_image_paths()
    pix = proc([Image.open(paths[i]) for i in (0, 4, 6)], return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        top = clf(pixel_values=pix).logits.argmax(-1).tolist()
    assert top[1] == top[2] == 722 and top[0] != 722


def _any_tokenizer():
    from retain.assets import smollm2_path

    return mm.image_tokenizer(smollm2_path())


def test_image_token_is_smollm2_spare_token_and_template_renders_parts(smollm2_path):
    from transformers import AutoTokenizer

    base = AutoTokenizer.from_pretrained(smollm2_path)
    tok = mm.image_tokenizer(smollm2_path)
    assert len(tok) == len(base)
    assert tok.convert_tokens_to_ids("<image>") == 16
    text = "Hello, <b>world</b>! 3 + 4 = 7"
    assert tok(text)["input_ids"] == base(text)["input_ids"]
    msgs = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]
    assert tok.apply_chat_template(msgs, tokenize=False) == base.apply_chat_template(msgs, tokenize=False)
    parts = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Hi"}]}]
    assert "<|im_start|>user\n<image>\nHi<|im_end|>" in tok.apply_chat_template(parts, tokenize=False)


def test_tiny_llava_forward_loss_and_roundtrip(tiny_mllm, tmp_path):
    from PIL import Image
    from transformers import AutoModelForImageTextToText, AutoProcessor

    model, proc = tiny_mllm
    assert type(model).__name__ == "FastVlmForConditionalGeneration" and model.config.model_type == "fast_vlm"
    text = proc.apply_chat_template([{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "x?"}]}],
                                    add_generation_prompt=True)
    batch = proc(images=[Image.new("RGB", (40, 30), (0, 200, 0))], text=[text], return_tensors="pt")
    assert batch["pixel_values"].shape == (1, 3, 64, 64)
    assert int((batch["input_ids"] == model.config.image_token_id).sum()) == 4  # (64 / 32) ** 2
    with torch.no_grad():
        out = model(**batch, labels=batch["input_ids"])
    assert torch.isfinite(out.loss) and out.image_hidden_states.shape == (1, 4, 64)

    folder = mm.save_mllm(model, proc, tmp_path / "mllm")
    cfg = json.loads((folder / "config.json").read_text())
    assert cfg["vision_config"]["model_type"] == "efficientnet" and "auto_map" not in cfg
    assert (folder / "model.safetensors").is_file() and not list(folder.glob("*.bin"))
    again = AutoModelForImageTextToText.from_pretrained(folder, trust_remote_code=False).eval()
    proc2 = AutoProcessor.from_pretrained(folder, trust_remote_code=False)
    batch2 = proc2(images=[Image.new("RGB", (40, 30), (0, 200, 0))], text=[text], return_tensors="pt")
    assert torch.equal(batch2["input_ids"], batch["input_ids"])
    assert torch.equal(batch2["pixel_values"], batch["pixel_values"])
    with torch.no_grad():
        assert torch.equal(again(**batch2).logits, model(**batch).logits)
    assert mm.is_mllm_folder(folder) and not mm.is_mllm_folder(tmp_path)


def test_load_mllm_refuses_a_text_model_folder(tiny_llama_path):
    with pytest.raises(RetainError, match="no vision_config"):
        mm.load_mllm(tiny_llama_path)


def test_freeze_keeps_tower_in_eval_and_batchnorm_stats_fixed(tiny_mllm):
    import copy

    model = copy.deepcopy(tiny_mllm[0])
    mm.freeze_vision_tower(model)
    model.train()
    before = {k: v.clone() for k, v in model.model.vision_tower.state_dict().items()}
    ids = torch.full((2, 4), model.config.image_token_id)  # 4 image tokens per 64 px image
    out = model(input_ids=ids, pixel_values=torch.randn(2, 3, 64, 64), labels=ids)
    out.loss.backward()
    tower = model.model.vision_tower
    assert not tower.training and all(not p.requires_grad and p.grad is None for p in tower.parameters())
    assert all(torch.equal(before[k], v) for k, v in tower.state_dict().items())
    assert model.model.multi_modal_projector.linear_1.weight.grad is not None


@pytest.mark.slow
def test_mini_mllm_text_path_is_smollm2(smollm2_path):
    """Built from SmolLM2 + Lite0: on text the MLLM gives SmolLM2's logits exactly (same vocabulary,
    same tied embeddings), and an image changes what it says."""
    from PIL import Image
    from transformers import AutoModelForCausalLM

    model, proc = mm.build_mini_mllm(mm.MiniMLLMConfig(image_size=64))
    base = AutoModelForCausalLM.from_pretrained(smollm2_path, dtype=torch.float32).eval()
    ids = proc.tokenizer("The capital of France is", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        assert torch.equal(model(input_ids=ids).logits, base(input_ids=ids).logits)
    assert model.lm_head.weight.data_ptr() == model.model.language_model.embed_tokens.weight.data_ptr()
    n_proj = sum(p.numel() for p in model.model.multi_modal_projector.parameters())
    assert n_proj == 1280 * 576 + 576 + 576 * 576 + 576
    text = proc.apply_chat_template([{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "?"}]}],
                                    add_generation_prompt=True)
    a = proc(images=[Image.new("RGB", (64, 64), (255, 0, 0))], text=[text], return_tensors="pt")
    b = proc(images=[Image.new("RGB", (64, 64), (0, 0, 255))], text=[text], return_tensors="pt")
    with torch.no_grad():
        fa, fb = model(**a).image_hidden_states, model(**b).image_hidden_states
    assert fa.shape == (1, 4, 576) and not torch.allclose(fa, fb)


def test_image_size_must_fit_the_stride():
    with pytest.raises(RetainError, match="multiple of 32"):
        mm.efficientnet_lite0_config(100)


def test_language_model_export_gives_the_text_path_logits(tiny_mllm, tmp_path):
    """save_language_model: a causal-LM folder (e.g. for retain decompress) with the MLLM's text logits."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model, processor = tiny_mllm
    folder = mm.save_language_model(model, processor, tmp_path / "lm")
    lm = AutoModelForCausalLM.from_pretrained(folder).eval()
    tok = AutoTokenizer.from_pretrained(folder)
    ids = tok("The capital of France is", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        assert torch.allclose(lm(ids).logits, model(input_ids=ids).logits, atol=1e-5)


def test_a_bfloat16_mllm_takes_the_processors_float32_pixels(tiny_mllm):
    """The processor gives float32 pixels; a model loaded in bfloat16 (a GPU setting) casts them in the tower's
    pre-hook (training) and in VQA scoring, instead of failing in the first convolution."""
    import copy

    from PIL import Image

    from retain.data import easy_vqa
    from retain.evaluation.vqa import score_vqa
    from retain.multimodal.model import freeze_vision_tower, tower_dtype

    model, processor = tiny_mllm
    m = copy.deepcopy(model).to(torch.bfloat16)
    assert tower_dtype(m) == torch.bfloat16
    recs = easy_vqa.records("heldout", n=2, seed=0)
    images = [Image.open(easy_vqa.image_folder() / r["image"]).convert("RGB") for r in recs]
    pix = processor.image_processor(images, return_tensors="pt")["pixel_values"]
    assert pix.dtype == torch.float32
    with pytest.raises(RuntimeError):  # what transformers does without the cast
        m.model.vision_tower(pix)
    freeze_vision_tower(m)
    out = m.model.vision_tower(pix).last_hidden_state
    assert out.dtype == torch.bfloat16 and torch.isfinite(out.float()).all()
    res = score_vqa(m, processor, recs, easy_vqa.image_folder(), easy_vqa.answers())
    assert len(res) == 2 and all(r["gold"] == easy_vqa.answers().index(rec["answer"]) for r, rec in zip(res, recs))


@pytest.fixture(scope="module")
def mllm_adapter_folders(tiny_mllm, tmp_path_factory):
    """{method: folder}: a LoRA and a LoRAMoE fine-tune of the tiny MLLM's language model, saved as `retain train`
    saves them (an adapter folder on top of the saved MLLM), adapter weights randomised so they matter."""
    import copy

    from retain.adapters.config import LoRAConfig, LoRAMoEConfig
    from retain.adapters.methods import save_finetuned
    from retain.multimodal.methods import prepare_mllm

    model, processor = tiny_mllm
    root = tmp_path_factory.mktemp("mllm_adapters")
    base = mm.save_mllm(model, processor, root / "base")
    out = {}
    for method in ("lora", "loramoe"):
        torch.manual_seed(0)
        trainee = prepare_mllm(copy.deepcopy(model), method, lora=LoRAConfig(r=2),
                               loramoe=LoRAMoEConfig(num_experts=2, rank=2))
        with torch.no_grad():
            for p in trainee.parameters():
                if p.requires_grad:
                    p.add_(torch.randn_like(p) * 0.3)
        save_finetuned(trainee, root / method, base_model=str(base), tokenizer=processor.tokenizer)
        out[method] = root / method
    return out


@pytest.mark.parametrize("method", ["lora", "loramoe"])
def test_language_model_export_of_an_adapter_mllm_folder(mllm_adapter_folders, tmp_path, method):
    """Issue 22 item 14: a LoRA-tuned MLLM (a PEFT wrapper) raised AttributeError ('language_model'), so it could
    not decompress its own language. LoRA is merged; LoRAMoE (a router cannot merge) is written as a LoRAMoE
    folder over the plain language model; either loads through load_model with the tuned text logits."""
    from retain.models import load_model

    model, processor = load_model(str(mllm_adapter_folders[method]), device="cpu")
    folder = mm.save_language_model(model, processor, tmp_path / "lm")
    lm, tok = load_model(str(folder), device="cpu")
    assert not mm.is_mllm_folder(folder)
    ids = tok("The capital of France is", return_tensors="pt")["input_ids"]
    base, _ = load_model(str(mllm_adapter_folders[method].parent / "base"), device="cpu")
    with torch.no_grad():
        want = model(input_ids=ids).logits
        assert torch.allclose(lm(input_ids=ids).logits, want, atol=1e-5)
        assert not torch.allclose(base(input_ids=ids).logits, want, atol=1e-3)  # the adapter mattered
    assert model(input_ids=ids).logits.shape == want.shape  # the caller's model is left as it was
