"""Tree expansion with the deterministic fake backend: shape, level batching, ids, journals, filters."""

from __future__ import annotations

import json

import pytest

from retain.errors import RetainError
from retain.generation.backends.base import Completion
from retain.generation.config import PRESETS, DecompressConfig, nodes_per_level
from retain.generation.prompts import parse_questions
from retain.generation.run import decompress
from retain.utils.io import read_json, read_jsonl


def test_parse_questions_formats():
    text = (
        "Sure! Here are 6 questions:\n"
        "1. What is photosynthesis?\n"
        "2) How do plants store energy? They use starch.\n"
        "**3.** Why are leaves green?\n"
        "- What limits the rate of photosynthesis in deserts?\n"
        "Q5: How do cacti survive droughts\n"
        '6. "What do chloroplasts contain?"\n'
        "7. Yes\n"
        "I hope these help you learn more about plants and their biology.\n"
    )
    assert parse_questions(text) == [
        "What is photosynthesis?", "How do plants store energy?", "Why are leaves green?",
        "What limits the rate of photosynthesis in deserts?", "How do cacti survive droughts",
        "What do chloroplasts contain?",
    ]
    assert parse_questions(text, limit=2) == ["What is photosynthesis?", "How do plants store energy?"]
    assert parse_questions("I'm sorry, I can't help with that.") == []
    assert parse_questions("") == []
    # unnumbered questions are accepted, unnumbered statements are not
    assert parse_questions("What is a star made of?\nStars are hot.") == ["What is a star made of?"]


def _nodes(run_dir):
    return read_jsonl(run_dir / "nodes.jsonl")


def test_tree_shape_batching_and_ids(small_cfg, fake_backend):
    cfg = small_cfg()
    run_dir = decompress(cfg, fake_backend)
    nodes = _nodes(run_dir)
    ids = [n["id"] for n in nodes]
    assert len(ids) == len(set(ids))
    by_id = {n["id"]: n for n in nodes}
    for n in nodes:
        assert n["depth"] == n["id"].count(".") + 1
        assert n["parent_id"] == (n["id"].rpartition(".")[0] or None)
        assert n["parent_id"] is None or n["parent_id"] in by_id
        assert n["model"] == "fake-model" and n["params"]["max_new_tokens"] == 64
    configured = nodes_per_level(cfg.resolved_levels())
    for depth, (n_children, _) in enumerate(cfg.resolved_levels(), start=1):
        level = [n for n in nodes if n["depth"] == depth]
        assert 0 < len(level) <= configured[depth - 1]
        parents = {n["parent_id"] for n in level}
        for p in parents:
            assert sum(1 for n in level if n["parent_id"] == p) <= n_children
    # Level-synchronous batching: per level exactly one ask call and one answer call, each covering the
    # whole level (the level-1 ask is one call with several topic requests).
    per_level = [sum(1 for n in nodes if n["depth"] == d) for d in (1, 2, 3)]
    assert len(fake_backend.calls) == 6
    assert fake_backend.calls[1::2] == per_level
    assert fake_backend.calls[2] == per_level[0] and fake_backend.calls[4] == per_level[1]
    # The manifest's counts agree with the journal, and the missing slots are accounted for.
    m = read_json(run_dir / "manifest.json")
    assert m["status"] == "complete"
    for lv, want in zip(m["levels"], configured):
        assert lv["answered"] == sum(1 for n in nodes if n["depth"] == lv["depth"])
        assert lv["questions"] + lv["unfilled"] == (want if lv["depth"] == 1 else
                                                     lv["parents"] * lv["N"])
    assert m["levels"][2]["drops"].get("duplicate_exact", 0) > 0  # the fake repeats a question verbatim


def test_chunking_gives_the_same_tree(small_cfg, fake_backend, tmp_path):
    from tests.generation.conftest import FakeBackend

    a = decompress(small_cfg(), fake_backend)
    b = decompress(small_cfg(run_dir=str(tmp_path / "chunked"), chunk_size=2), FakeBackend())
    strip = lambda rows: [(r["id"], r["question"], r["answer"]) for r in rows]  # noqa: E731
    assert strip(_nodes(a)) == strip(_nodes(b))


def test_root_requests_split_over_topics(tmp_path, fake_backend):
    cfg = DecompressConfig(run_dir=str(tmp_path / "r"), levels=[(20, 16)], dedup_threshold=1.0, progress=False,
                           topics=["a", "b", "c"], max_list_size=8, oversample=0.5)
    decompress(cfg, fake_backend)
    rec = read_jsonl(tmp_path / "r" / "questions.jsonl")[0]
    # 30 candidates, at most 8 per request -> 4 requests, in one backend call
    assert rec["asked"] == 30 and len(rec["replies"]) == 4 and fake_backend.calls[0] == 4
    assert len(rec["questions"]) <= 20


