"""The shared architecture table for adapter tests (like PEFT's): tiny random models of five families.

Each entry builds a 2-layer model with hidden 32 from a fixed seed, and states by hand which modules are
the FFN targets and their (d_in, d_out), so tests compare the code against the table, not against itself.
"""

from __future__ import annotations

import torch

VOCAB, HIDDEN, INTER, LAYERS = 128, 32, 64, 2


def _llama_like(cls_name: str, **extra):
    def build():
        import transformers

        cfg_cls = getattr(transformers, f"{cls_name}Config")
        model_cls = getattr(transformers, f"{cls_name}ForCausalLM")
        cfg = cfg_cls(vocab_size=VOCAB, hidden_size=HIDDEN, intermediate_size=INTER, num_hidden_layers=LAYERS,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64, **extra)
        return model_cls(cfg)

    return build


def _gpt2():
    from transformers import GPT2Config, GPT2LMHeadModel

    return GPT2LMHeadModel(GPT2Config(vocab_size=VOCAB, n_embd=HIDDEN, n_inner=INTER, n_layer=LAYERS, n_head=4,
                                      n_positions=64))


_LLAMA_FFN = {"gate_proj": (HIDDEN, INTER), "up_proj": (HIDDEN, INTER), "down_proj": (INTER, HIDDEN)}

# arch -> (builder, {target leaf name: (d_in, d_out)}, per-layer module path of the FFN)
ARCHS = {
    "llama": (_llama_like("Llama"), _LLAMA_FFN, "model.layers.{i}.mlp"),
    "qwen2": (_llama_like("Qwen2"), _LLAMA_FFN, "model.layers.{i}.mlp"),
    "mistral": (_llama_like("Mistral"), _LLAMA_FFN, "model.layers.{i}.mlp"),
    "gemma": (_llama_like("Gemma", head_dim=8), _LLAMA_FFN, "model.layers.{i}.mlp"),
    "gpt2": (_gpt2, {"c_fc": (HIDDEN, INTER), "c_proj": (INTER, HIDDEN)}, "transformer.h.{i}.mlp"),
}


def build_tiny(arch: str, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    model = ARCHS[arch][0]()
    return model.eval()


def expected_targets(arch: str) -> dict[str, tuple[int, int]]:
    """Full module name -> (d_in, d_out), from the table."""
    _, leaves, path = ARCHS[arch]
    return {f"{path.format(i=i)}.{leaf}": shape for i in range(LAYERS) for leaf, shape in leaves.items()}


def randomize_adapters(model: torch.nn.Module, seed: int = 2) -> None:
    """Give B non-zero values so the adapters (and router gradients) actually matter."""
    from retain.adapters.loramoe import loramoe_layers

    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in loramoe_layers(model):
            layer.lora_B.copy_(torch.randn(layer.lora_B.shape, generator=g) * 0.1)
