"""Multimodal fixtures: ``image_dir`` from tests/data (``tiny_mllm`` is in tests/conftest.py), and
``tiny_llava_path``: a plain LLaVA folder (CLIP ViT tower, ``LlavaProcessor``) as users hold them."""

from __future__ import annotations

import pytest

from tests.data.conftest import image_dir  # noqa: F401  (fixture)


@pytest.fixture(scope="session")
def tiny_llava_path(tmp_path_factory, tiny_llama_path) -> str:
    """A random ``LlavaForConditionalGeneration`` saved as a safetensors folder that
    ``AutoModelForImageTextToText`` / ``AutoProcessor`` reload: a 2-layer CLIP ViT (32 px, patch 16, d=32,
    features of layer -2 without CLS: 4 image tokens), a fresh 2-layer MLP projector, and the
    ``tiny_llama_path`` Llama with ``<image>`` added to its tokenizer (a new token: the embeddings grow
    by one row, as LLaVA-1.5's did). ``CLIPImageProcessor`` resizes the shortest edge to 32 and
    center-crops 32 x 32; ``LlavaProcessor`` counts 2 · 2 + 1 (CLS) − 1 = 4 tokens per image."""
    import torch
    from transformers import (AutoModelForCausalLM, AutoTokenizer, CLIPVisionConfig, LlavaConfig,
                              LlavaForConditionalGeneration, LlavaProcessor)
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    tok = AutoTokenizer.from_pretrained(tiny_llama_path)
    tok.add_special_tokens({"additional_special_tokens": ["<image>"]})
    lm = AutoModelForCausalLM.from_pretrained(tiny_llama_path, dtype=torch.float32)
    lm.resize_token_embeddings(len(tok))
    vision = CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                              image_size=32, patch_size=16)
    config = LlavaConfig(vision_config=vision, text_config=lm.config, image_token_index=tok.convert_tokens_to_ids("<image>"),
                         image_seq_length=4, vision_feature_select_strategy="default", vision_feature_layer=-2,
                         projector_hidden_act="gelu", tie_word_embeddings=lm.config.tie_word_embeddings)
    torch.manual_seed(0)
    model = LlavaForConditionalGeneration(config)
    model.model.language_model.load_state_dict(lm.model.state_dict(), strict=True)
    model.tie_weights()
    model.generation_config.pad_token_id = tok.pad_token_id
    processor = LlavaProcessor(
        image_processor=CLIPImageProcessorPil(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}),
        tokenizer=tok, patch_size=16, vision_feature_select_strategy="default", num_additional_image_tokens=1,
        chat_template=tok.chat_template)
    out = tmp_path_factory.mktemp("tiny_llava")
    model.save_pretrained(out, safe_serialization=True)
    processor.save_pretrained(out)
    return str(out)
