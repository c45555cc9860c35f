"""Flow-CPS: coefficients-preserving sampling with Flow-GRPO's clipped loss (Wang & Yu, 2025).

The CPS step keeps the interpolation's coefficients: with `x̂0 = x − σ·v`,
`x̂1 = x + (1 − σ)·v` and `s = σ_{k+1}·sin(η·π/2)`,
`x_{k+1} = (1 − σ_{k+1})·x̂0 + sqrt(σ_{k+1}² − s²)·x̂1 + s·ε`. The ratio is built from the
surrogate `log π = −mean((x' − μ)²)` (no 1/(2s²)), for which ε = 1e-5 is calibrated.
"""

from __future__ import annotations

from dataclasses import dataclass

from flowarena.methods.base import Eta, LogProb, Sampler, register_method
from flowarena.methods.grpo import ClipRange, FlowGRPO, GRPOConfig


@dataclass
class CPSConfig(GRPOConfig):
    sampler: Sampler = "cps"
    """Coefficients-preserving sampling for the trained steps."""
    eta: Eta = 0.8
    """CPS noise level: s = σ_{k+1}·sin(η·π/2) (0.7–0.9 in the CPS configs)."""
    log_prob: LogProb = "cps-surrogate"
    """The Flow-CPS surrogate −mean((x' − μ)²) in the ratio."""
    clip_range: ClipRange = 1e-5
    """PPO clip ε on the surrogate ratio (FlowCPS's default)."""


@register_method("cps")
class FlowCPS(FlowGRPO):
    description = "Flow-CPS: coefficients-preserving sampler, surrogate log-prob, clipped ratio (ε = 1e-5)"
    colour = "#2ca02c"  # the same in every report
    paper = "Wang & Yu, 2025, Coefficients-Preserving Sampling for Reinforcement Learning with Flow Matching"
    Config = CPSConfig
