"""Rewards registered by short name: `build_reward("toy-tifa")`, `build_reward("toy-pick")`;
several at once with weights: `build_rewards("toy-tifa=1.0,toy-pick=0.5")`."""

from flowarena.core.registry import discover
from flowarena.rewards.base import (
           REWARDS,
           Reward,
           RewardError,
           RewardOutput,
           build_reward,
           register_reward,
           reward_names,
)
from flowarena.rewards.multi import WeightedRewards, build_rewards, check_rewards, parse_reward_spec

discover(__name__, skip={"base", "judge", "multi"})  # each reward file registers itself

__all__ = ["REWARDS", "Reward", "RewardError", "RewardOutput", "WeightedRewards", "build_reward",
           "build_rewards", "check_rewards", "parse_reward_spec", "register_reward", "reward_names"]
