"""GRPO-Guard: Flow-GRPO's clipped loss on a normalised ratio (Wang et al., 2025).

RatioNorm removes the ratio's deterministic −KL bias and rescales by the step's std:

    log ρ̃ = s·(log π_θ − log π_old + b),   b = mean(Δμ²) / (2s²),   Δμ = μ_θ − μ_old

so log ρ̃ = s·mean(ε·Δμ/s) is centred on zero at every timestep, and ε = 2e-6 clips it
symmetrically. `s` is the batch's mean transition std at this step, as in flow_grpo's
GRPO-Guard script. Gradient reweighting divides each step's loss by |dt| (the script's
`mean(sqrt(−dt))²`), evening out the gradient scale across timesteps; Flow-Factory omits it.

`bias`: b per sample (verl-omni, Flow-Factory; the default) or one b per step and
micro-batch, the mean of the per-sample b's: the authors' script (flow_grpo PR #175,
`train_sd3_GRPO_Guard.py`) reduces Δμ² with `.mean(dim=tuple(range(1, log_prob.ndim)))`
on a [B] log-prob, i.e. `dim=()`, which torch reads as every dimension.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from flowarena.methods.base import StepLoss, StepTensors, register_method
from flowarena.methods.grpo import ClipRange, FlowGRPO, GRPOConfig, clipped_loss


@dataclass
class GuardConfig(GRPOConfig):
    clip_range: ClipRange = 2e-6
    """PPO clip ε on the normalised ratio ρ̃ (4e-6 in the PickScore recipe)."""
    reweight_dt: bool = True
    """Divide each step's loss by |dt| (flow_grpo's script; Flow-Factory omits it)."""
    bias: Literal["sample", "batch"] = "sample"
    """RatioNorm's b per "sample" (verl-omni, Flow-Factory) or one per step and micro-batch,
    "batch" (the authors' script, where `mean(dim=())` reduces over the whole micro-batch)."""


def ratio_norm(log_prob: Tensor, old_log_prob: Tensor, mean: Tensor, old_mean: Tensor,
               std: Tensor, bias: str = "sample") -> Tensor:
    """log ρ̃ = s·(log ρ + b) with b = mean(Δμ²)/(2s²), s the batch's mean std at this step;
    b per sample, or ("batch") its mean over the batch, one b for every sample."""
    s = std.mean()
    b = (mean - old_mean).pow(2).flatten(1).mean(1) / (2 * s**2)
    if bias == "batch":  # every sample has as many elements: the mean of b's is mean(Δμ²)/(2s²)
        b = b.mean().expand_as(b)
    return s * (log_prob - old_log_prob + b)


@register_method("guard")
class GRPOGuard(FlowGRPO):
    description = "GRPO-Guard: RatioNorm (ratio centred per timestep), clip 2e-6, loss / |dt|"
    colour = "#ff7f0e"  # the same in every report
    paper = "Wang et al., 2025, GRPO-Guard: Mitigating Implicit Over-Optimization in Flow Matching"
    Config = GuardConfig

    def step_loss(self, s: StepTensors) -> StepLoss:
        log_ratio = ratio_norm(s.log_prob, s.old_log_prob, s.mean, s.old_mean, s.std, self.config.bias)
        loss, ratio, clipped = clipped_loss(log_ratio, torch.zeros_like(log_ratio), s.advantages,
                                            clip_range=self.config.clip_range)
        if self.config.reweight_dt:
            loss = loss / abs(s.dt)
        return StepLoss(loss, ratio.detach(), clipped)
