"""Ablation: Flow-DPPO with the mask's divergence estimated from the sampled ratio,
D = ½·(log ρ)², instead of the exact Gaussian KL. log ρ = −KL + ε·Δμ/s is dominated by
its noise term, so this is the noisy estimate the paper argues against."""

from __future__ import annotations

from torch import Tensor

from flowarena.methods.base import StepTensors, register_method
from flowarena.methods.dppo import FlowDPPO


@register_method("dppo-sampled-kl")
class DPPOSampledKL(FlowDPPO):
    description = "ablation: Flow-DPPO masking on ½(log ρ)² instead of the exact KL"
    colour = "#bcbd22"  # the same in every report
    paper = "Flow-DPPO (2026), divergence ablation"
    ablation = True

    def divergence(self, s: StepTensors) -> Tensor:
        return 0.5 * (s.log_prob - s.old_log_prob).detach() ** 2
