"""Rewards: plain callables with one signature, registered by short name.

`reward(images, prompts, metadata) -> RewardOutput(scores[B], details)`; images are
float tensors [B, 3, H, W] in [0, 1], `metadata` holds one dict per image (for the
GenEval2-style rewards: the prompt record with its `vqa_list`). Rewards run under
`no_grad`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor

from flowarena.core.errors import FlowArenaError
from flowarena.core.registry import Registry


class RewardError(FlowArenaError, ValueError):
    """Unknown reward name or unusable reward input."""


@dataclass
class RewardOutput:
    scores: Tensor  # [B], float
    details: dict = field(default_factory=dict)  # per-sample extras, lists of length B


class Reward(ABC):
    name: str = "reward"
    higher_is_better: bool = True
    record_field: str | None = None
    """The prompt-record field it reads (`vqa_list`, GenEval's `include`): training prompts
    without it (a plain prompt list) cannot train it."""

    @abstractmethod
    def __call__(self, images: Tensor, prompts: list[str], metadata: list[dict]) -> RewardOutput:
        ...


REWARDS: Registry[Callable[..., Reward]] = Registry("reward", RewardError)
register_reward = REWARDS.register


def reward_names() -> list[str]:
    return sorted(REWARDS.names())


def build_reward(name: str, **kwargs) -> Reward:
    if name not in REWARDS:  # sorted names in the message
        raise RewardError(f"unknown reward {name!r} (known: {', '.join(reward_names())})")
    with torch.no_grad():
        return REWARDS.get(name)(**kwargs)
