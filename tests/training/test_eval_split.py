"""A recipe holds out part of its own data (eval_split): never trained on, written to heldout.jsonl, its
validation loss reported; the recipe's eval: section scores it as the domain."""

from __future__ import annotations

import json

import pytest

from retain.errors import RetainError
from retain.training.recipe import recipe_from_dict
from retain.training.run import load_data, train


def test_eval_split_is_held_out_of_the_mixture_and_gets_a_validation_loss(make_recipe, toy_data, tmp_path):
    task, _ = toy_data
    data = make_recipe(datasets=[{"path": str(task), "eval_split": 0.25}], train={"max_steps": 2})
    recipe = recipe_from_dict(data)
    mixture, heldout = load_data(recipe)
    distinct = {json.dumps(json.loads(line)["messages"]) for line in task.read_text().splitlines()}
    held = {json.dumps(ex["messages"]) for ex in heldout}
    assert len(held) == round(len(distinct) / 4) and len(heldout) + len(mixture.examples) == 16
    assert not held & {json.dumps(ex["messages"]) for ex in mixture.examples}  # duplicates stay on one side
    res = train(recipe)
    written = [json.loads(line) for line in (tmp_path / "run" / "heldout.jsonl").read_text().splitlines()]
    assert [r["messages"] for r in written] == [ex["messages"] for ex in heldout]
    assert res.heldout == len(heldout) and res.eval_loss is not None and res.eval_loss > 0
    assert json.loads((tmp_path / "run" / "train_result.json").read_text())["eval_loss"] == res.eval_loss
    # a count instead of a share, and the same seed holds out the same records
    again = load_data(recipe_from_dict(make_recipe(datasets=[{"path": str(task), "eval_split": len(held)}])))[1]
    assert [ex["messages"] for ex in again] == [ex["messages"] for ex in heldout]


@pytest.mark.parametrize("split, eval_section, needle", [
    (1.5, None, r"eval_split=1.5: give a share in \(0, 1\) or a whole number"),
    (0.0, None, r"eval_split=0.0: give a share"),
    (99, None, "holds out 99 of .* distinct records, leaving none to train on"),
    (None, {"domain": "heldout"}, "eval.domain=heldout: no dataset holds out a split"),
    (None, {"tuned": ["x"]}, "eval.tuned: the run's own model/ folder is evaluated"),
])
def test_bad_splits_and_eval_sections_are_refused_before_training(make_recipe, toy_data, split, eval_section, needle):
    task, _ = toy_data
    data = make_recipe(datasets=[{"path": str(task), "eval_split": split}])
    if eval_section is not None:
        data["eval"] = eval_section
    with pytest.raises(RetainError, match=needle):
        load_data(recipe_from_dict(data))


def test_eval_section_scores_the_heldout_split_as_the_domain(make_recipe, toy_data, tmp_path, capsys):
    from retain.cli import main

    task, _ = toy_data
    recipe = make_recipe(write=True, datasets=[{"path": str(task), "eval_split": 4}], train={"max_steps": 2},
                         eval={"profile": "tiny", "probes": {"arc_easy": 6}, "domain": "heldout",
                               "gate": "{domain: {min_gain: -100}}"})
    assert main(["train", str(recipe)]) == 0
    out = capsys.readouterr().out
    rows = json.loads((tmp_path / "run" / "eval" / "eval.json").read_text())["rows"]
    assert rows[1]["domain"]["name"] == "heldout" and rows[1]["domain"]["n"] >= 4
    assert "validation loss" in out and "gate (strict): passed" in out
