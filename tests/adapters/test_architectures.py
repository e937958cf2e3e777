"""LoRAMoE across the architecture table: targets, exact init, fused == loop, gradients, counts."""

from __future__ import annotations

import functools

import pytest
import torch
import torch.nn as nn

from retain.adapters.config import LoRAMoEConfig
from retain.adapters.loramoe import LoRAMoELinear, inject_loramoe, loramoe_layers, sample_types
from retain.adapters.methods import prepare_model, trainable_parameters
from retain.adapters.targets import find_targets
from retain.errors import RetainError

from tests.adapters.adapter_archs import build_tiny, expected_targets, randomize_adapters

CFG = LoRAMoEConfig(num_experts=3, rank=2, alpha=8.0)


def loop_forward(layer: LoRAMoELinear, x: torch.Tensor) -> torch.Tensor:
    """Reference: the paper's per-expert sum, one LoRA at a time."""
    y = layer.base_layer(x)
    g = torch.softmax(x.float() @ layer.router.float().T, dim=-1)
    h = layer.dropout(x)
    r = layer.rank
    for e in range(layer.num_experts):
        a, b = layer.lora_A[e * r:(e + 1) * r], layer.lora_B[:, e * r:(e + 1) * r]
        y = y + g[..., e:e + 1] * layer.scaling * ((h @ a.T) @ b.T)
    return y


def test_each_expert_draws_its_own_dropout_mask_when_asked():
    """dropout_per_expert, as in the authors' code (one lora_dropout(x) call per expert): in training,
    expert e's update is A_e applied to its own masked copy of x; in eval the fused path equals the
    no-dropout loop; the default shares one mask."""
    torch.manual_seed(0)
    layer = LoRAMoELinear(nn.Linear(16, 8), num_experts=4, rank=2, alpha=4.0, dropout=0.5, dropout_per_expert=True)
    nn.init.normal_(layer.lora_B)
    seen = []

    class Recording(nn.Dropout):
        def forward(self, h):
            out = super().forward(h)
            seen.append(out)
            return out

    layer.dropout = Recording(0.5)
    x = torch.randn(3, 5, 16)
    layer.train()
    got = layer(x)
    assert [t.shape for t in seen] == [x.shape] * 4  # one dropout call (mask) per expert
    h = torch.stack(seen, dim=-2)  # (3, 5, E, 16)
    keep = h != 0
    g = torch.softmax(x @ layer.router.T, dim=-1)
    want = layer.base_layer(x)
    for e in range(4):
        a, b = layer.lora_A[2 * e:2 * e + 2], layer.lora_B[:, 2 * e:2 * e + 2]
        want = want + g[..., e:e + 1] * layer.scaling * ((h[..., e, :] @ a.T) @ b.T)
        assert torch.allclose(h[..., e, :], x * keep[..., e, :] / 0.5)  # expert e's own mask of x
    assert torch.allclose(got, want, atol=1e-5)
    # the experts' masks differ (a shared mask would make every expert see the same input)
    assert not torch.equal(keep[..., 0, :], keep[..., 1, :])
    layer.eval()
    assert torch.allclose(layer(x), loop_forward(layer, x), atol=1e-5)
    # dropout_per_expert=False: one mask shared by the experts (one dropout call on x)
    seen.clear()
    layer.train()
    layer.dropout_per_expert = False
    layer(x)
    assert [t.shape for t in seen] == [x.shape]


def test_targets_found(arch):
    model = build_tiny(arch)
    assert find_targets(model, None) == list(expected_targets(arch))
    inject_loramoe(model, CFG)
    layers = {layer.name: layer for layer in loramoe_layers(model)}
    assert {n: (l.in_features, l.out_features) for n, l in layers.items()} == expected_targets(arch)
    for name, layer in layers.items():
        assert model.get_submodule(name) is layer


def test_gpt2_attention_c_proj_is_not_a_default_target():
    model = build_tiny("gpt2")
    assert not any(".attn." in n for n in find_targets(model, None))
    # but attention layers can be asked for by name
    assert find_targets(model, ["attn.c_proj"]) == ["transformer.h.0.attn.c_proj", "transformer.h.1.attn.c_proj"]


