"""Ablation: Flow-GRPO without a trust region (ε = ∞): the plain ratio policy gradient −A·ρ."""

from __future__ import annotations

import math
from dataclasses import dataclass

from flowarena.methods.base import register_method
from flowarena.methods.grpo import ClipRange, FlowGRPO, GRPOConfig


@dataclass
class NoClipConfig(GRPOConfig):
    clip_range: ClipRange = math.inf
    """No clipping: ρ is never clamped."""


@register_method("grpo-noclip")
class GRPONoClip(FlowGRPO):
    description = "ablation: Flow-GRPO with no ratio clipping (no trust region)"
    colour = "#e377c2"  # the same in every report
    paper = "Liu et al., 2025 (Flow-GRPO), trust-region ablation"
    ablation = True
    Config = NoClipConfig
