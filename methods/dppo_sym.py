"""Ablation: Flow-DPPO with a symmetric mask — every step with KL ≥ δ is dropped, also
those moving back toward the old policy. Tests the paper's claim that the asymmetry matters."""

from __future__ import annotations

import torch

from flowarena.methods.base import StepLoss, StepTensors, register_method
from flowarena.methods.dppo import FlowDPPO, masked_policy_loss


@register_method("dppo-sym")
class DPPOSymmetric(FlowDPPO):
    description = "ablation: Flow-DPPO dropping every step with KL ≥ δ (symmetric mask)"
    colour = "#8c564b"  # the same in every report
    paper = "Flow-DPPO (2026), mask ablation"
    ablation = True

    def step_loss(self, s: StepTensors) -> StepLoss:
        keep = self.divergence(s) < self.config.delta
        loss = masked_policy_loss(s.log_prob - s.old_log_prob, s.advantages, keep)
        return StepLoss(loss, torch.exp(s.log_prob - s.old_log_prob).detach(), ~keep)
