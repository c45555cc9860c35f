"""GenEval's rules on synthetic detections, and the shipped GenEval / GenEval2 prompt files."""

import json

import numpy as np
import pytest

from flowarena.tasks.geneval_rules import (
    COUNTING_THRESHOLD,
    MAX_OBJECTS,
    TAGS,
    Detection,
    class_names,
    evaluate,
    geneval_summary,
    keep_detections,
    load_geneval_prompts,
    relative_position,
)
from flowarena.tasks.prompts import DATA, PromptFileError, load_prompt_file


def box(cx, cy, w=10.0, h=10.0, score=0.99):
    return Detection((cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2), score)


def no_colour(cls, dets):
    raise AssertionError("colour asked for a clause without one")


# --- position --------------------------------------------------------------------------
@pytest.mark.parametrize("dx, dy, expected", [
    (-30, 0, {"left of"}), (30, 0, {"right of"}), (0, -30, {"above"}), (0, 30, {"below"}),
    (-30, -30, {"left of", "above"}),  # a diagonal is both: dx = dy = -0.707 after the margin
    (30, 5, {"right of"}),  # the small vertical offset is eaten by the margin
])
def test_relations(dx, dy, expected):
    assert relative_position(box(100 + dx, 100 + dy), box(100, 100)) == expected


def test_margin_of_a_tenth_of_the_summed_sizes():
    # two 10-px boxes: the margin is 0.1·(10 + 10) = 2 px; a side-by-side relation needs
    # (|offset| − 2) / |offset| > 0.5, an offset above 4 px
    assert relative_position(box(101.9, 100), box(100, 100)) == set()  # inside the margin: revised 0
    assert relative_position(box(103.9, 100), box(100, 100)) == set()  # revised 1.9 / 3.9 < 0.5
    assert relative_position(box(104.1, 100), box(100, 100)) == {"right of"}
    # bigger objects need a bigger offset: margin 0.1·(100 + 100) = 20 px, relation above 40
    assert relative_position(box(139, 100, 100, 100), box(100, 100, 100, 100)) == set()
    assert relative_position(box(141, 100, 100, 100), box(100, 100, 100, 100)) == {"right of"}


def test_revised_offset_is_divided_by_the_full_offset():
    # offset (30, 25), margin 2 in both axes: revised (28, 23) / |(30, 25)| = (0.717, 0.589)
    assert relative_position(box(130, 125), box(100, 100)) == {"right of", "below"}
    # offset (30, 12): revised (28, 10) / 32.3 = (0.867, 0.309): only right of
    assert relative_position(box(130, 112), box(100, 100)) == {"right of"}


def test_same_place_has_no_relation():
    assert relative_position(box(50, 50), box(50, 50)) == set()


# --- which detections count ------------------------------------------------------------
def test_keep_detections_thresholds_order_and_cap():
    dets = {"cat": [box(0, 0, score=s) for s in (0.31, 0.95, 0.5, 0.29, 0.91)], "dog": [box(0, 0, score=0.2)]}
    kept = keep_detections(dets, "two_object")
    assert [d.score for d in kept["cat"]] == [0.95, 0.91, 0.5, 0.31] and "dog" not in kept
    counted = keep_detections(dets, "counting")
    assert [d.score for d in counted["cat"]] == [0.95, 0.91]  # > 0.9 for counting
    many = keep_detections({"cat": [box(0, 0, score=0.5 + i / 100) for i in range(30)]}, "colors")
    assert len(many["cat"]) == MAX_OBJECTS == 16 and many["cat"][0].score == pytest.approx(0.79)
    assert COUNTING_THRESHOLD == 0.9


# --- the rules -------------------------------------------------------------------------
def test_count_and_exclude():
    rec = {"tag": "counting", "include": [{"class": "clock", "count": 2}],
           "exclude": [{"class": "clock", "count": 3}], "prompt": "a photo of two clocks"}
    two = {"clock": [box(10, 10), box(50, 50)]}
    assert evaluate(rec, two, no_colour)[:2] == (True, 1.0)
    one = {"clock": [box(10, 10)]}
    ok, partial, reasons = evaluate(rec, one, no_colour)
    assert not ok and partial == pytest.approx(np.mean([0.5, 1.0])) and "found 1" in reasons[0]
    three = {"clock": [box(10, 10), box(50, 50), box(90, 90)]}
    ok, partial, reasons = evaluate(rec, three, no_colour)
    # include holds (the first two exist) but the exclude clause is met; partial credit
    # counts all three: 1 − |2 − 3| / 2 = 0.5, exclude 0
    assert not ok and partial == pytest.approx(0.25) and "clock<3" in reasons[-1]


def test_colour_counts_the_first_count_detections():
    rec = {"tag": "colors", "include": [{"class": "car", "count": 1, "color": "red"}], "prompt": "a red car"}
    asked = []

    def colours(cls, dets):
        asked.append((cls, len(dets)))
        return ["red"] * len(dets)
    assert evaluate(rec, {"car": [box(10, 10), box(60, 60)]}, colours)[0]
    assert asked == [("car", 1)]  # only the first `count` detections are coloured
    ok, partial, _ = evaluate(rec, {"car": [box(10, 10)]}, lambda c, d: ["blue"])
    assert not ok and partial == pytest.approx(np.mean([1.0, 0.0]))


