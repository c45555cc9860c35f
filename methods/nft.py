"""DiffusionNFT: online RL on the forward process (Zheng et al., 2025, arXiv 2509.16117).

No SDE and no likelihood: the rollout is any ODE solver; training is flow matching on the
clean samples x0, contrasting two implicit policies built from the trained velocity v_θ and
the old one v_old at x_t = (1 − t)·x0 + t·ε:

    v⁺ = β·v_θ + (1 − β)·v_old        (the positive policy: where good samples come from)
    v⁻ = (1 + β)·v_old − β·v_θ        (the implicit negative: its mirror through v_old)
    r  = clip(A / a_max / 2 + ½, 0, 1)   (the advantage as an optimality probability)
    L  = a_max / β · [ r·‖x̂0(v⁺) − x0‖² / w⁺ + (1 − r)·‖x̂0(v⁻) − x0‖² / w⁻ ]

with x̂0(v) = x_t − t·v and w± the detached per-sample mean |x̂0(v±) − x0| (≥ 1e-5), the
reference's adaptive weighting. Training times: per sample, int(K·fraction) distinct steps of
the K-step sampling schedule (9 of 10). Defaults from NVlabs/DiffusionNFT's SD3.5 config.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from flowarena.core.fields import Fraction, Positive
from flowarena.methods.base import (
    ForwardConfig,
    ForwardMethod,
    ForwardTensors,
    StepLoss,
    permuted_times,
    register_method,
)


@dataclass
class NFTConfig(ForwardConfig):
    beta: Positive = 1.0
    """β: how far the implicit policies lean from v_old towards v_θ (1.0; 0.1 for OCR)."""
    timestep_fraction: Fraction = 0.99
    """Training times per sample: int(steps · fraction) distinct steps of the sampling schedule."""


def weighted_x0_loss(v: Tensor, x_t: Tensor, x0: Tensor, t: Tensor) -> Tensor:
    """‖x̂0 − x0‖² / w per sample, x̂0 = x_t − t·v, w = mean |x̂0 − x0| (detached, ≥ 1e-5)."""
    dims = tuple(range(1, x0.dim()))
    x0_hat = x_t - t.view(-1, *[1] * (x0.dim() - 1)) * v
    with torch.no_grad():
        w = (x0_hat.double() - x0.double()).abs().mean(dim=dims, keepdim=True).clip(min=1e-5)
    return ((x0_hat - x0) ** 2 / w).mean(dim=dims)


def nft_loss(v: Tensor, v_old: Tensor, x_t: Tensor, x0: Tensor, t: Tensor, advantages: Tensor, *,
             beta: float, adv_clip_max: float) -> tuple[Tensor, Tensor]:
    """DiffusionNFT's per-sample loss and r, the optimality probability."""
    r = (advantages.clamp(-adv_clip_max, adv_clip_max) / adv_clip_max / 2 + 0.5).clamp(0, 1)
    positive = beta * v + (1 - beta) * v_old.detach()
    negative = (1 + beta) * v_old.detach() - beta * v
    loss = (r * weighted_x0_loss(positive, x_t, x0, t)
            + (1 - r) * weighted_x0_loss(negative, x_t, x0, t)) / beta
    return loss * adv_clip_max, r


@register_method("nft")
class DiffusionNFT(ForwardMethod):
    description = "DiffusionNFT: flow matching on clean samples, implicit positive vs negative policy"
    colour = "#17becf"
    paper = "Zheng et al., 2025, DiffusionNFT: Online Diffusion Reinforcement with Forward Process"
    Config = NFTConfig

    def train_times(self, gen: torch.Generator, sigmas: Tensor, batch: int) -> Tensor:
        steps = len(sigmas) - 1
        return permuted_times(gen, sigmas, batch, max(1, int(steps * self.config.timestep_fraction)))

    def forward_loss(self, f: ForwardTensors) -> StepLoss:
        c = self.config
        loss, r = nft_loss(f.velocity, f.old_velocity, f.x_t, f.x0, f.t, f.advantages,
                           beta=c.beta, adv_clip_max=c.adv_clip_max)
        return StepLoss(loss, None, torch.zeros_like(loss, dtype=torch.bool), {"r_mean": r.mean().detach()})
