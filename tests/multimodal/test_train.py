"""`retain train` on an image-text-to-text model: what each method trains (stage-1 freeze: only the
projector changes; full: LLM + projector; LoRA/LoRAMoE: adapters on the language model), the tower's
BatchNorm statistics never move, text-only rows mix into image batches, and bad input fails early."""

from __future__ import annotations

import json

import pytest
import torch

from retain.errors import RetainError


def _llava_file(tmp_path, image_dir, n=8):
    recs = [{"image": ("red.png" if i % 2 == 0 else "blue.png"),
             "conversations": [{"from": "human", "value": "<image>\nWhat color is the shape?"},
                               {"from": "gpt", "value": "red" if i % 2 == 0 else "blue"}]} for i in range(n)]
    path = tmp_path / "vqa.json"
    path.write_text(json.dumps(recs))
    return path


def _text_file(tmp_path, n=4):
    path = tmp_path / "tg.jsonl"
    with open(path, "w") as f:
        for i in range(n):
            f.write(json.dumps({"messages": [{"role": "user", "content": f"Tell me fact {i}."},
                                             {"role": "assistant", "content": f"Fact {i} is true."}]}) + "\n")
    return path


def _recipe(tmp_path, image_dir, method, text=False, name="smollm2"):
    from retain.training.config import DatasetSpec, MixtureConfig, OptimConfig, Recipe, TrainConfig

    vqa = DatasetSpec(path=str(_llava_file(tmp_path, image_dir)), type="task", image_folder=str(image_dir))
    datasets = [vqa]
    if text:
        vqa.weight = 0.5
        datasets.append(DatasetSpec(path=str(_text_file(tmp_path)), type="world", weight=0.5))
    return Recipe(datasets=datasets, method=method, mixture=MixtureConfig(size=8, allow_repeat=True),
                  optim=OptimConfig(lr=1e-2), model=_model(name),
                  train=TrainConfig(output_dir=str(tmp_path / f"run_{method}"), max_steps=2, batch_size=4,
                                    max_length=64, progress=False))


def _model(name):
    from retain.training.config import ModelConfig

    return ModelConfig(name=name, device="cpu")


def _snapshot(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _changed(before, model):
    after = model.state_dict()
    return {k for k, v in before.items() if k in after and not torch.equal(v, after[k])}


def test_stage1_projector_method_changes_only_the_projector(tiny_mllm, tmp_path, image_dir):
    from retain.training.run import train

    import retain.multimodal.methods  # noqa: F401  (registers 'projector', as retain train's import does)
    from retain.adapters.registry import get_method

    assert get_method("projector").name == "projector"  # a registered method, like full / lora / loramoe
    model, processor = tiny_mllm
    before = _snapshot(model)
    res = train(_recipe(tmp_path, image_dir, "projector"), model=model, tokenizer=processor)
    changed = _changed(before, res.model)
    assert changed and all(k.startswith("model.multi_modal_projector.") for k in changed)
    # every projector tensor moved; the tower (BatchNorm running stats included) and the LLM did not
    assert {k for k in before if k.startswith("model.multi_modal_projector.")} == changed
    n_proj = sum(p.numel() for p in res.model.model.multi_modal_projector.parameters())
    assert res.trainable_params == n_proj
    # saved as a complete MLLM folder that the Auto classes reload
    from retain.multimodal.model import load_mllm

    again, _ = load_mllm(res.model_dir)
    assert torch.equal(again.model.multi_modal_projector.linear_1.weight, res.model.model.multi_modal_projector.linear_1.weight)


def test_full_trains_llm_and_projector_with_text_rows_mixed_in(tiny_mllm, tmp_path, image_dir):
    from retain.training.run import train

    model, processor = tiny_mllm
    before = _snapshot(model)
    res = train(_recipe(tmp_path, image_dir, "full", text=True), model=model, tokenizer=processor)
    changed = _changed(before, res.model)
    assert any(k.startswith("model.language_model.") for k in changed)
    assert any(k.startswith("model.multi_modal_projector.") for k in changed)
    assert not any(k.startswith("model.vision_tower.") for k in changed)  # weights and BatchNorm statistics
    assert len(res.counts) == 2  # image and text-only sources in the same run
    assert not res.model.model.vision_tower.training
    assert all(not p.requires_grad for p in res.model.model.vision_tower.parameters())


@pytest.mark.parametrize("method", ["lora", "loramoe"])
def test_adapters_go_on_the_language_model_only(tiny_mllm, tmp_path, image_dir, method):
    from retain.training.run import train

    model, processor = tiny_mllm
    before = _snapshot(model)
    res = train(_recipe(tmp_path, image_dir, method, text=True), model=model, tokenizer=processor)
    trainable = [n for n, p in res.model.named_parameters() if p.requires_grad]
    assert trainable and all(".language_model." in n for n in trainable)
    assert all(("lora" in n) or ("router" in n) or ("expert" in n) for n in trainable)
    core = res.model.get_base_model() if method == "lora" else res.model
    after = core.state_dict()
    for k, v in before.items():  # the tower and the projector are untouched
        if k.startswith(("model.vision_tower.", "model.multi_modal_projector.")):
            assert torch.equal(v, after[k]), k


def test_images_or_projector_on_a_text_model_fail_before_training(tmp_path, image_dir, tiny_llama_path):
    from retain.training.run import train

    with pytest.raises(RetainError, match="text model, but the datasets hold images"):
        train(_recipe(tmp_path, image_dir, "full", name=tiny_llama_path))
    recipe = _recipe(tmp_path, image_dir, "projector", name=tiny_llama_path)
    recipe.datasets = [recipe.datasets[0].__class__(path=str(_text_file(tmp_path)), type="task")]
    with pytest.raises(RetainError, match="method=projector"):
        train(recipe)
    assert not (tmp_path / "run_full").exists() and not (tmp_path / "run_projector").exists()


def test_missing_image_in_a_recipe_is_a_file_line_error_before_any_model_loads(tmp_path, image_dir):
    from retain.training.run import train

    recipe = _recipe(tmp_path, image_dir, "projector")
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps([{"image": "nope.png", "conversations": [
        {"from": "human", "value": "<image>\nq"}, {"from": "gpt", "value": "a"}]}]))
    recipe.datasets[0].path = str(bad)
    with pytest.raises(RetainError, match=r"bad\.json.*nope\.png"):
        train(recipe)


def test_retain_train_takes_an_mllm_folder_by_name(tiny_mllm, tmp_path, image_dir):
    """model.name an MLLM folder: loaded with its processor; the run's model/ is again an MLLM folder."""
    from retain.multimodal.model import is_mllm_folder, save_mllm
    from retain.training.run import train

    model, processor = tiny_mllm
    folder = save_mllm(model, processor, tmp_path / "mllm")
    res = train(_recipe(tmp_path, image_dir, "projector", name=str(folder)))
    assert res.steps == 2 and is_mllm_folder(res.model_dir)
    assert (tmp_path / "run_projector" / "model" / "processor_config.json").exists()  # the processor too
