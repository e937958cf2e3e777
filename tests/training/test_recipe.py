"""Recipes: strict YAML parsing, suggestions, cross-field checks, and the shipped recipes."""

from __future__ import annotations

from pathlib import Path

import pytest

from retain.errors import RetainError
from retain.training.recipe import dump_recipe, load_recipe, recipe_from_dict

REPO = Path(__file__).resolve().parents[2]


def test_unknown_key_names_path_and_suggests(make_recipe):
    data = make_recipe()
    data["optim"]["learning_rate"] = 1e-4
    with pytest.raises(RetainError, match=r"unknown key 'optim.learning_rate'; did you mean 'optim.lr'"):
        recipe_from_dict(data)
    data = make_recipe()
    data["datasets"][1]["wieght"] = 1
    with pytest.raises(RetainError, match=r"datasets\[1\].wieght'; did you mean 'datasets\[1\].weight'"):
        recipe_from_dict(data)
    with pytest.raises(RetainError, match=r"unknown key 'methd'; did you mean 'method'"):
        recipe_from_dict({**make_recipe(), "methd": "lora"})


@pytest.mark.parametrize(
    "section, value, needle",
    [("train", {"batch_size": "eight"}, "train.batch_size: expected int, got 'eight'"),
     ("method", "lorra", "did you mean 'lora'"),
     ("train", {"grad_accum": 0}, "train.grad_accum=0: must be >= 1"),
     ("loramoe", {"num_experts": 0}, "loramoe.num_experts=0"),
     ("optim", {"betas": [0.9]}, "optim.betas: expected")],
)
def test_wrong_types_and_values_are_named(make_recipe, section, value, needle):
    with pytest.raises(RetainError, match=needle):
        recipe_from_dict(make_recipe(**{section: value}))


def test_missing_type_under_lbc(make_recipe):
    data = make_recipe(method="loramoe")
    del data["datasets"][0]["type"]
    with pytest.raises(RetainError, match=r"datasets\[0\] .*missing 'type'.*lbc_beta: 0"):
        recipe_from_dict(data)
    data["loramoe"]["lbc_beta"] = 0.0  # no LBC: types are optional
    assert recipe_from_dict(data).uses_lbc is False
    recipe_from_dict({**data, "method": "lora"})