def test_colour_attr_two_clauses():
    rec = {"tag": "color_attr", "include": [{"class": "bus", "count": 1, "color": "yellow"},
                                            {"class": "dog", "count": 1, "color": "brown"}], "prompt": "p"}
    table = {"bus": "yellow", "dog": "white"}
    ok, partial, reasons = evaluate(rec, {"bus": [box(10, 10)], "dog": [box(60, 60)]},
                                    lambda cls, dets: [table[cls]] * len(dets))
    assert not ok and partial == pytest.approx(0.75) and "brown dog" in reasons[0]


@pytest.mark.parametrize("relation, where, ok", [
    ("left of", -40, True), ("left of", 40, False), ("right of", 40, True), ("above", 0, False),
])
def test_position_against_the_referenced_group(relation, where, ok):
    rec = {"tag": "position", "include": [{"class": "dog", "count": 1},
                                          {"class": "cat", "count": 1, "position": [relation, 0]}],
           "prompt": f"a photo of a cat {relation} a dog"}
    dets = {"dog": [box(100, 100)], "cat": [box(100 + where, 100)]}
    assert evaluate(rec, dets, no_colour)[0] is ok


def test_position_needs_every_pair():
    rec = {"tag": "position", "include": [{"class": "dog", "count": 2},
                                          {"class": "cat", "count": 1, "position": ["left of", 0]}],
           "prompt": "p"}
    # the cat is right of one dog and left of the other
    dets = {"dog": [box(100, 100), box(20, 100)], "cat": [box(60, 100)]}
    ok, partial, _ = evaluate(rec, dets, no_colour)
    assert not ok and partial == pytest.approx(np.mean([1.0, 1.0, 0.5]))


def test_position_without_a_target_fails():
    rec = {"tag": "position", "include": [{"class": "dog", "count": 1},
                                          {"class": "cat", "count": 1, "position": ["left of", 0]}],
           "prompt": "p"}
    ok, partial, reasons = evaluate(rec, {"cat": [box(10, 10)]}, no_colour)
    assert not ok and "no target for cat" in reasons[-1]
    assert partial == pytest.approx(np.mean([0.0, 1.0, 0.0]))


def test_summary_is_the_mean_over_tags():
    recs = [{"tag": "counting"}, {"tag": "counting"}, {"tag": "colors"}]
    s = geneval_summary(recs, [[True, False, True, True], [False] * 4, [True] * 4])
    assert s["per_tag"] == {"counting": pytest.approx(37.5), "colors": 100.0}
    assert s["overall"] == pytest.approx((37.5 + 100) / 2) and s["n_images"] == 12
    # tag stderrs: counting over prompts (0.75, 0) = 0.375, colors one prompt = 0
    assert s["overall_stderr"] == pytest.approx(100 * 0.375 / 2)


# --- the shipped prompt files ----------------------------------------------------------
def test_shipped_geneval_prompts():
    recs = load_geneval_prompts()
    assert len(recs) == 553 and len(class_names()) == 80
    counts = {t: sum(r["tag"] == t for r in recs) for t in TAGS}
    assert counts == {"single_object": 80, "two_object": 99, "counting": 80, "colors": 94,
                      "position": 100, "color_attr": 100}
    assert (DATA / "geneval" / "LICENSE").read_text().startswith("MIT License")


def test_shipped_geneval2_prompts_with_licence():
    recs = load_prompt_file(DATA / "geneval2" / "geneval2_data.jsonl")
    assert len(recs) == 800
    per_atoms = {k: sum(r["atom_count"] == k for r in recs) for k in range(3, 11)}
    assert per_atoms == {k: 100 for k in range(3, 11)}
    assert sum(len(r["vqa_list"]) for r in recs) == 6012
    assert "CC BY-NC 4.0" in (DATA / "geneval2" / "LICENSE").read_text()
    assert "Kamath" in (DATA / "geneval2" / "NOTICE.md").read_text()


@pytest.mark.parametrize("line, msg", [
    ('{"tag": "counting", "prompt": "x"', "not valid JSON"),
    ('{"tag": "nope", "include": [{"class": "cat", "count": 1}], "prompt": "x"}', "'tag' must be"),
    ('{"tag": "counting", "include": [{"class": "unicorn", "count": 1}], "prompt": "x"}', "80 COCO"),
    ('{"tag": "counting", "include": [{"class": "cat", "count": 0}], "prompt": "x"}', "positive integer"),
    ('{"tag": "colors", "include": [{"class": "cat", "count": 1, "color": "teal"}], "prompt": "x"}', "teal"),
    ('{"tag": "position", "include": [{"class": "cat", "count": 1, "position": ["left of", 0]}], '
     '"prompt": "x"}', "earlier clause"),
])
def test_malformed_geneval_files_name_the_line(tmp_path, line, msg):
    f = tmp_path / "meta.jsonl"
    f.write_text(json.dumps({"tag": "single_object", "include": [{"class": "cat", "count": 1}],
                             "prompt": "a cat"}) + "\n" + line + "\n")
    with pytest.raises(PromptFileError, match=msg) as e:
        load_geneval_prompts(f)
    assert ":2:" in str(e.value)
