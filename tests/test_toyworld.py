import json

import numpy as np
import pytest

from flowarena.tasks.prompts import load_toy_split, toy_split_path
from flowarena.tasks.toyworld.grammar import (
    Spec,
    canonical_specs,
    held_out_keys,
    make_splits,
    parse_prompt,
    sample_caption_spec,
    vocabulary,
)
from flowarena.tasks.toyworld.judge import QuestionError, ToyJudge
from flowarena.tasks.toyworld.judge_check import judge_accuracy
from flowarena.tasks.toyworld.scene import Obj, relation_of, render, sample_layout


def test_shipped_splits_are_reproducible():
    splits, _ = make_splits(seed=0)
    for name, records in splits.items():
        shipped = [json.loads(line) for line in toy_split_path(name).read_text().splitlines()]
        assert shipped == records, name


def test_eval_is_stratified_and_held_out_everywhere():
    ev = load_toy_split("eval")
    counts = {}
    for r in ev:
        counts[r["atom_count"]] = counts.get(r["atom_count"], 0) + 1
    assert counts == {2: 8, 3: 24, 4: 40, 5: 40, 6: 40, 7: 40}
    held = held_out_keys()
    train_keys = {parse_prompt(r["prompt"]).key() for r in load_toy_split("train")}
    eval_keys = {parse_prompt(r["prompt"]).key() for r in ev}
    ood_keys = {parse_prompt(r["prompt"]).key() for r in load_toy_split("ood")}
    assert eval_keys <= held and ood_keys <= held
    assert not train_keys & held and not eval_keys & ood_keys
    rng = np.random.default_rng(0)
    assert all(sample_caption_spec(rng, held).key() not in held for _ in range(2000))


def test_key_ignores_phrasing_and_orientation():
    a, b = (2, "red", "circle"), (1, "blue", "square")
    assert Spec((a, b), "left of").key() == Spec((b, a), "right of").key()
    assert Spec((a, b), "above").key() == Spec((b, a), "below").key()
    assert Spec((a, b)).key() == Spec((b, a), alt=True, wrapper=2).key()
    assert Spec((a, b), "left of").key() != Spec((a, b), "right of").key()


def test_records_follow_geneval2_format():
    rec = Spec(((2, "yellow", "square"), (1, "blue", "circle")), "left of").record()
    assert rec["prompt"] == "two yellow squares left of a blue circle"
    assert rec["vqa_list"] == [
        ["How many squares are in the image?", "two"], ["Are the squares yellow?", "Yes"],
        ["Are there any squares in the image?", "Yes"], ["Are the squares left of the circle?", "Yes"],
        ["How many circles are in the image?", "one"], ["Is the circle blue?", "Yes"],
        ["Are there any circles in the image?", "Yes"]]
    assert rec["skills"] == ["count", "attribute", "object", "position", "count", "attribute", "object"]
    assert rec["atom_count"] == 6  # "a" gets a count question but no atom
    assert Spec(((1, "red", "circle"),)).record()["atom_count"] == 2


def test_prompt_space_and_parser_roundtrip():
    specs = canonical_specs()
    assert len(specs["single"]) == 24 and len(specs["counting"]) == 72
    for cat in specs.values():
        for s in cat[:50]:
            assert parse_prompt(s.text) == s
    for r in load_toy_split("ood"):
        assert parse_prompt(r["prompt"]).record() == r
    with pytest.raises(ValueError):
        parse_prompt("a red banana")
    assert "circles" in vocabulary() and "banana" not in vocabulary()


def test_renderer_is_deterministic_and_layouts_satisfy_relations():
    rng1, rng2 = np.random.default_rng(3), np.random.default_rng(3)
    groups = [(2, "red", "circle"), (1, "blue", "square")]
    for rel in ("left of", "right of", "above", "below"):
        o1 = sample_layout(groups, rel, rng1)
        o2 = sample_layout(groups, rel, rng2)
        assert o1 == o2
        assert np.array_equal(render(o1), render(o2))
        assert all(rel in relation_of(a.box, b.box) for a in o1[:2] for b in o1[2:])
    img = render([Obj("square", "red", 16, 16, 8)])
    assert img.shape == (32, 32, 3) and img.dtype == np.uint8
    assert tuple(img[16, 16]) == (220, 40, 40) and tuple(img[0, 0]) == (128, 128, 128)


def test_geneval_position_rule():
    box = (10, 10, 14, 14)
    assert relation_of((0, 10, 4, 14), box) == {"left of"}
    assert relation_of((20, 10, 24, 14), box) == {"right of"}
    assert relation_of((10, 0, 14, 4), box) == {"above"}
    assert relation_of((10, 10.5, 14, 14.5), box) == set()  # within the 0.1 size margin


def test_judge_is_right_on_clean_renders_per_skill():
    specs = [parse_prompt(r["prompt"]) for r in load_toy_split("eval")]
    acc = judge_accuracy(specs, layouts=2, seed=1)
    assert set(acc) == {"object", "count", "attribute", "position"}
    for skill, v in acc.items():
        assert v["true"] >= 0.99, (skill, v)
        assert v["false"] >= 0.99, (skill, v)


def test_judge_soft_answers():
    judge = ToyJudge()
    comps = judge.parse(render([Obj("circle", "red", 8, 16, 8), Obj("circle", "blue", 24, 16, 8)]))
    dist = judge.p_yes_or_count(comps, "How many circles are in the image?")
    assert dist.sum() == pytest.approx(1.0)
    assert dist.argmax() == 2
    # one red and one blue circle: "are the circles red?" is about one half
    assert judge.answer_prob(comps, "Are the circles red?", "Yes") == pytest.approx(0.5, abs=0.05)
    assert judge.answer_prob(comps, "Are there any squares in the image?", "No") > 0.95
    blank = judge.parse(np.full((32, 32, 3), 128, np.uint8))
    assert blank == [] and judge.answer_prob(blank, "How many circles are in the image?", "zero") == 1.0
    with pytest.raises(QuestionError):
        judge.answer_prob(comps, "Is the circle happy?", "Yes")
