import numpy as np
import pytest
import torch

from flowarena.models import ModelError
from flowarena.rewards import RewardError, build_reward, build_rewards, reward_names
from flowarena.rewards.toy_pick import load_toy_pick, perturb_spec, spoil_scene
from flowarena.tasks.prompts import load_toy_split
from flowarena.tasks.toyworld.grammar import parse_prompt
from flowarena.tasks.toyworld.scene import render, sample_layout


def _as_tensor(imgs):
    return torch.from_numpy(np.stack(imgs)).permute(0, 3, 1, 2).float() / 255


@pytest.fixture(scope="module")
def eval_scenes():
    rng = np.random.default_rng(0)
    specs = [parse_prompt(r["prompt"]) for r in load_toy_split("eval")[::2]]
    objs = [sample_layout(list(s.groups), s.relation, rng) for s in specs]
    return specs, objs, rng


def test_registry():
    assert {"toy-tifa", "toy-pick"} <= set(reward_names())
    with pytest.raises(RewardError, match="unknown reward"):
        build_reward("aesthetic-9000")


def test_toy_tifa_reward_scores_clean_renders_high(eval_scenes):
    specs, objs, _ = eval_scenes
    reward = build_reward("toy-tifa")
    images = _as_tensor([render(o) for o in objs])
    out = reward(images, [s.text for s in specs], [s.record() for s in specs])
    assert out.scores.shape == (len(specs),)
    assert out.scores.mean() > 0.95
    blank = torch.full_like(images, 128 / 255)
    assert reward(blank, [s.text for s in specs], [s.record() for s in specs]).scores.max() < 0.01


def test_toy_pick_prefers_the_right_caption_and_clean_images(eval_scenes):
    specs, objs, rng = eval_scenes
    reward = build_reward("toy-pick")
    clean = _as_tensor([render(o) for o in objs])
    spoiled = _as_tensor([spoil_scene(o, rng, 32) for o in objs])
    right = reward(clean, [s.text for s in specs], None).scores
    wrong = reward(clean, [perturb_spec(s, rng).text for s in specs], None).scores
    dirty = reward(spoiled, [s.text for s in specs], None).scores
    assert (right > wrong).float().mean() > 0.8
    assert (right > dirty).float().mean() > 0.7
    assert 0 < right.mean() < 100  # PickScore-like scale: exp(logit_scale) * cosine


def test_missing_preference_checkpoint(tmp_path):
    with pytest.raises(ModelError, match="not found"):
        load_toy_pick(tmp_path / "nope.safetensors")


def test_reward_spec_parsing_and_bad_specs():
    from flowarena.rewards import parse_reward_spec

    assert parse_reward_spec("toy-tifa=1.0, toy-pick=0.5") == [("toy-tifa", 1.0), ("toy-pick", 0.5)]
    assert parse_reward_spec("toy-tifa") == [("toy-tifa", 1.0)]
    for bad, msg in [("toy-tifa=x", "not a number"), ("toy-tifa=-1", "positive"), ("a,,b", "empty"),
                     ("toy-tifa,toy-tifa=2", "twice")]:
        with pytest.raises(RewardError, match=msg):
            parse_reward_spec(bad)
    with pytest.raises(RewardError, match="unknown reward"):
        build_rewards("toy-tifa=1,aesthetic-9000=1")


def test_weighted_rewards_sum_and_keep_components(eval_scenes):
    specs, objs, _ = eval_scenes
    specs, objs = specs[:6], objs[:6]
    images = _as_tensor([render(o) for o in objs])
    prompts, records = [s.text for s in specs], [s.record() for s in specs]
    multi = build_rewards("toy-tifa=1.0,toy-pick=0.5")
    out = multi(images, prompts, records)
    tifa = build_reward("toy-tifa")(images, prompts, records).scores
    pick = build_reward("toy-pick")(images, prompts, records).scores
    assert torch.allclose(out.details["components"]["toy-tifa"], tifa)
    assert torch.allclose(out.scores, tifa + 0.5 * pick)


def test_multi_reward_advantages_normalise_each_reward():
    from flowarena.methods.advantages import group_advantages, multi_reward_advantages

    a = torch.tensor([0.0, 1.0, 0.0, 1.0])  # small scale
    b = torch.tensor([10.0, 30.0, 20.0, 20.0])  # large scale
    adv, flat = multi_reward_advantages({"a": a, "b": b}, {"a": 1.0, "b": 0.5}, 2, std="group")
    expect = group_advantages(a, 2, std="group")[0] + 0.5 * group_advantages(b, 2, std="group")[0]
    assert torch.allclose(adv, expect) and flat.tolist() == [False, False]
    # the second group is flat in b but not in a: not flat overall
    _, flat = multi_reward_advantages({"a": torch.ones(4), "b": b}, {"a": 1, "b": 1}, 2, std="group")
    assert flat.tolist() == [False, True]
