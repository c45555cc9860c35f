import json
import math

import pytest

from flowarena.tasks.prompts import PromptFileError, load_prompt_file
from flowarena.tasks.soft_tifa import geometric_mean, soft_tifa

RECS = [
    {"prompt": "a red circle", "atom_count": 2,
     "vqa_list": [["q1", "one"], ["q2", "Yes"], ["q3", "Yes"]], "skills": ["count", "attribute", "object"]},
    {"prompt": "two blue squares", "atom_count": 3,
     "vqa_list": [["q1", "two"], ["q2", "Yes"], ["q3", "Yes"]], "skills": ["count", "attribute", "object"]},
]


def test_hand_computed_soft_tifa():
    scores = [[[1.0, 0.5, 0.8]], [[0.2, 1.0, 1.0]]]
    r = soft_tifa(RECS, scores)
    am = [(1 + 0.5 + 0.8) / 3, (0.2 + 1 + 1) / 3]
    gm = [(1 * 0.5 * 0.8) ** (1 / 3), 0.2 ** (1 / 3)]
    assert r.am == pytest.approx(100 * sum(am) / 2)
    assert r.gm == pytest.approx(100 * sum(gm) / 2)
    # stderr over prompts: sample std (ddof 1) / sqrt(n)
    assert r.gm_stderr == pytest.approx(100 * abs(gm[0] - gm[1]) / math.sqrt(2) / math.sqrt(2))
    assert r.per_skill["count"] == pytest.approx(100 * (1.0 + 0.2) / 2)
    assert r.per_skill["attribute"] == pytest.approx(100 * (0.5 + 1.0) / 2)
    assert r.per_skill["object"] == pytest.approx(100 * (0.8 + 1.0) / 2)
    assert r.per_atom_count == {2: pytest.approx(100 * gm[0]), 3: pytest.approx(100 * gm[1])}
    assert r.n_prompts == 2 and r.n_images == 2


def test_several_images_per_prompt_average_per_prompt():
    scores = [[[1.0, 1.0, 1.0], [0.0, 1.0, 1.0]], [[1.0, 1.0, 1.0]]]
    r = soft_tifa(RECS, scores)
    # prompt 1: GM of the images = (1 + 0)/2 (0 clamped to 1e-300 -> ~0)
    assert r.per_prompt_gm[0] == pytest.approx(0.5, abs=1e-12)
    assert r.per_prompt_am[0] == pytest.approx((1 + 2 / 3) / 2)
    assert r.per_skill["count"] == pytest.approx(100 * 2 / 3)
    assert r.n_images == 3


def test_geometric_mean_clamps_zero():
    assert geometric_mean([0.0, 1.0]) == pytest.approx(1e-150)


def test_mismatched_scores_raise():
    with pytest.raises(ValueError):
        soft_tifa(RECS, [[[1.0, 1.0]], [[1.0, 1.0, 1.0]]])
    with pytest.raises(ValueError):
        soft_tifa(RECS, [[[1.0, 1.0, 1.0]]])


@pytest.mark.parametrize("line,msg", [
    ("not json", "not valid JSON"),
    ('{"prompt": "", "atom_count": 1, "vqa_list": [], "skills": []}', "non-empty"),
    ('{"prompt": "x", "atom_count": 1, "vqa_list": [["q"]], "skills": ["object"]}', "pairs"),
    ('{"prompt": "x", "atom_count": 1, "vqa_list": [["q", "Yes"]], "skills": []}', "one skill"),
    ('{"prompt": "x", "atom_count": 1, "vqa_list": [["q", "Yes"]], "skills": ["smell"]}', "unknown skill"),
    ('{"prompt": "x", "atom_count": "1", "vqa_list": [["q", "Yes"]], "skills": ["object"]}', "atom_count"),
])
def test_malformed_prompt_files_name_the_line(tmp_path, line, msg):
    good = json.dumps(RECS[0])
    p = tmp_path / "p.jsonl"
    p.write_text(good + "\n" + line + "\n")
    with pytest.raises(PromptFileError, match=f"p.jsonl:2: .*{msg}"):
        load_prompt_file(p)


def test_missing_and_empty_prompt_files(tmp_path):
    with pytest.raises(PromptFileError, match="not found"):
        load_prompt_file(tmp_path / "nope.jsonl")
    (tmp_path / "e.jsonl").write_text("\n")
    with pytest.raises(PromptFileError, match="no prompts"):
        load_prompt_file(tmp_path / "e.jsonl")
