"""An easy sanity reward: the share of pixels painted in a colour the prompt names.

Any working policy-gradient method raises it quickly (bigger or more objects in the
right colours), so it proves the training machinery before the hard compositional
reward is tried (the role JPEG compressibility plays in DDPO and flow_grpo).
"""

from __future__ import annotations

import torch
from torch import Tensor

from flowarena.rewards.base import Reward, RewardOutput, register_reward
from flowarena.tasks.toyworld.grammar import tokenize_words
from flowarena.tasks.toyworld.scene import COLOURS

_PALETTE = torch.tensor(list(COLOURS.values()), dtype=torch.float32) / 255


@register_reward("toy-colour")
class ColourShareReward(Reward):
    """Fraction of pixels within `radius` (RGB, 0-1 scale) of a colour named in the prompt."""


    def __init__(self, radius: float = 0.25):
        self.radius = radius

    @torch.no_grad()
    def __call__(self, images: Tensor, prompts: list[str],
                 metadata: list[dict] | None = None) -> RewardOutput:
        pix = images.float().permute(0, 2, 3, 1)  # B, H, W, 3
        dist = torch.cdist(pix.reshape(len(images), -1, 3), _PALETTE.expand(len(images), -1, -1))
        names = list(COLOURS)
        scores = []
        for b, prompt in enumerate(prompts):
            wanted = [names.index(w) for w in tokenize_words(prompt) if w in COLOURS]
            near = dist[b][:, wanted].min(1).values < self.radius if wanted else torch.zeros(1, dtype=bool)
            scores.append(near.float().mean())
        return RewardOutput(torch.stack(scores), {})