class ScriptedBackend:
    """Root list with filter triggers; everything else from the fake backend."""

    name = "scripted"

    def __init__(self):
        from tests.generation.conftest import FakeBackend

        self.fake = FakeBackend()

    def chat(self, convs, params):
        out = []
        for c in convs:
            if len(c) == 1 and "numbered list" in c[0]["content"]:
                text = ("1. What is EMPTY about this?\n2. Tell me LOOP facts please?\n"
                        "3. What is JUNKQ in physics?\n4. What is a normal question here?")
                out.append(Completion(text=text))
            else:
                out.append(self.fake._reply(c, params))
        return out


def test_filters_are_recorded_and_dropped_nodes_not_expanded(tmp_path):
    cfg = DecompressConfig(run_dir=str(tmp_path / "f"), levels=[(4, 64), (2, 64)], dedup_threshold=1.0,
                           progress=False, topics=["x"])
    run_dir = decompress(cfg, ScriptedBackend())
    nodes = {n["id"]: n for n in _nodes(run_dir)}
    assert nodes["1"]["dropped"] == ["empty_answer"]
    assert nodes["2"]["dropped"] == ["repetition"]
    assert nodes["3"]["dropped"] == [] and nodes["4"]["dropped"] == []
    assert not any(i.startswith(("1.", "2.")) for i in nodes)  # dropped nodes get no children
    assert not any(i.startswith("3.") for i in nodes)  # node 3's follow-up reply had no list
    asked = {r["parent_id"]: r for r in read_jsonl(run_dir / "questions.jsonl")}
    assert asked["3"]["parse_failed"] == 1 and asked["3"]["drop_reasons"] == ["parse_failed"]
    assert "1" not in asked and "2" not in asked
    m = read_json(run_dir / "manifest.json")
    assert m["levels"][0]["drops"] == {"empty_answer": 1, "repetition": 1}
    assert m["levels"][1]["drops"]["parse_failed"] == 1
    sft = [json.loads(line) for line in (run_dir / "sft.jsonl").read_text().splitlines()]
    firsts = {row["messages"][0]["content"] for row in sft}
    assert firsts == {"What is JUNKQ in physics?", "What is a normal question here?"}


def test_semantic_dedup_in_tree_uses_whole_tree(tmp_path):
    """A follow-up that paraphrases a question kept at another level is dropped, with a pointer to it."""

    class Para:
        name = "para"

        def chat(self, convs, params):
            out = []
            for c in convs:
                if len(c) == 1 and "numbered list" in c[0]["content"]:
                    out.append(Completion("1. What is the capital city of France?\n2. How do volcanoes erupt?"))
                elif c[-1]["content"].startswith("Write a numbered list"):
                    out.append(Completion("1. What's the capital of France?\n2. Why is the sky blue during the day?"))
                else:
                    out.append(Completion("An answer with enough words to pass the filters."))
            return out

    cfg = DecompressConfig(run_dir=str(tmp_path / "s"), levels=[(2, 32), (2, 32)], progress=False, topics=["x"],
                           dedup_threshold=0.85)
    run_dir = decompress(cfg, Para())
    asked = read_jsonl(run_dir / "questions.jsonl")
    child = [r for r in asked if r["depth"] == 2]
    drops = [d for r in child for d in r["dropped"]]
    assert drops and all(d["reason"] == "duplicate_semantic" and d["of"] == "1" and d["similarity"] >= 0.85
                         for d in drops if "France" in d["question"])
    kept_q = [q["question"] for r in child for q in r["questions"]]
    assert kept_q.count("Why is the sky blue during the day?") == 1  # second parent's copy is an exact dup


def test_config_validation():
    with pytest.raises(RetainError, match="unknown preset"):
        DecompressConfig(run_dir="x", preset="deep")
    with pytest.raises(RetainError, match="level 2 has N=0"):
        DecompressConfig(run_dir="x", levels=[[2, 8], [0, 8]])
    with pytest.raises(RetainError, match=">= 1"):
        DecompressConfig(run_dir="x", levels=[[2, 0]])
    with pytest.raises(RetainError, match="pairs"):
        DecompressConfig(run_dir="x", levels=[[2]])
    assert nodes_per_level(PRESETS["wide"]) == [120, 480]
    assert nodes_per_level(PRESETS["balance"]) == [8, 64, 512]


def test_different_config_is_refused(small_cfg, fake_backend):
    decompress(small_cfg(), fake_backend)
    with pytest.raises(RetainError, match="different config .*levels"):
        decompress(small_cfg(levels=[(3, 64), (2, 64)]), fake_backend)
    with pytest.raises(RetainError, match="different config .*temperature"):
        decompress(small_cfg(temperature=0.1), fake_backend)
    # Settings that do not change what is generated may differ on resume.
    decompress(small_cfg(chunk_size=1), fake_backend)


