"""GenEval2's template, read back from its own prompts: the rules rebuild every official
record from the prompt text alone, and generated prompts follow the same rules, balanced over
atom counts, reproducible, and never the test set's under the canonical key."""

from collections import Counter

import pytest

from flowarena.tasks.geneval2_template import NP, Scene, generate, parse, sample_scene, template
from flowarena.tasks.prompts import DATA, load_prompt_file

OFFICIAL = load_prompt_file(DATA / "geneval2" / "geneval2_data.jsonl")


def test_the_rules_rebuild_all_800_official_records_from_their_prompts():
    rebuilt = [parse(r["prompt"]).record() for r in OFFICIAL]
    assert len(rebuilt) == 800
    assert [r for r, o in zip(rebuilt, OFFICIAL) if r != o] == []


def test_the_800_official_prompts_have_800_distinct_canonical_keys():
    assert len({parse(r["prompt"]).key() for r in OFFICIAL}) == 800


def test_the_canonical_key_folds_mirrors_and_the_order_of_and():
    cat, dog, cow = NP("cat", 1), NP("dog", 2, "red"), NP("cow", 3)
    left = Scene("NP REL NP", (cat, dog), ((0, "to the left of", 1),))
    right = Scene("NP REL NP", (dog, cat), ((0, "to the right of", 1),))
    assert left.key() == right.key() and left.prompt() == "a cat to the left of two red dogs"
    assert Scene("NP and NP", (cat, cow)).key() == Scene("NP and NP", (cow, cat)).key()
    chase = Scene("NP REL NP", (cat, dog), ((0, "chasing", 1),))
    assert chase.key() != Scene("NP REL NP", (dog, cat), ((0, "chasing", 1),)).key()  # verbs do not fold
    assert chase.key() != left.key()


def test_generated_records_follow_the_rules_and_balance_atom_counts():
    recs = generate(400, seed=3)
    assert Counter(r["atom_count"] for r in recs) == {a: 50 for a in range(3, 11)}
    t = template()
    animals, verbs = set(t["objects_animals"]), set(t["verbs"])
    for r in recs:
        scene = parse(r["prompt"])
        assert scene.record() == r  # the questions, skills and atoms GenEval2's rules give
        assert len({p.noun for p in scene.nps}) == len(scene.nps)  # distinct objects
        assert all(scene.nps[s].noun in animals and scene.nps[o].noun in animals
                   for s, rel, o in scene.relations if rel in verbs)
        if scene.shape == "NP":
            assert scene.nps[0].count > 1 and scene.nps[0].attribute
    shapes = Counter(parse(r["prompt"]).shape for r in recs if r["atom_count"] == 10)
    assert set(shapes) <= set(t["skeleton_counts_by_atom_count"]["10"])


def test_generation_is_seeded_and_avoids_excluded_keys():
    test_keys = {parse(r["prompt"]).key() for r in OFFICIAL}
    a, b = generate(200, seed=7, exclude=test_keys), generate(200, seed=7, exclude=test_keys)
    assert a == b and a != generate(200, seed=8, exclude=test_keys)
    keys = [parse(r["prompt"]).key() for r in a]
    assert len(set(keys)) == len(keys) and not set(keys) & test_keys


def test_the_exclusion_can_bite():
    """A 3-atom `NP` space is small: excluding what one seed drew leaves a different draw."""
    import numpy as np

    first = sample_scene(np.random.default_rng(0), 3)
    again = generate(1, seed=0, atom_counts=[3], exclude={first.key()})
    assert parse(again[0]["prompt"]).key() != first.key()


@pytest.mark.parametrize("bad", ["a unicorn", "two red dog", "a cat beside a dog", ""])
def test_prompts_outside_the_template_are_refused(bad):
    with pytest.raises(ValueError):
        parse(bad)


def test_the_shipped_splits_are_the_generators_and_disjoint_from_the_test_set():
    from flowarena.tasks.geneval2_template import build_splits
    from flowarena.tasks.prompts import load_prompts

    built = build_splits()
    test_keys = {parse(r["prompt"]).key() for r in OFFICIAL}
    seen = set(test_keys)
    for name, n in (("geneval2-val", 800), ("geneval2-train", 20_000)):
        shipped = load_prompts(name)
        assert shipped == built[name] and len(shipped) == n  # bit-for-bit, record by record
        assert Counter(r["atom_count"] for r in shipped) == {a: n // 8 for a in range(3, 11)}
        keys = {parse(r["prompt"]).key() for r in shipped}
        assert len(keys) == n and not keys & seen  # no test (or validation) prompt in the split
        seen |= keys


def test_prompt_sets_by_name_or_file(tmp_path):
    from flowarena.tasks.prompts import PromptFileError, load_prompts

    assert load_prompts("geneval2-test") == OFFICIAL
    (tmp_path / "p.txt").write_text("a red car\n\nthe sea at dawn\n")
    assert load_prompts(tmp_path / "p.txt") == [{"prompt": "a red car"}, {"prompt": "the sea at dawn"}]
    meta = tmp_path / "m.jsonl"
    meta.write_text('{"tag": "single_object", "include": [{"class": "car", "count": 1}], '
                    '"prompt": "a car"}\n')
    assert load_prompts(meta)[0]["prompt"] == "a car"
    with pytest.raises(PromptFileError, match="neither a shipped one"):
        load_prompts("geneval2-everything")
    (tmp_path / "bad.jsonl").write_text('{"prompt": "x"\n')
    with pytest.raises(PromptFileError, match="bad.jsonl:1: not valid JSON"):
        load_prompts(tmp_path / "bad.jsonl")
