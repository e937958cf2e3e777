"""mixture.loss_balance: how a step's examples share its loss, checked on the gradient of one hand-built step.

The step holds short task examples (a few answer tokens each) and long world examples (about ten times
more), as SST-2 next to TG dialogues. Each balance's gradient is compared with one built from separately
computed gradients (plain cross-entropy on the model's logits, none of retain's loss code), and each is the
same however the step is cut into forward passes.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from retain.data.collate import Collator, encode_examples
from retain.data.types import TASK, WORLD
from retain.errors import RetainError
from retain.training.config import MixtureConfig
from retain.training.recipe import recipe_from_dict
from retain.training.trainer import LossBalance

SHARES = {TASK: 0.75, WORLD: 0.25}
"""The mixture shares of the step's two types (task weight 3, world weight 1)."""


@pytest.fixture(scope="module")
def step(tiny_llama_path):
    """(tokenizer, features): 4 task examples with 2-4 answer tokens, 2 world examples with ~40."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_llama_path)
    task = [{"messages": [{"role": "user", "content": f"{a}+{a}?"}, {"role": "assistant", "content": str(2 * a)}],
             "sample_type": TASK} for a in (1, 4, 7, 9)]
    long = ("The sky is blue because air scatters short wavelengths of sunlight more than long ones, and "
            "the grass is green because chlorophyll absorbs red and blue light.")
    world = [{"messages": [{"role": "user", "content": f"Why, {i}?"}, {"role": "assistant", "content": long[i:]}],
              "sample_type": WORLD} for i in (0, 9)]
    feats, dropped = encode_examples(tok, [task[0], world[0], task[1], task[2], world[1], task[3]], max_length=128)
    assert dropped == 0
    n = [sum(x != -100 for x in f["labels"][1:]) for f in feats]
    assert max(n) > 8 * min(n)  # very different token counts: the balances must differ
    return tok, feats


@pytest.fixture
def make_trainer(tiny_llama_path, tmp_path, step):
    """``build(balance, method, lbc)`` -> a RetainTrainer on a fresh tiny model, the same for the same method
    (its own copy each call); ``lbc`` is LoRAMoE's lbc_beta."""
    from retain.adapters.methods import prepare_model
    from retain.models import load_model
    from retain.training.run import training_arguments
    from retain.training.trainer import RetainTrainer

    tok, feats = step

    def build(balance="token", method="full", lbc=0.0):
        recipe = recipe_from_dict({
            "model": {"name": tiny_llama_path}, "method": method,
            "lora": {"r": 4, "alpha": 8, "dropout": 0.0}, "loramoe": {"num_experts": 2, "rank": 2, "dropout": 0.0, "lbc_beta": lbc},
            "datasets": [{"path": "task.jsonl", "type": "task", "weight": 3},
                         {"path": "world.jsonl", "type": "world", "weight": 1}],
            "mixture": {"loss_balance": balance},
            "train": {"output_dir": str(tmp_path / "run"), "progress": False}})
        model, _ = load_model(tiny_llama_path, device="cpu")
        torch.manual_seed(0)
        model = prepare_model(model, method, lora=recipe.lora, loramoe=recipe.loramoe)
        if method != "full":  # adapters start as the identity (LoRA B = 0): give them a gradient everywhere
            with torch.no_grad():
                for n, p in model.named_parameters():
                    if p.requires_grad:
                        p.add_(0.05 * torch.randn_like(p))
        return RetainTrainer(model=model, args=training_arguments(recipe, tmp_path / "run", 1), recipe=recipe,
                             balance=LossBalance(balance, SHARES), train_dataset=feats,
                             data_collator=Collator(tok.pad_token_id))

    return build


def trained(model) -> dict[str, torch.nn.Parameter]:
    return {n: p for n, p in model.named_parameters() if p.requires_grad}


