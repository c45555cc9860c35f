"""Flow-DPPO on the CPS sampler: the KL mask of Flow-DPPO with the CPS transition std.

CPS's std `s = σ_{k+1}·sin(η·π/2)` is larger than Flow-SDE's `g·sqrt(−dt)`, but so is its
mean's sensitivity to the velocity, and δ is carried over by the KL a velocity change
causes, `kl_per_unit_velocity` in `methods/sde.py`. On the toy schedule (10 steps, shift 3)
the ratio KL_cps / KL_sde over the first-half window steps k = 0…4 is 0.58, 1.10, 1.02,
1.05, 1.08 (mean 0.97) at η_cps = 0.8, η_sde = 0.7: the scales agree, so δ stays 1e-5.
The ratio and the KL are the exact Gaussian ones (not the CPS surrogate).
"""

from __future__ import annotations

from dataclasses import dataclass

from flowarena.methods.base import Eta, Sampler, register_method
from flowarena.methods.dppo import Delta, DPPOConfig, FlowDPPO


@dataclass
class DPPOCPSConfig(DPPOConfig):
    sampler: Sampler = "cps"
    """Coefficients-preserving sampling for the trained steps."""
    eta: Eta = 0.8
    """CPS noise level (Flow-CPS's default)."""
    delta: Delta = 1e-5
    """KL threshold on the CPS scale, carried from Flow-SDE's 1e-5 by `kl_per_unit_velocity`."""


@register_method("dppo-cps")
class FlowDPPOCPS(FlowDPPO):
    description = "Flow-DPPO on the CPS sampler: exact-KL mask with a CPS-scale δ"
    colour = "#9467bd"  # the same in every report
    paper = "Flow-DPPO: Divergence Proximal Policy Optimization for Flow Matching Models (2026)"
    Config = DPPOCPSConfig
