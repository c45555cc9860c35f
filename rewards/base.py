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


class RewardError(ValueError):
    """Unknown reward name or unusable reward input."""


@dataclass
class RewardOutput:
    scores: Tensor  # [B], float
    details: dict = field(default_factory=dict)  # per-sample extras, lists of length B


class Reward(ABC):
    name: str = "reward"
    higher_is_better: bool = True

    @abstractmethod
    def __call__(self, images: Tensor, prompts: list[str], metadata: list[dict]) -> RewardOutput:
        ...


_REGISTRY: dict[str, Callable[..., Reward]] = {}


def register_reward(name: str):
    def deco(factory):
        if name in _REGISTRY:
            raise ValueError(f"reward {name!r} registered twice")
        _REGISTRY[name] = factory
        factory.reward_name = name
        return factory
    return deco


def reward_names() -> list[str]:
    return sorted(_REGISTRY)


def build_reward(name: str, **kwargs) -> Reward:
    if name not in _REGISTRY:
        raise RewardError(f"unknown reward {name!r} (known: {', '.join(reward_names())})")
    with torch.no_grad():
        return _REGISTRY[name](**kwargs)
