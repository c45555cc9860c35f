"""Several rewards at once: `toy-tifa=1.0,toy-pick=0.5` (docs/methods.md §4).

`build_rewards(spec)` returns the single reward for a bare name, else a `WeightedRewards`
whose score is the weighted sum (flow_grpo's aggregation) and whose details carry each
component's scores, so the trainer can instead normalise each reward within its group
and sum the weighted advantages (GDPO / MixGRPO), `TrainConfig.reward_aggregation`.
"""

from __future__ import annotations

import inspect
import typing

import torch
from torch import Tensor

from flowarena.core.fields import coerce
from flowarena.rewards.base import REWARDS, Reward, RewardError, RewardOutput, build_reward, reward_names


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


def _accepted(name: str) -> set[str]:
    """The keyword options reward `name`'s constructor takes."""
    factory = REWARDS.get(name)
    return set(inspect.signature(factory).parameters) - {"self"}


def check_rewards(spec: str, options: dict | None = None, elsewhere=()) -> list[tuple[str, float]]:
    """Validate a spec and its options without loading any model: names known, weights
    positive, every option taken by at least one of the rewards or named in `elsewhere`
    (the options a run's benchmarks take: `--pickscore` for the evaluation alone)."""
    parts = parse_reward_spec(spec)
    for name, _ in parts:
        if name not in REWARDS:
            raise RewardError(f"unknown reward {name!r} (known: {', '.join(reward_names())})")
    for key, value in (options or {}).items():
        if key not in elsewhere and not any(key in _accepted(n) for n, _ in parts):
            raise RewardError(f"reward option {key!r} applies to none of {', '.join(n for n, _ in parts)}")
        for name, _ in parts:  # typed as the constructor that takes it types it
            if (hint := _option_types(name).get(key)) is not None:
                coerce(value, hint, f"reward option {key!r}", RewardError)
    return parts


def _option_types(name: str) -> dict:
    """The types of reward `name`'s constructor options (none where they cannot be read)."""
    factory = REWARDS.get(name)
    try:
        return typing.get_type_hints(factory.__init__ if isinstance(factory, type) else factory)
    except Exception:  # noqa: BLE001 - an unresolvable annotation leaves the option unchecked
        return {}


def build_rewards(spec: str, device: str = "cpu", elsewhere=(), **options) -> Reward:
    """A reward from a spec. Each option goes to every reward that takes it (`judge` to
    geneval2 and vqascore, `pickscore` to pickscore, ...); `device` to those that run models."""
    parts = check_rewards(spec, options, elsewhere)
    built = []
    for name, w in parts:
        accepted = _accepted(name)
        kw = {k: v for k, v in options.items() if k in accepted}
        if "device" in accepted:
            kw["device"] = device
        built.append((name, w, build_reward(name, **kw)))
    if len(built) == 1 and built[0][1] == 1.0:
        return built[0][2]
    return WeightedRewards(built)
