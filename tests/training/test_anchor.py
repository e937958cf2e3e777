"""KL-anchored fine-tuning: the KL term by hand, base logits with adapters off, and its effect."""

from __future__ import annotations

import json

import pytest
import torch

from retain.training.anchor import kl_sum
from retain.training.recipe import recipe_from_dict
from retain.training.run import train


def test_kl_sum_matches_a_hand_computation():
    torch.manual_seed(0)
    logits, base = torch.randn(2, 4, 5), torch.randn(2, 4, 5)
    labels = torch.tensor([[-100, 3, -100, 1], [-100, -100, 2, -100]])
    want = 0.0
    for b, t in [(0, 0), (0, 2), (1, 1)]:  # position t predicts labels[b, t + 1]
        p, q = torch.softmax(base[b, t], -1), torch.softmax(logits[b, t], -1)
        want += float((p * (p.log() - q.log())).sum())
    assert kl_sum(logits, base, labels).item() == pytest.approx(want, rel=1e-5)
    assert kl_sum(base, base, labels).item() == pytest.approx(0.0, abs=1e-6)


def test_loramoe_adapters_disabled_gives_the_base_model(tiny_llama_path):
    from transformers import AutoModelForCausalLM

    from retain.adapters.config import LoRAMoEConfig
    from retain.adapters.loramoe import adapters_disabled, inject_loramoe
    from tests.adapters.adapter_archs import randomize_adapters

    base = AutoModelForCausalLM.from_pretrained(tiny_llama_path).eval()
    ids = torch.randint(0, 1000, (2, 9))
    want = base(input_ids=ids).logits
    model = inject_loramoe(AutoModelForCausalLM.from_pretrained(tiny_llama_path).eval(), LoRAMoEConfig(num_experts=2, rank=2))
    randomize_adapters(model)
    with torch.no_grad():
        assert not torch.allclose(model(input_ids=ids).logits, want, atol=1e-4)
        with adapters_disabled(model):
            assert torch.allclose(model(input_ids=ids).logits, want, atol=1e-5)
        assert not torch.allclose(model(input_ids=ids).logits, want, atol=1e-4)  # back on after the block


def _final_kl(res, tiny_llama_path, toy_data) -> float:
    """KL(base ‖ tuned) per assistant token on the task data, measured after training."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from retain.data.collate import Collator, encode_examples
    from retain.models import pad_token_id
    from retain.data.formats import load_examples

    tok = AutoTokenizer.from_pretrained(tiny_llama_path)
    feats, _ = encode_examples(tok, load_examples(str(toy_data[0])), 48)
    batch = Collator(pad_token_id(tok))(feats)
    base = AutoModelForCausalLM.from_pretrained(tiny_llama_path).eval()
    tuned = res.model.eval()
    with torch.no_grad():
        kw = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
        kl = kl_sum(tuned(**kw).logits, base(**kw).logits, batch["labels"])
    return kl.item() / int((batch["labels"][:, 1:] != -100).sum())


@pytest.mark.parametrize("method", ["full", "lora", "loramoe"])
def test_the_anchor_is_logged_starts_at_zero_and_keeps_the_model_closer(make_recipe, tmp_path, tiny_llama_path,
                                                                         toy_data, method):
    lr = 3e-3 if method == "full" else 2e-2
    runs = {}
    for lam in (0.0, 3.0):
        out = tmp_path / f"run{lam}"
        recipe = recipe_from_dict(make_recipe(method=method, optim={"lr": lr},
                                              train={"max_steps": 6, "kl_anchor": lam, "output_dir": str(out)}))
        res = train(recipe)
        rows = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
        runs[lam] = (res, rows)
    anchored = runs[3.0][1]
    assert all("kl_loss" not in r for r in runs[0.0][1])
    assert all(r["kl_loss"] >= 0 for r in anchored)
    assert anchored[0]["kl_loss"] == pytest.approx(0.0, abs=1e-5)  # step 1 trains the base itself
    assert max(r["kl_loss"] for r in anchored[1:]) > 1e-4
    free, held = _final_kl(runs[0.0][0], tiny_llama_path, toy_data), _final_kl(runs[3.0][0], tiny_llama_path, toy_data)
    assert held < free, (held, free)


def test_negative_anchor_is_refused(make_recipe):
    from retain.errors import RetainError

    with pytest.raises(RetainError, match="train.kl_anchor=-1"):
        recipe_from_dict(make_recipe(train={"kl_anchor": -1.0}))