def step_gradient(trainer, feats, cuts):
    """(loss, {name: grad}) of one optimizer step whose examples ``feats`` are cut into forward passes of the
    sizes ``cuts``, through the Trainer's own path: get_batch_samples, then training_step per pass."""
    assert sum(cuts) == len(feats)
    starts = [sum(cuts[:i]) for i in range(len(cuts))]
    batches = [trainer.data_collator(feats[a:a + c]) for a, c in zip(starts, cuts)]
    samples, n_items = trainer.get_batch_samples(iter(batches), len(batches), trainer.args.device)
    trainer.model.zero_grad(set_to_none=True)
    loss = sum(trainer.training_step(trainer.model, b, n_items) for b in samples)
    return loss, {n: p.grad.detach().clone() for n, p in trained(trainer.model).items()}


def reference(model, feats, pick):
    """({name: grad}, loss) of ``sum over examples of pick(i) * their token mean`` computed directly: one
    padded forward, plain cross-entropy per token, ``pick(i)`` the example's weight in the mean of means."""
    batch = Collator(0)(feats)
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    target = batch["labels"][:, 1:]
    ce = F.cross_entropy(logits[:, :-1].transpose(1, 2).float(), target, reduction="none", ignore_index=-100)
    per_example = ce.sum(1) / (target != -100).sum(1)
    loss = sum(pick(i) * per_example[i] for i in range(len(feats)))
    model.zero_grad(set_to_none=True)
    loss.backward()
    return {n: p.grad.detach().clone() for n, p in trained(model).items()}, loss.detach()


def token_mean_gradient(model, feats):
    """Gradient of the plain token mean over ``feats`` (every assistant token weighs the same)."""
    n = [sum(x != -100 for x in f["labels"][1:]) for f in feats]
    return reference(model, feats, lambda i: n[i] / sum(n))[0]


def combine(*parts):
    """sum of c * grads over (c, grads) pairs."""
    return {k: sum(c * g[k] for c, g in parts) for k in parts[0][1]}


def assert_same(a, b, atol=1e-6):
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=atol, rtol=1e-4)


def differs(a, b) -> bool:
    return any(not torch.allclose(a[k], b[k], atol=1e-5, rtol=1e-3) for k in a)


@pytest.mark.parametrize("method", ["full", "lora", "loramoe"])
def test_type_balance_gives_each_type_its_mixture_share_of_the_gradient(make_trainer, step, method):
    """(a) under `type` the step's gradient is 0.75 * (task token mean's) + 0.25 * (world token mean's),
    although the world examples hold most of the step's tokens; under `token` the world share is its token share."""
    _, feats = step
    tasks = [f for f in feats if f["sample_type"] == TASK]
    worlds = [f for f in feats if f["sample_type"] == WORLD]
    trainer = make_trainer("type", method)
    model = trainer.model
    g_task, g_world = token_mean_gradient(model, tasks), token_mean_gradient(model, worlds)
    _, got = step_gradient(trainer, feats, [len(feats)])
    assert_same(got, combine((SHARES[TASK], g_task), (SHARES[WORLD], g_world)))

    n_task = sum(sum(x != -100 for x in f["labels"][1:]) for f in tasks)
    n_world = sum(sum(x != -100 for x in f["labels"][1:]) for f in worlds)
    world_token_share = n_world / (n_task + n_world)
    assert world_token_share > 0.75  # the imbalance the option fixes
    trainer.balance = LossBalance("token")
    _, token = step_gradient(trainer, feats, [len(feats)])
    assert_same(token, combine((1 - world_token_share, g_task), (world_token_share, g_world)))
    assert differs(token, got)

    # A step that holds one type only: the shares are renormalised over the types present (its token mean).
    trainer.balance = LossBalance("type", SHARES)
    _, only = step_gradient(trainer, tasks, [2, 2])
    assert_same(only, g_task)


