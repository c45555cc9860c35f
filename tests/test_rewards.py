import numpy as np
import pytest
import torch

from harness.prompts import load_toy_split
from harness.toyworld.grammar import parse_prompt
from harness.toyworld.scene import render, sample_layout
from models import ModelError
from rewards import RewardError, build_reward, reward_names
from rewards.toy_pick import load_toy_pick, perturb_spec, spoil_scene


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
