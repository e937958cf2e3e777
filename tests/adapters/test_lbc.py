"""The localized balancing constraint: hand-computed values, padding and unknown types, and its effect."""

from __future__ import annotations

import pytest
import torch
from tests.adapters.adapter_archs import build_tiny, randomize_adapters

from retain.adapters.config import LoRAMoEConfig
from retain.adapters.loramoe import inject_loramoe, last_router_mass, lbc_loss, loramoe_layers, sample_types
from retain.adapters.loramoe.lbc import lbc_term, router_mass
from retain.errors import RetainError


def test_lbc_term_hand_computed():
    # E=2 experts (expert 0 = world), B=2 samples: sample 0 world (2 real tokens), sample 1 task (1 real
    # token + 1 padding whose gates must not count).
    gates = torch.tensor([[[0.6, 0.4], [0.8, 0.2]], [[0.3, 0.7], [0.9, 0.1]]])
    mask = torch.tensor([[1, 1], [1, 0]])
    q = router_mass(gates, mask)
    torch.testing.assert_close(q, torch.tensor([[1.4, 0.3], [0.6, 0.7]]))
    types = torch.tensor([1, 0])
    # default sign: I = [[0.9, 1.1], [1.1, 0.9]] -> Z = [[1.26, 0.33], [0.66, 0.63]], mean 0.72,
    # squared deviations 0.2916 + 0.1521 + 0.0036 + 0.0081 = 0.4554, unbiased var 0.4554 / 3
    expected = (0.4554 / 3) / 0.72**2
    assert lbc_term(q, types, 1, 0.1, 0.0).item() == pytest.approx(expected, rel=1e-5)
    # paper sign: I = [[1.1, 0.9], [0.9, 1.1]] -> Z = [[1.54, 0.27], [0.54, 0.77]], mean 0.78,
    # squared deviations 0.5776 + 0.0576 + 0.2601 + 0.0001 = 0.8954
    expected_paper = (0.8954 / 3) / 0.78**2
    assert lbc_term(q, types, 1, 0.1, 0.0, paper_sign=True).item() == pytest.approx(expected_paper, rel=1e-5)


def test_lbc_term_drops_unknown_and_degenerate():
    q = torch.tensor([[1.4, 0.3, 5.0], [0.6, 0.7, 0.1]])
    with_unknown = lbc_term(q, torch.tensor([1, 0, -1]), 1, 0.1, 0.0)
    assert with_unknown == lbc_term(q[:, :2], torch.tensor([1, 0]), 1, 0.1, 0.0)
    assert lbc_term(q, torch.tensor([-1, -1, -1]), 1, 0.1, 0.0) == 0


UNIFORM = LoRAMoEConfig(num_experts=2, rank=2, world_experts=1, lbc_beta=0.5, lbc_delta=0.1)


def _uniform_router_model(cfg=UNIFORM):
    model = inject_loramoe(build_tiny("llama"), cfg)
    for layer in loramoe_layers(model):
        torch.nn.init.zeros_(layer.router)  # g = (1/2, 1/2) on every token
    return model


def test_lbc_loss_through_the_model_hand_computed():
    # Router at zero -> Q[e, b] = real tokens of b / 2. Sample 0 (world) has 3 real tokens, sample 1
    # (task) 2 real + 1 padding: Q = [[1.5, 1.0], [1.5, 1.0]]; I = [[0.9, 1.1], [1.1, 0.9]];
    # Z = [[1.35, 1.1], [1.65, 0.9]], mean 1.25, squared deviations .01+.0225+.16+.1225 = .315.
    per_layer = (0.315 / 3) / 1.25**2
    ids = torch.tensor([[5, 6, 7], [8, 9, 0]])
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    model = _uniform_router_model()
    with sample_types(model, torch.tensor([1, 0])):
        model(input_ids=ids, attention_mask=mask)
    assert len(last_router_mass(model)) == 6  # 2 layers x 3 projections
    assert lbc_loss(model).item() == pytest.approx(0.5 * per_layer, rel=1e-5)  # mean over layers
    # an unknown-type sample changes nothing
    with sample_types(model, torch.tensor([1, 0, -1])):
        model(input_ids=torch.cat([ids, ids[:1]]), attention_mask=torch.cat([mask, mask[:1]]))
    assert lbc_loss(model).item() == pytest.approx(0.5 * per_layer, rel=1e-5)
    # the authors' reduction: sum over layers and projections
    summed = _uniform_router_model(LoRAMoEConfig(**{**UNIFORM.__dict__, "lbc_reduction": "sum"}))
    with sample_types(summed, [1, 0]):
        summed(input_ids=ids, attention_mask=mask)
    assert lbc_loss(summed).item() == pytest.approx(0.5 * 6 * per_layer, rel=1e-5)


