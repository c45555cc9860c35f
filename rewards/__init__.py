"""Rewards registered by short name: `build_reward("toy-tifa")`, `build_reward("toy-pick")`."""

from rewards import colour, soft_tifa, toy_pick  # noqa: F401  (registration)
from rewards.base import Reward, RewardError, RewardOutput, build_reward, register_reward, reward_names

__all__ = ["Reward", "RewardError", "RewardOutput", "build_reward", "register_reward", "reward_names"]
