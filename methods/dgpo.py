"""DGPO, Direct Group Preference Optimization (Luo et al., 2025, arXiv 2510.08425;
Luo-Yihong/DGPO).

A DPO-style preference between the better and the worse samples of a group, on the forward
process: no likelihood, no SDE. With the denoising loss ℓ(v) = mean((v − (ε − x0))²) of a
sample at x_t (one ε per group and time), the group's preference margin and weight are

    m_g = Σ_{i ∈ g} A_i · β_dpo · (ℓ(v_θ)_i − ℓ(v_ref)_i) / G,      w_g = σ(m_g)   (detached)
    L_i = w_g · A_i · ℓ(v_θ)_i

so the samples above their group's mean (A > 0) are fitted and those below are pushed away,
more strongly while the policy has not yet moved them apart from the pretrained model's
ranking (−log σ(−m) has this gradient). The signed advantages are the positive and negative
sets. A sample whose denoising loss already moved past exp(±clip) relative to the old policy
in its advantage's direction keeps its loss value but loses its gradient.

The group weight is computed once per training time before the update, from the old policy's
velocities: the reference takes one optimizer step per epoch, where the two are equal.
Training times: `train_timesteps` indices drawn once per epoch from the first
`trunc_steps + 1` steps, shared by every sample. Defaults: the GenEval SD3.5 config
(`config/dgpo.py`), whose values differ from the README's recipe table.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from flowarena.core.fields import Count, NonNegative, Positive
from flowarena.methods.base import ForwardConfig, ForwardMethod, ForwardTensors, StepLoss, register_method


@dataclass
class DGPOConfig(ForwardConfig):
    beta_dpo: Positive = 100.0
    """β_dpo inside the group's sigmoid (GenEval 100; PickScore 10)."""
    clip_range: NonNegative = 1e-2
    """ε of the denoising-loss ratio exp(ℓ_old − ℓ_θ): past 1 ± ε in A's direction, no gradient."""
    train_timesteps: Count = 4
    """M: training times per epoch, shared by every sample."""
    trunc_steps: Count = 4
    """The times come from the steps 0 … trunc_steps (the high-noise part; 6 for OCR and PickScore)."""


def denoising_loss(v: Tensor, target: Tensor) -> Tensor:
    return (target - v).square().flatten(1).mean(1)


def group_weights(advantages: Tensor, loss: Tensor, ref_loss: Tensor, groups: Tensor, *, beta_dpo: float,
                  group_size: int) -> Tensor:
    """σ(Σ_{i∈g} A_i·β_dpo·(ℓ_i − ℓ_ref,i)/G) of each sample's group g (every group whole)."""
    term = advantages * beta_dpo * (loss - ref_loss) / group_size
    sums = torch.zeros(int(groups.max()) + 1, dtype=term.dtype, device=term.device)
    return torch.sigmoid(sums.index_add_(0, groups, term))[groups]


@register_method("dgpo")
class DGPO(ForwardMethod):
    description = "DGPO: group preference (sigmoid-weighted, advantage-signed) on denoising losses"
    colour = "#7f7f7f"
    paper = "Luo et al., 2025, Reinforcing Diffusion Models by Direct Group Preference Optimization"
    Config = DGPOConfig
    needs_reference = True
    shared_noise = True

    def train_times(self, gen: torch.Generator, sigmas: Tensor, batch: int) -> Tensor:
        c, steps = self.config, len(sigmas) - 1
        pool = min(c.trunc_steps + 1, steps)
        picks = torch.randperm(pool, generator=gen)[:min(c.train_timesteps, pool)]
        return sigmas[picks].float()[:, None].expand(-1, batch).contiguous()

    def batch_context(self, f: ForwardTensors) -> Tensor:
        A = f.advantages.clamp(-self.config.adv_clip_max, self.config.adv_clip_max)
        G = int((f.groups == f.groups[0]).sum())
        return group_weights(A.float(), denoising_loss(f.velocity, f.target).float(),
                             denoising_loss(f.ref_velocity, f.target).float(), f.groups,
                             beta_dpo=self.config.beta_dpo, group_size=G)

    def forward_loss(self, f: ForwardTensors) -> StepLoss:
        c = self.config
        A = f.advantages.clamp(-c.adv_clip_max, c.adv_clip_max)
        loss = denoising_loss(f.velocity, f.target)
        ratio = torch.exp(denoising_loss(f.old_velocity, f.target) - loss).detach()
        clipped = torch.where(A > 0, ratio > 1 + c.clip_range, ratio < 1 - c.clip_range)
        loss = torch.where(clipped, loss.detach(), loss)
        return StepLoss(f.context * A * loss, ratio, clipped)
