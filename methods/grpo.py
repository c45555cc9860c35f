"""Flow-GRPO: PPO ratio clipping on the Flow-SDE policy (Liu et al., 2025).

Per trained step: `max(−A·ρ, −A·clip(ρ, 1 − ε, 1 + ε))` with ε = 1e-4 on the
per-element log-probability scale; the trainer adds β·KL_ref.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Annotated

import torch
from torch import Tensor

from flowarena.core.fields import Range
from flowarena.methods.base import Method, MethodConfig, StepLoss, StepTensors, register_method

ClipRange = Annotated[float, Range(0, finite=False)]  # inf: no clipping (grpo-noclip)


@dataclass
class GRPOConfig(MethodConfig):
    clip_range: ClipRange = 1e-4
    """PPO clip ε on ρ (flow_grpo's SD3.5 default; per-element log-prob scale)."""


def clipped_loss(log_prob: Tensor, old_log_prob: Tensor, advantages: Tensor, *,
                 clip_range: float) -> tuple[Tensor, Tensor, Tensor]:
    """PPO's clipped surrogate, per sample: returns (loss, ρ, clipped).

    `clipped` marks samples whose gradient the clip removed: ρ > 1 + ε with A > 0, or
    ρ < 1 − ε with A < 0.
    """
    ratio = torch.exp(log_prob - old_log_prob)
    unclipped = -advantages * ratio
    clipped_obj = -advantages * torch.clamp(ratio, 1 - clip_range, 1 + clip_range)
    loss = torch.maximum(unclipped, clipped_obj)
    with torch.no_grad():
        high, low = ratio > 1 + clip_range, ratio < 1 - clip_range
        clipped = (high & (advantages > 0)) | (low & (advantages < 0))
    return loss, ratio, clipped


@register_method("grpo")
class FlowGRPO(Method):
    description = "Flow-GRPO: PPO ratio clipping (ε = 1e-4) on the Flow-SDE sampler"
    colour = "#1f77b4"  # the same in every report
    paper = "Liu et al., 2025, Flow-GRPO: Training Flow Matching Models via Online RL"
    Config = GRPOConfig

    def step_loss(self, s: StepTensors) -> StepLoss:
        loss, ratio, clipped = clipped_loss(s.log_prob, s.old_log_prob, s.advantages,
                                            clip_range=self.config.clip_range)
        return StepLoss(loss, ratio.detach(), clipped)

    @property
    def trust_region(self) -> dict[str, float]:
        eps = self.config.clip_range
        return {"ratio_clip": eps} if math.isfinite(eps) else {}  # grpo-noclip: none
