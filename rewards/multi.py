"""Several rewards at once: `toy-tifa=1.0,toy-pick=0.5` (methods.md §4).

`build_rewards(spec)` returns the single reward for a bare name, else a `WeightedRewards`
whose score is the weighted sum (flow_grpo's aggregation) and whose details carry each
component's scores, so the trainer can instead normalise each reward within its group
and sum the weighted advantages (GDPO / MixGRPO), `TrainConfig.reward_aggregation`.
"""

from __future__ import annotations

import torch
from torch import Tensor

from rewards.base import Reward, RewardError, RewardOutput, build_reward


def parse_reward_spec(spec: str) -> list[tuple[str, float]]:
    """"a=1.0,b=0.5" -> [("a", 1.0), ("b", 0.5)]; a bare name has weight 1."""
    parts = []
    for item in spec.split(","):
        item = item.strip()
        if not item:
            raise RewardError(f"empty reward name in {spec!r}")
        name, _, weight = item.partition("=")
        try:
            w = float(weight) if weight else 1.0
        except ValueError:
            raise RewardError(f"reward weight {weight!r} in {spec!r} is not a number") from None
        if w <= 0:
            raise RewardError(f"reward weight for {name!r} must be positive, not {w:g}")
        parts.append((name.strip(), w))
    names = [n for n, _ in parts]
    if len(set(names)) != len(names):
        raise RewardError(f"reward named twice in {spec!r}")
    return parts


class WeightedRewards(Reward):
    """Σ_j w_j·r_j, with every component's scores in `details["components"]`."""

    def __init__(self, parts: list[tuple[str, float, Reward]]):
        self.parts = parts
        self.weights = {n: w for n, w, _ in parts}
        self.name = ",".join(f"{n}={w:g}" for n, w, _ in parts)

    @torch.no_grad()
    def __call__(self, images: Tensor, prompts: list[str], metadata: list[dict]) -> RewardOutput:
        components = {n: r(images, prompts, metadata).scores.float() for n, _, r in self.parts}
        scores = sum(self.weights[n] * s for n, s in components.items())
        return RewardOutput(scores, {"components": components})


def build_rewards(spec: str, **options) -> Reward:
    """A reward from a spec; `options` go to a single reward (a weighted set uses defaults)."""
    parts = parse_reward_spec(spec)
    if len(parts) == 1 and parts[0][1] == 1.0:
        return build_reward(parts[0][0], **options)
    if options:
        raise RewardError("reward options apply to a single reward, not to a weighted set")
    return WeightedRewards([(n, w, build_reward(n)) for n, w in parts])