def test_example_balance_weighs_each_example_equally(make_trainer, step):
    """(b) `example`: the mean over the step's examples of each example's token-mean gradient."""
    _, feats = step
    trainer = make_trainer("example")
    singles = [token_mean_gradient(trainer.model, [f]) for f in feats]  # each example alone
    loss, got = step_gradient(trainer, feats, [len(feats)])
    assert_same(got, combine(*[(1 / len(feats), g) for g in singles]))
    _, ref_loss = reference(trainer.model, feats, lambda i: 1 / len(feats))
    torch.testing.assert_close(loss, ref_loss, atol=1e-6, rtol=1e-6)


def test_token_balance_is_the_step_token_mean_as_before(make_trainer, step):
    """(c) `token` (the default) is the loss retain always had: summed over the step's assistant tokens and
    divided by their count; its batches carry no weights (the former code path)."""
    _, feats = step
    assert MixtureConfig().loss_balance == "token"
    trainer = make_trainer("token")
    batches = [trainer.data_collator(feats[:3]), trainer.data_collator(feats[3:])]
    samples, _ = trainer.get_batch_samples(iter(batches), 2, trainer.args.device)
    assert all("loss_weight" not in b for b in samples)
    loss, got = step_gradient(trainer, feats, [3, 3])
    n = [sum(x != -100 for x in f["labels"][1:]) for f in feats]
    ref, ref_loss = reference(trainer.model, feats, lambda i: n[i] / sum(n))
    assert_same(got, ref)
    torch.testing.assert_close(loss, ref_loss, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("balance", ["token", "example", "type"])
def test_every_balance_is_the_same_however_the_step_is_cut(make_trainer, step, balance):
    """(d) one pass of 6, passes of 3+3, 1+2+3 and six of 1 (and the examples reordered within the step, as
    train.sort_by_length does) give the same loss and gradient."""
    _, feats = step
    trainer = make_trainer(balance, "lora")
    loss, whole = step_gradient(trainer, feats, [6])
    order = [1, 4, 0, 2, 3, 5]  # the world examples first
    for examples, cuts in [(feats, [3, 3]), (feats, [1, 2, 3]), (feats, [1] * 6), ([feats[i] for i in order], [2, 4])]:
        part_loss, part = step_gradient(trainer, examples, cuts)
        assert_same(part, whole)
        torch.testing.assert_close(part_loss, loss, atol=1e-6, rtol=1e-5)


def test_loramoe_lbc_term_is_the_same_under_every_balance(make_trainer, step):
    """The LBC keeps its scaling (the mean of the step's forward passes, times lbc_beta): the gradient it adds
    to a step, (with LBC) - (without), is the same whatever the balance of the LM loss."""
    _, feats = step
    added = []
    for balance in ("token", "example", "type"):
        with_lbc = step_gradient(make_trainer(balance, "loramoe", lbc=0.5), feats, [3, 3])[1]
        without = step_gradient(make_trainer(balance, "loramoe", lbc=0.0), feats, [3, 3])[1]
        added.append({k: with_lbc[k] - without[k] for k in with_lbc})
    assert any(g.abs().max() > 1e-6 for g in added[0].values())  # the LBC does reach the router
    assert_same(added[1], added[0])
    assert_same(added[2], added[0])


def test_the_option_is_checked_where_it_is_set():
    with pytest.raises(RetainError, match=r"mixture.loss_balance='tokens': expected one of token, example, type"):
        MixtureConfig(loss_balance="tokens")
    with pytest.raises(RetainError, match=r"datasets\[1\] \(b.jsonl\): missing 'type'.*loss_balance: type"):
        recipe_from_dict({"datasets": [{"path": "a.jsonl", "type": "task"}, {"path": "b.jsonl"}],
                          "mixture": {"loss_balance": "type"}})
    recipe_from_dict({"datasets": [{"path": "a.jsonl"}], "mixture": {"loss_balance": "example"}})  # no type needed


def test_type_shares_add_up_the_datasets_of_each_type():
    from retain.training.trainer import type_shares

    assert type_shares(["task", "world", "task", None], [0.5, 0.2, 0.2, 0.1]) == pytest.approx({TASK: 0.7, WORLD: 0.2})
