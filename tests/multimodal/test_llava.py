"""Plain LLaVA (``LlavaForConditionalGeneration``: CLIP ViT tower, ``LlavaProcessor`` with a center-cropping
``CLIPImageProcessor``, ``<image>`` a newly added token) through the same path as the miniature:
`retain train` with ``projector`` / ``lora`` / ``loramoe`` on LLaVA JSON mixed with text rows, then
`retain eval --vqa_items` on the three outputs."""

from __future__ import annotations

import json

import pytest
import torch

from retain.errors import RetainError

METHODS = ("projector", "lora", "loramoe")


def _data(folder):
    """Two images (square and 16 x 24: the processor crops it), a LLaVA JSON file and a text-only file."""
    from PIL import Image

    Image.new("RGB", (16, 16), (255, 0, 0)).save(folder / "red.png")
    Image.new("RGB", (16, 24), (0, 0, 255)).save(folder / "blue.png")
    recs = [{"image": c + ".png", "conversations": [{"from": "human", "value": "<image>\nWhat color is the shape?"},
                                                    {"from": "gpt", "value": c}]} for c in ("red", "blue") * 4]
    (folder / "vqa.json").write_text(json.dumps(recs))
    with open(folder / "tg.jsonl", "w") as f:
        for i in range(4):
            f.write(json.dumps({"messages": [{"role": "user", "content": f"Tell me fact {i}."},
                                             {"role": "assistant", "content": f"Fact {i} is true."}]}) + "\n")


@pytest.fixture(scope="module")
def trained(tiny_llava_path, tmp_path_factory):
    """{method: TrainResult} of 2 steps (batch 4, lr 1e-2) from the LLaVA folder, image + text rows mixed."""
    from retain.training.config import (DatasetSpec, MixtureConfig, ModelConfig, OptimConfig, Recipe,
                                        TrainConfig)
    from retain.training.run import train

    d = tmp_path_factory.mktemp("llava_runs")
    _data(d)
    out = {}
    for method in METHODS:
        recipe = Recipe(
            datasets=[DatasetSpec(path=str(d / "vqa.json"), type="task", weight=0.5, image_folder=str(d)),
                      DatasetSpec(path=str(d / "tg.jsonl"), type="world", weight=0.5)],
            method=method, model=ModelConfig(name=tiny_llava_path, device="cpu"),
            mixture=MixtureConfig(size=8, allow_repeat=True), optim=OptimConfig(lr=1e-2),
            train=TrainConfig(output_dir=str(d / method), max_steps=2, batch_size=4, max_length=64, progress=False))
        out[method] = train(recipe)
    return out


def _base(path):
    from retain.models import load_model

    return load_model(path, device="cpu")


def test_llava_folder_loads_and_image_tokens_are_counted_as_llava_processor_does(tiny_llava_path):
    from PIL import Image

    from retain.multimodal.collate import image_side, tokens_per_image

    model, processor = _base(tiny_llava_path)
    assert type(model).__name__ == "LlavaForConditionalGeneration"
    assert type(processor).__name__ == "LlavaProcessor"
    # the processor's own expansion of a non-square image (resized, then cropped to 32 x 32)
    enc = processor(images=[Image.new("RGB", (16, 24))], text=["<image>\nhi"], return_tensors="pt")
    n = int((enc["input_ids"] == processor.image_token_id).sum())
    assert tokens_per_image(processor) == n == 4
    assert model(**enc).logits.shape[1] == enc["input_ids"].shape[1]  # the model takes that many features
    # a size that depends on the image cannot be counted up front: one error line
    processor.image_processor.do_center_crop = False
    with pytest.raises(RetainError, match="fixed image size"):
        image_side(processor.image_processor)


def test_projector_method_changes_only_the_llava_projector(tiny_llava_path, trained):
    base, _ = _base(tiny_llava_path)
    res = trained["projector"]
    before, after = base.state_dict(), res.model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed == {k for k in before if k.startswith("model.multi_modal_projector.")}
    assert res.trainable_params == sum(p.numel() for p in base.model.multi_modal_projector.parameters())