# -- small trees that fall apart (issue 22 item 9) -----------------------------------------------------

def test_list_parsing_leftovers_are_cleaned_off_questions():
    text = ("Science: 1. What is science?\n**Biology:** 2) How do cells divide?\n"
            "Here are 3 questions: 3. Why is the sky blue?\n4. 4. What is a star made of?\n"
            "Question: What is gravity exactly?\nQ6: Follow-up question: How do tides form?\n"
            "7. Photosynthesis: how does it work?")
    assert parse_questions(text) == [
        "What is science?", "How do cells divide?", "Why is the sky blue?", "What is a star made of?",
        "What is gravity exactly?", "How do tides form?", "Photosynthesis: how does it work?"]


class CutAnswers:
    """Three root questions; their answers: one cut after a full sentence, one cut mid-sentence only, one whole."""

    name = "cut"
    ANSWERS = {"What is lava made of?": ("Lava is molten rock. It's a", "length"),
               "Why do volcanoes erupt so often?": ("It's a", "length"),
               "Where are most volcanoes found?": ("Along plate edges, mostly.", "stop")}

    def chat(self, convs, params):
        if "numbered list" in convs[0][-1]["content"]:
            return [Completion("\n".join(f"{i}. {q}" for i, q in enumerate(self.ANSWERS, 1)))]
        return [Completion(text=a, finish_reason=f) for a, f in (self.ANSWERS[c[-1]["content"]] for c in convs)]


@pytest.mark.parametrize("policy", ["trim", "drop", "keep"])
def test_answers_cut_by_the_limit_are_trimmed_dropped_or_kept_and_counted(tmp_path, policy):
    cfg = DecompressConfig(run_dir=str(tmp_path / policy), levels=[(3, 8)], dedup_threshold=1.0, progress=False,
                           topics=["volcanoes"], cut_answers=policy)
    run_dir = decompress(cfg, CutAnswers())
    nodes = {n["question"]: n for n in _nodes(run_dir)}
    cut1, cut2, whole = (nodes[q] for q in CutAnswers.ANSWERS)
    assert cut1["cut_at_limit"] and cut2["cut_at_limit"] and "cut_at_limit" not in whole
    level = read_json(run_dir / "manifest.json")["levels"][0]
    assert level["truncated"] == 2
    answers = [row["messages"][1]["content"] for row in read_jsonl(run_dir / "sft.jsonl")]
    if policy == "trim":
        assert cut1["answer"] == "Lava is molten rock." and cut1["untrimmed"] == "Lava is molten rock. It's a"
        assert cut1["dropped"] == [] and cut2["dropped"] == ["cut_by_limit"]
        assert level["trimmed"] == 1 and level["drops"] == {"cut_by_limit": 1} and level["kept"] == 2
        assert sorted(answers) == ["Along plate edges, mostly.", "Lava is molten rock."]
    elif policy == "drop":
        assert level["drops"] == {"cut_by_limit": 2} and answers == ["Along plate edges, mostly."]
    else:
        assert level["drops"] == {} and "Lava is molten rock. It's a" in answers


def test_a_level_keeping_under_half_of_what_it_asked_for_warns_with_the_reasons(tmp_path, caplog):
    """[[3,32],[2,32]] gave 2 dialogues without a word: the follow-up lists repeated the parent's question."""

    class Parrot:
        name = "parrot"

        def chat(self, convs, params):
            out = []
            for c in convs:
                if len(c) == 1 and "numbered list" in c[0]["content"]:
                    out.append(Completion("1. What is lava made of?\n2. Why do volcanoes erupt?\n3. Where is Etna?"))
                elif c[-1]["content"].startswith("Write a numbered list"):
                    out.append(Completion(f"1. {c[-3]['content']}\n2. {c[-3]['content']}"))  # the parent's question
                else:
                    out.append(Completion("An answer with enough words to pass the filters."))
            return out

    cfg = DecompressConfig(run_dir=str(tmp_path / "p"), levels=[(3, 32), (2, 32)], dedup_threshold=1.0,
                           progress=False, topics=["volcanoes"])
    with caplog.at_level("WARNING", logger="retain"):
        decompress(cfg, Parrot())
    lines = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(lines) == 1, lines  # level 1 kept 3 of 3: no warning
    assert lines[0].startswith("level 2 kept 0 of the 6 nodes asked for (6 duplicate_exact")
    assert "6 of the duplicates repeat their parent's question" in lines[0] and "--oversample" in lines[0]
