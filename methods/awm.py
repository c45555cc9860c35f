"""AWM, Advantage Weighted Matching (Xue et al., 2025, arXiv 2509.25050).

The policy gradient with the flow-matching loss as the log-likelihood: on the clean samples
x0 of an ODE rollout, at x_t = (1 − t)·x0 + t·ε with target u = ε − x0,

    log p_θ = −t · ((mean((v_θ − u)²) + c)^p − c^p) / p      (generalised Huber, p = 0.25, c = 1e-10)
    ρ = exp(log p_θ − log p_old)
    L = max(−Â·ρ, −Â·clip(ρ, 1 − ε, 1 + ε)) + λ_ema · mean((v_θ − v_ema)²)

with Â = clip(A, ±a_max)/a_max. The reference trains on-policy (ρ ≡ 1, ε = 1 never binds), so
its gradient is Â·∇(t-weighted Huber FM loss). v_ema is its lagging LoRA (decay min(0.3,
0.001·step)); here the policy that rolled out, which it equals to within that decay on runs
of a few hundred steps. Training times: one step from each of 6 strata of the steps
[1, int(0.9·K)). Defaults from scxue/advantage_weighted_matching's SD3.5 GenEval config.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from flowarena.core.fields import Count, Fraction, NonNegative, Positive
from flowarena.methods.base import (
    ForwardConfig,
    ForwardMethod,
    ForwardTensors,
    StepLoss,
    register_method,
    stratified_times,
)
from flowarena.methods.grpo import clipped_loss


@dataclass
class AWMConfig(ForwardConfig):
    ghuber_power: Positive = 0.25
    """p of the generalised Huber weighting of the flow-matching loss (1: plain MSE)."""
    clip_range: Positive = 1.0
    """PPO clip ε on ρ (1.0: the reference trains on-policy, where it never binds)."""
    ema_beta: NonNegative = 1.0
    """λ_ema: weight of mean((v_θ − v_old)²), the pull towards the lagging policy."""
    train_timesteps: Count = 6
    """Training times per sample, one per stratum of the trained steps."""
    timestep_fraction: Fraction = 0.9
    """The strata cover the steps [1, int(steps · fraction)) (the first step, pure noise, left out)."""


def awm_log_prob(v: Tensor, target: Tensor, t: Tensor, power: float) -> Tensor:
    """−t·((mean((v − u)²) + 1e-10)^p − 1e-10^p)/p per sample, in float64 (as the reference)."""
    mse = (v.double() - target.double()).pow(2).flatten(1).mean(1)
    floor = torch.tensor(1e-10, dtype=torch.float64, device=v.device)
    return -(torch.pow(mse + 1e-10, power) - torch.pow(floor, power)) * t.double() / power


@register_method("awm")
class AdvantageWeightedMatching(ForwardMethod):
    description = "AWM: the advantage-weighted flow-matching loss on clean samples (PPO ratio of FM losses)"
    colour = "#bcbd22"
    paper = "Xue et al., 2025, Advantage Weighted Matching: Aligning RL with Pretraining in Diffusion Models"
    Config = AWMConfig

    def train_times(self, gen: torch.Generator, sigmas: Tensor, batch: int) -> Tensor:
        c, steps = self.config, len(sigmas) - 1
        hi = max(2, int(steps * c.timestep_fraction))
        return stratified_times(gen, sigmas, batch, min(c.train_timesteps, hi - 1), 1, hi)

    def forward_loss(self, f: ForwardTensors) -> StepLoss:
        c = self.config
        log_p = awm_log_prob(f.velocity, f.target, f.t, c.ghuber_power)
        old_log_p = awm_log_prob(f.old_velocity, f.target, f.t, c.ghuber_power)
        adv = f.advantages.double().clamp(-c.adv_clip_max, c.adv_clip_max) / c.adv_clip_max
        loss, ratio, clipped = clipped_loss(log_p, old_log_p, adv, clip_range=c.clip_range)
        ema = (f.velocity.float() - f.old_velocity.float()).pow(2).flatten(1).mean(1)
        return StepLoss(loss + c.ema_beta * ema, ratio.detach(), clipped)