def test_yaml_file_floats_overrides_and_round_trip(make_recipe, tmp_path):
    path = make_recipe(write=True)
    path.write_text(path.read_text() + "# lr written like people write it\n", encoding="utf-8")
    text = path.read_text().replace("lr: 0.003", "lr: 2e-4")
    path.write_text(text, encoding="utf-8")
    r = load_recipe(path, ["train.batch_size=2", "loramoe.num_experts=4"])
    assert r.optim.lr == 2e-4 and r.train.batch_size == 2 and r.loramoe.num_experts == 4
    again = tmp_path / "again.yaml"
    again.write_text(dump_recipe(r), encoding="utf-8")
    assert load_recipe(again) == r
    with pytest.raises(RetainError, match="expected key.path=value"):
        load_recipe(path, ["nonsense"])
    with pytest.raises(RetainError, match="--train.bach_size: unknown option; did you mean --train.batch_size"):
        load_recipe(path, ["train.bach_size=2"])
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: {name: x\n", encoding="utf-8")
    with pytest.raises(RetainError, match="invalid YAML"):
        load_recipe(bad)


@pytest.mark.parametrize("path", sorted((REPO / "recipes").glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_recipes_parse_and_state_their_command(path):
    first = path.read_text(encoding="utf-8").splitlines()[0]
    assert first.startswith("# retain train recipes/") and path.name in first
    recipe = load_recipe(path)
    assert recipe.datasets and recipe.train.output_dir.startswith("runs/")


@pytest.mark.parametrize("item, needle", [
    ("optim.learnin_rate=1e-4", "--optim.learnin_rate: unknown option; did you mean --optim.lr?"),
    ("lora.rank=4", "--lora.rank: unknown option; did you mean --lora.r?"),
    ("train.max_step=3", "--train.max_step: unknown option; did you mean --train.max_steps?"),
    ("datasets.0.path=x", "--datasets.0.path: unknown option"),
    ("optim.lr=fast", "--optim.lr: expected float, got 'fast'"),
    ("train.batch_size=0", "train.batch_size=0: must be >= 1"),
])
def test_override_errors_name_the_flag_not_the_recipe_file(make_recipe, item, needle):
    path = make_recipe(write=True)
    with pytest.raises(RetainError) as e:
        load_recipe(path, [item])
    assert str(e.value).startswith(needle) and str(path) not in str(e.value), str(e.value)


def test_a_bad_value_in_the_file_names_the_file_and_the_item(make_recipe, tmp_path):
    import yaml

    data = make_recipe()
    data["datasets"][1]["type"] = "wrld"
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    with pytest.raises(RetainError) as e:
        load_recipe(path)
    assert str(e.value) == (f"{path}: datasets[1].type: expected one of 'world' | 'task', got 'wrld'; "
                            "did you mean 'world'?")
    data["datasets"][1]["type"], data["train"]["batch_size"] = "world", 0
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    with pytest.raises(RetainError, match=f"^{path}: train.batch_size=0: must be >= 1$"):
        load_recipe(path)


def test_python_api_runs_the_same_checks(make_recipe):
    """Recipe(...) in Python (the demo) and a YAML file get the same errors: the checks live in the
    dataclasses, not in the parser."""
    from retain.training.config import DatasetSpec, OptimConfig, Recipe, TrainConfig, TrainLoopConfig

    assert TrainConfig is TrainLoopConfig  # the old name still imports
    with pytest.raises(RetainError, match=r"^optim.warmup_ratio=1.5: must be in \[0, 1\)$"):
        OptimConfig(warmup_ratio=1.5)
    with pytest.raises(RetainError, match="^datasets: empty"):
        Recipe()
    with pytest.raises(RetainError, match=r"^datasets\[0\] \(x.jsonl\): missing 'type'"):
        Recipe(datasets=[DatasetSpec(path="x.jsonl")], method="loramoe")
    with pytest.raises(RetainError, match="^datasets: empty"):
        recipe_from_dict({"method": "lora"})


def test_a_key_given_twice_is_refused_with_its_line(tmp_path):
    """yaml.safe_load keeps the last of two equal keys silently; the one loader refuses them at any depth."""
    from retain.options import load_yaml

    path = tmp_path / "r.yaml"
    path.write_text("method: lora\ntrain:\n  max_steps: 3\n  max_steps: 5\n", encoding="utf-8")
    with pytest.raises(RetainError, match=r"r\.yaml:4: invalid YAML \(key 'max_steps' given twice \(first on line 3\)"):
        load_recipe(path)
    assert load_yaml("a: &x {b: 1}\nc: {<<: *x, b: 2}\n") == {"a": {"b": 1}, "c": {"b": 2}}  # merge keys still work


@pytest.mark.parametrize("section, value, needle", [
    ("optim", {"betas": [1.5, 0.9]}, r"optim.betas=\[1.5, 0.9\]: AdamW needs two values in \[0, 1\)"),
    ("optim", {"weight_decay": -0.1}, "optim.weight_decay=-0.1: must be >= 0"),
    ("optim", {"warmup_steps": -1}, "optim.warmup_steps=-1: must be >= 0"),
    ("optim", {"max_grad_norm": -1.0}, "optim.max_grad_norm=-1.0: must be >= 0"),
    ("train", {"seed": 2**70}, "train.seed=1180591620717411303424: must be in 0..4294967295"),
])
def test_values_the_optimizer_or_seeding_would_reject_fail_in_the_config(make_recipe, section, value, needle):
    """These used to pass the recipe checks and fail in torch mid-start (a traceback, a half-made run folder)."""
    with pytest.raises(RetainError, match=needle):
        recipe_from_dict(make_recipe(**{section: value}))


@pytest.mark.parametrize("limit", [0, -2])
def test_a_dataset_limit_below_one_names_limit(make_recipe, limit):
    data = make_recipe()
    data["datasets"][1]["limit"] = limit
    with pytest.raises(RetainError, match=rf"datasets\[1\].limit={limit}: must be >= 1"):
        recipe_from_dict(data)