def test_lbc_ignores_padding_tokens(batch):
    ids, mask = batch  # sample 1 is right-padded: its padding ids must not change the loss
    model = inject_loramoe(build_tiny("llama"), LoRAMoEConfig(num_experts=4, rank=2))
    randomize_adapters(model)
    losses = []
    for pad in (0, 17, 99):
        padded = ids.clone()
        padded[mask == 0] = pad
        with sample_types(model, [1, 0]):
            model(input_ids=padded, attention_mask=mask)
        losses.append(lbc_loss(model).item())
    assert losses[0] > 0
    assert losses[1] == pytest.approx(losses[0], rel=1e-5) and losses[2] == pytest.approx(losses[0], rel=1e-5)
    # counting the padding (as the authors' code does) would give a different value
    with sample_types(model, [1, 0]):
        model(input_ids=ids, attention_mask=torch.ones_like(mask))
    assert lbc_loss(model).item() != pytest.approx(losses[0], rel=1e-3)
    # an attention_mask given positionally, model(ids, mask), is seen by the padding mask too
    with sample_types(model, [1, 0]):
        model(padded, mask)
    assert lbc_loss(model).item() == pytest.approx(losses[0], rel=1e-5)


def test_lbc_none_without_types_and_rejects_bad_input(batch):
    ids, mask = batch
    model = inject_loramoe(build_tiny("llama"), LoRAMoEConfig())
    model(input_ids=ids, attention_mask=mask)
    assert lbc_loss(model) is None
    assert lbc_loss(build_tiny("llama")) is None  # no LoRAMoE layers
    with sample_types(model, None):
        model(input_ids=ids, attention_mask=mask)
    assert lbc_loss(model) is None
    with pytest.raises(RetainError, match="sample_type values"):
        with sample_types(model, [1, 2]):
            pass
    with pytest.raises(RetainError, match="3 types for a batch of 2"):
        with sample_types(model, [1, 0, 1]):
            model(input_ids=ids, attention_mask=mask)


def _world_mass_gap(beta: float, seed: int = 0, steps: int = 40, paper_sign: bool = False) -> float:
    """Train a tiny LoRAMoE on two token populations (world ids < 64, task ids >= 64) and return the
    mean share of router mass on the world group for world samples minus that for task samples."""
    torch.manual_seed(seed)
    model = inject_loramoe(build_tiny("llama", seed=seed),
                           LoRAMoEConfig(num_experts=4, rank=2, dropout=0.0, lbc_beta=beta, lbc_delta=0.5,
                                         lbc_paper_sign=paper_sign))
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    g = torch.Generator().manual_seed(seed)
    types = torch.tensor([1, 0] * 4)

    def draw():
        return torch.randint(0, 64, (len(types), 8), generator=g) + 64 * (1 - types)[:, None]

    model.train()
    for _ in range(steps):
        ids = draw()
        with sample_types(model, types):
            out = model(input_ids=ids, attention_mask=torch.ones_like(ids), labels=ids)
        aux = lbc_loss(model)
        opt.zero_grad()
        (out.loss + (aux if aux is not None else 0)).backward()
        opt.step()
    model.eval()
    ids = draw()
    with torch.no_grad(), sample_types(model, types):
        model(input_ids=ids, attention_mask=torch.ones_like(ids))
    gaps = []
    for _, q in last_router_mass(model):
        world_share = q[:2].sum(0) / q.sum(0)  # (B,)
        gaps.append((world_share[types == 1].mean() - world_share[types == 0].mean()).item())
    return sum(gaps) / len(gaps)


def test_lbc_routes_world_samples_to_world_experts():
    # delta = 0.5: the constraint's optimum gives the matching group a share (1+delta)/2 = 0.75, a gap
    # of 0.5 between the two sample types; without it the gap stays near 0.
    with_lbc, without = _world_mass_gap(beta=1.0), _world_mass_gap(beta=0.0)
    assert with_lbc > 0.2, with_lbc
    assert abs(without) < 0.1, without
    # the paper's literal sign of I pushes world samples *away* from the world group (why it is not the default)
    assert _world_mass_gap(beta=1.0, paper_sign=True) < -0.2


def test_lbc_gradients_survive_gradient_checkpointing(batch):
    # Non-reentrant checkpointing replays the forward in backward; the LBC must not break that replay
    # and must give the same gradients as without checkpointing.
    ids, mask = batch
    grads = []
    for checkpointing in (False, True):
        model = build_tiny("llama")
        if checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        inject_loramoe(model, LoRAMoEConfig(num_experts=4, rank=2, dropout=0.0))
        randomize_adapters(model)
        model.train()
        with sample_types(model, [1, 0]):
            out = model(input_ids=ids, attention_mask=mask, labels=ids, use_cache=False)
        (out.loss + lbc_loss(model)).backward()
        grads.append(torch.cat([layer.router.grad.flatten() for layer in loramoe_layers(model)]))
    assert grads[0].abs().sum() > 0
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-5, atol=1e-7)