def test_unknown_architecture_lists_candidates():
    class Toy(nn.Module):
        def __init__(self):
            super().__init__()
            self.foo, self.bar = nn.Linear(4, 4), nn.Linear(4, 4)

    with pytest.raises(RetainError, match=r"\['bar', 'foo'\]"):
        find_targets(Toy(), None)
    with pytest.raises(RetainError, match="matches no Linear"):
        find_targets(build_tiny("llama"), ["nope_proj"])


def test_output_at_init_equals_base_exactly(arch, batch):
    ids, mask = batch
    model = build_tiny(arch)
    with torch.no_grad():
        base = model(input_ids=ids, attention_mask=mask).logits
        inject_loramoe(model, CFG)
        adapted = model(input_ids=ids, attention_mask=mask).logits
    assert torch.equal(base, adapted)


def test_fused_equals_reference_loop(arch, batch):
    ids, mask = batch
    model = build_tiny(arch)
    inject_loramoe(model, CFG)
    randomize_adapters(model)
    weight = torch.randn(2, 7, model.config.vocab_size, generator=torch.Generator().manual_seed(3))

    def run():
        model.zero_grad()
        logits = model(input_ids=ids, attention_mask=mask).logits
        (logits * weight).sum().backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
        return logits.detach(), grads

    fused, fused_grads = run()
    layers = loramoe_layers(model)
    for layer in layers:
        layer.forward = functools.partial(loop_forward, layer)
    loop, loop_grads = run()
    for layer in layers:
        del layer.forward
    assert (fused - model(input_ids=ids, attention_mask=mask).logits).abs().max() == 0  # forward restored
    assert not torch.equal(fused, build_tiny(arch)(input_ids=ids, attention_mask=mask).logits)  # adapters matter
    torch.testing.assert_close(fused, loop, rtol=1e-5, atol=1e-5)
    assert fused_grads.keys() == loop_grads.keys()
    for name in fused_grads:
        assert fused_grads[name].abs().max() > 0, name
        # float32 rounding of sums over the batch scales with the gradient's size (seen: 2.7e-6 on entries up
        # to 4.1 for GPT-2's c_fc on one CPU), so the absolute tolerance is relative to the largest entry
        scale = float(loop_grads[name].abs().max())
        torch.testing.assert_close(fused_grads[name], loop_grads[name], rtol=1e-4, atol=2e-6 * max(1.0, scale),
                                   msg=name)


def test_only_adapter_parameters_get_gradients(arch, batch):
    ids, mask = batch
    model = build_tiny(arch)
    inject_loramoe(model, CFG)
    model.train()
    with sample_types(model, [1, 0]):
        out = model(input_ids=ids, attention_mask=mask, labels=ids)
    from retain.adapters.loramoe import lbc_loss

    (out.loss + lbc_loss(model)).backward()
    for name, p in model.named_parameters():
        is_adapter = name.rsplit(".", 1)[-1] in ("lora_A", "lora_B", "router")
        assert p.requires_grad == is_adapter, name
        assert (p.grad is not None) == is_adapter, name


def test_trainable_count_matches_hand_computation(arch):
    model = build_tiny(arch)
    total_base = sum(p.numel() for p in model.parameters())
    e, r = CFG.num_experts, CFG.rank
    expected = sum(e * r * (d_in + d_out) + e * d_in for d_in, d_out in expected_targets(arch).values())
    prepare_model(model, "loramoe", loramoe=CFG)
    assert trainable_parameters(model) == (expected, total_base + expected)


def test_lora_and_full_counts(arch):
    from retain.adapters.config import LoRAConfig

    model = build_tiny(arch)
    total = sum(p.numel() for p in model.parameters())
    assert trainable_parameters(prepare_model(model, "full")) == (total, total)
    lora = prepare_model(build_tiny(arch), "lora", lora=LoRAConfig(r=4))
    expected = sum(4 * (d_in + d_out) for d_in, d_out in expected_targets(arch).values())
    assert trainable_parameters(lora) == (expected, total + expected)


def test_inference_needs_no_sample_types(batch):
    ids, mask = batch
    model = inject_loramoe(build_tiny("llama"), CFG)
    randomize_adapters(model)
    with torch.no_grad():
        plain = model(input_ids=ids, attention_mask=mask).logits
        with sample_types(model, [1, -1]):
            typed = model(input_ids=ids, attention_mask=mask).logits
    assert torch.equal(plain, typed)
    assert all(not layer.state.recording for layer in loramoe_layers(model))