@pytest.mark.parametrize("method", ["lora", "loramoe"])
def test_llava_adapters_land_on_the_language_model_and_the_tower_stays_frozen(tiny_llava_path, trained, method):
    base, _ = _base(tiny_llava_path)
    res = trained[method]
    trainable = [n for n, p in res.model.named_parameters() if p.requires_grad]
    assert trainable and all(".language_model." in n for n in trainable)
    assert all(("lora" in n) or ("router" in n) or ("expert" in n) for n in trainable)
    core = res.model.get_base_model() if method == "lora" else res.model
    after = core.state_dict()
    frozen = [k for k in base.state_dict() if k.startswith(("model.vision_tower.", "model.multi_modal_projector."))]
    assert frozen and all(torch.equal(base.state_dict()[k], after[k]) for k in frozen)
    assert not core.model.vision_tower.training
    assert len(res.counts) == 2  # image and text-only rows in the same run


def test_retain_eval_vqa_on_the_llava_runs(tiny_llava_path, trained, tmp_path):
    """Projector-only leaves the text path as it was (no drift); the adapters move it; VQA scored and
    paired for every row."""
    from retain.evaluation.config import EvalConfig
    from retain.evaluation.run import run_eval

    cfg = EvalConfig(base=tiny_llava_path, tuned=[trained[m].model_dir for m in METHODS], profile="tiny",
                     vqa_items=6, out=str(tmp_path / "eval"), device="cpu")
    assert run_eval(cfg) == 0
    base, *rows = json.loads((tmp_path / "eval" / "eval.json").read_text())["rows"]
    assert len(rows) == 3
    ids = base["items"]["domain:easy_vqa"]["ids"]
    for method, row in zip(METHODS, rows):
        assert row["domain"]["name"] == "easy_vqa" and row["domain"]["n"] == 6, method
        assert row["items"]["domain:easy_vqa"]["ids"] == ids and "domain" in row["vs_base"]
    projector, lora, loramoe = rows
    assert projector["kl_drift"] < 1e-6  # only the projector moved: text-only logits unchanged
    assert lora["kl_drift"] > 1e-6 and loramoe["kl_drift"] > 1e-6


def test_a_non_llava_mllm_folder_is_one_error_line(tmp_path):
    """Idefics3 (SmolVLM: ``vision_model`` / ``connector``, images cut into tiles) loads with the Auto classes
    but is not the layout retain trains: one error naming what is missing, not an AttributeError later."""
    from transformers import AutoTokenizer, Idefics3Config, Idefics3ForConditionalGeneration
    from transformers.models.idefics3.image_processing_pil_idefics3 import Idefics3ImageProcessorPil
    from transformers.models.idefics3.processing_idefics3 import Idefics3Processor

    from retain.assets import smollm2_path
    from retain.models import load_model

    tok = AutoTokenizer.from_pretrained(str(smollm2_path()))
    tok.add_special_tokens({"additional_special_tokens": ["<image>", "<fake_token_around_image>", "<global-img>"]})
    processor = Idefics3Processor(image_processor=Idefics3ImageProcessorPil(size={"longest_edge": 64},
                                                                            max_image_size={"longest_edge": 32}),
                                  tokenizer=tok, image_seq_len=4)
    config = Idefics3Config(
        text_config=dict(model_type="llama", vocab_size=len(tok), hidden_size=32, intermediate_size=64,
                         num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                           image_size=32, patch_size=8),
        scale_factor=2, image_token_id=tok.convert_tokens_to_ids("<image>"))
    Idefics3ForConditionalGeneration(config).save_pretrained(tmp_path / "smolvlm", safe_serialization=True)
    processor.save_pretrained(tmp_path / "smolvlm")
    with pytest.raises(RetainError, match=r"smolvlm: Idefics3ForConditionalGeneration .* not a LLaVA-family model "
                                          r"\(no vision_tower, multi_modal_projector, language_model, processor"):
        load_model(tmp_path / "smolvlm", device="cpu")
