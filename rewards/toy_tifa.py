"""Soft-TIFA as a training reward: the per-image AM or GM of a judge's soft answers."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from flowarena.rewards.base import Reward, RewardError, RewardOutput, register_reward
from flowarena.tasks.soft_tifa import geometric_mean
from flowarena.tasks.toyworld.judge import ToyJudge


@register_reward("toy-tifa")
class ToySoftTifaReward(Reward):
    """The toy judge's Soft-TIFA score of each image for its prompt's questions, in [0, 1]."""
    record_field = "vqa_list"


    def __init__(self, aggregate: str = "gm"):
        if aggregate not in ("gm", "am"):
            raise RewardError(f"aggregate must be 'gm' or 'am', not {aggregate!r}")
        self.aggregate = aggregate
        self.judge = ToyJudge()

    @torch.no_grad()
    def __call__(self, images: Tensor, prompts: list[str], metadata: list[dict]) -> RewardOutput:
        if metadata is None or len(metadata) != len(images):
            raise RewardError("toy-tifa needs one prompt record (with 'vqa_list') per image")
        per_q = [self.judge.score(img, rec["vqa_list"]) for img, rec in zip(images, metadata)]
        agg = geometric_mean if self.aggregate == "gm" else (lambda s: float(np.mean(s)))
        scores = torch.tensor([agg(s) for s in per_q], dtype=torch.float32)
        return RewardOutput(scores, {"question_scores": per_q})
