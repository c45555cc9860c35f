"""Flow-DPPO: a trust region from the exact KL instead of ratio clipping.

Per trained step: `−M·A·ρ` (the trainer adds β·KL_ref), where the detached mask is

    D = KL(π_old ‖ π_θ)   (exact, per element)
    M = 0  if D ≥ δ and ((ρ > 1 and A > 0) or (ρ < 1 and A < 0))
    M = 1  otherwise

Low-divergence steps always pass; a high-divergence step passes only when it moves
back toward the old policy. δ = 1e-5 on the per-element KL (UniRL's default).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from flowarena.core.fields import NonNegative
from flowarena.methods.base import Method, MethodConfig, StepLoss, StepTensors, register_method

Delta = NonNegative  # the KL threshold δ


@dataclass
class DPPOConfig(MethodConfig):
    delta: Delta = 1e-5
    """KL threshold δ of the trust region (per-element exact KL, Flow-SDE scale)."""


def masked_policy_loss(log_ratio: Tensor, advantages: Tensor, keep: Tensor) -> Tensor:
    """`−M·A·ρ` per sample. `torch.where`, not M·(…), and masked log-ratios zeroed before
    exp: an overflowing ρ must never give inf·0 = nan, in the loss or in its gradient."""
    ratio = torch.exp(torch.where(keep, log_ratio, torch.zeros_like(log_ratio)))
    return torch.where(keep, -advantages * ratio, torch.zeros_like(ratio))


def dppo_loss(log_prob: Tensor, old_log_prob: Tensor, kl: Tensor, advantages: Tensor, *,
              delta: float) -> tuple[Tensor, Tensor]:
    """Returns the unreduced per-step loss `−M·A·ρ` and the keep mask M (bool)."""
    log_ratio = log_prob - old_log_prob
    with torch.no_grad():
        moving_away = ((log_ratio > 0) & (advantages > 0)) | ((log_ratio < 0) & (advantages < 0))
        keep = ~((kl >= delta) & moving_away)
    return masked_policy_loss(log_ratio, advantages, keep), keep


@register_method("dppo")
class FlowDPPO(Method):
    description = "Flow-DPPO: mask steps whose exact KL to the old policy exceeds δ = 1e-5 (Flow-SDE)"
    colour = "#d62728"  # the same in every report
    paper = "Flow-DPPO: Divergence Proximal Policy Optimization for Flow Matching Models (2026)"
    Config = DPPOConfig

    def divergence(self, s: StepTensors) -> Tensor:
        """D of the mask: the exact KL(π_old ‖ π_θ) at this step (ablations swap it)."""
        return s.kl.detach()

    def step_loss(self, s: StepTensors) -> StepLoss:
        loss, keep = dppo_loss(s.log_prob, s.old_log_prob, self.divergence(s), s.advantages,
                               delta=self.config.delta)
        return StepLoss(loss, torch.exp(s.log_prob - s.old_log_prob).detach(), ~keep)

    @property
    def trust_threshold(self) -> float:
        return self.config.delta
